import itertools

import hypothesis
import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnkern._jit as jit
import nnkern.functional as F
from nnkern.ops.conv2d import cpu, direct, ref
from nnkern.testing import assert_close, check_gradients, upstream

# (N, C, H, W, K, KH, KW, stride, padding, dilation, bias, need_dx)
CONFIGS = [
    (2, 3, 7, 6, 4, 3, 3, 1, 1, 1, True, True),             # the common 3x3 "same size" conv
    (1, 1, 1, 1, 1, 1, 1, 1, 0, 1, True, True),             # everything 1
    (3, 5, 6, 7, 4, 1, 1, 1, 0, 1, True, True),             # 1x1 pointwise: pure GEMM path
    (2, 5, 6, 7, 4, 1, 1, 1, 0, 1, False, False),           # 1x1 pointwise, no bias, no dx
    (2, 3, 9, 8, 2, 1, 1, 2, 0, 1, True, True),             # 1x1 with stride: im2col path
    (3, 2, 9, 11, 3, 3, 2, 2, (1, 0), 1, True, True),       # stride 2, non-square kernel
    (2, 3, 11, 10, 2, 3, 3, (2, 3), (2, 1), (2, 1), False, True),  # stride/pad/dilation pairs
    (1, 4, 8, 9, 5, 2, 4, 1, "same", (1, 2), True, True),  # "same" with an even span
    (2, 2, 7, 7, 3, 4, 4, 1, "same", 1, True, False),       # "same", odd extra pixel each side
    (2, 3, 8, 7, 2, 3, 2, 1, "valid", 2, True, True),       # "valid", dilation 2
    (1, 2, 5, 5, 3, 5, 5, 1, 0, 1, True, True),             # kernel as large as the input
    (2, 2, 5, 6, 3, 3, 3, 3, 2, 1, True, True),             # stride 3, padding 2
    (2, 2, 1, 2, 3, 4, 7, 1, 3, 1, True, True),             # padding wider than the input
    (5, 16, 12, 12, 8, 3, 3, 1, 1, 1, True, True),          # larger: parallel work > 3e4
]


def make(rng, N, C, H, W, K, KH, KW, dtype=np.float64):
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, KH, KW)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    return x, w, b


def pad_sides(padding, KH, KW, dilation):
    """((top, bottom), (left, right)), written out independently of the code under test."""
    d = (dilation, dilation) if isinstance(dilation, int) else dilation
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        th, tw = d[0] * (KH - 1), d[1] * (KW - 1)
        return (th // 2, th - th // 2), (tw // 2, tw - tw // 2)
    p = (padding, padding) if isinstance(padding, int) else padding
    return (p[0], p[0]), (p[1], p[1])


def direct_conv(x, w, b, stride, padding, dilation, dy):
    """The definition, as explicit loops over every output and tap (tiny shapes only).

    Returns y and, for an upstream gradient dy (None: y only), (dx, dw, db) by the chain rule:
    each product w * x in y's sum sends dy * x to dw and dy * w to dx.
    """
    N, C, H, W = x.shape
    K, _, KH, KW = w.shape
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    dh, dw_ = (dilation, dilation) if isinstance(dilation, int) else dilation
    (pt, pb), (pl, pr) = pad_sides(padding, KH, KW, dilation)
    OH = (H + pt + pb - dh * (KH - 1) - 1) // sh + 1
    OW = (W + pl + pr - dw_ * (KW - 1) - 1) // sw + 1
    y = np.zeros((N, K, OH, OW))
    dx, dw, db = np.zeros(x.shape), np.zeros(w.shape), np.zeros(K)
    if dy is None:
        dy = np.zeros(y.shape)
    for n, k, oh, ow in itertools.product(range(N), range(K), range(OH), range(OW)):
        y[n, k, oh, ow] = 0.0 if b is None else b[k]
        db[k] += dy[n, k, oh, ow]
        for c, i, j in itertools.product(range(C), range(KH), range(KW)):
            ih, iw = oh * sh + i * dh - pt, ow * sw + j * dw_ - pl
            if 0 <= ih < H and 0 <= iw < W:
                y[n, k, oh, ow] += w[k, c, i, j] * x[n, c, ih, iw]
                dw[k, c, i, j] += dy[n, k, oh, ow] * x[n, c, ih, iw]
                dx[n, c, ih, iw] += dy[n, k, oh, ow] * w[k, c, i, j]
    return y, (dx, dw, db)


# ------------------------------------------------------------------ the reference itself


def test_reference_matches_hand_computed_3x3():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.arange(9.0).reshape(1, 1, 3, 3)   # not symmetric: a flipped kernel would show
    # y[oh, ow] = sum_ij (3i + j) * (4(i + oh) + j + ow) = 258 + 36 * (4 oh + ow), plus b = 1
    np.testing.assert_array_equal(ref.conv2d_forward(x, w, np.array([1.0])),
                                  [[[[259.0, 295.0], [403.0, 439.0]]]])
    # padding 1, corner: w[1,1] x[0,0] + w[1,2] x[0,1] + w[2,1] x[1,0] + w[2,2] x[1,1]
    assert ref.conv2d_forward(x, w, padding=1)[0, 0, 0, 0] == 4 * 0 + 5 * 1 + 7 * 4 + 8 * 5
    dx, dw, db = ref.conv2d_backward(np.ones((1, 1, 2, 2)), x, w)
    np.testing.assert_array_equal(db, [4.0])
    # dw[i, j] = x[i, j] + x[i, j+1] + x[i+1, j] + x[i+1, j+1] = 16 i + 4 j + 10
    np.testing.assert_array_equal(dw[0, 0], 16 * np.arange(3)[:, None] + 4 * np.arange(3) + 10)
    # dx[h, w] = sum of w over the windows covering (h, w)
    assert dx[0, 0, 0, 0] == 0 and dx[0, 0, 3, 3] == 8
    assert dx[0, 0, 1, 1] == 0 + 1 + 3 + 4 and dx[0, 0, 1, 2] == 1 + 2 + 4 + 5


@pytest.mark.parametrize("stride", [1, 2])
def test_reference_1x1_is_a_matmul(rng, stride):
    x, w, b = make(rng, 2, 3, 5, 6, 4, 1, 1)
    xs = x[:, :, ::stride, ::stride]          # a strided 1x1 conv reads every stride-th pixel
    y = np.einsum("kc,nchw->nkhw", w[:, :, 0, 0], xs) + b[:, None, None]
    np.testing.assert_allclose(ref.conv2d_forward(x, w, b, stride), y, rtol=1e-13)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = ref.conv2d_backward(dy, x, w, stride)
    dx_want = np.zeros_like(x)
    dx_want[:, :, ::stride, ::stride] = np.einsum("kc,nkhw->nchw", w[:, :, 0, 0], dy)
    np.testing.assert_allclose(dx, dx_want, rtol=1e-13)
    np.testing.assert_allclose(dw[:, :, 0, 0], np.einsum("nkhw,nchw->kc", dy, xs), rtol=1e-13)
    np.testing.assert_allclose(db, dy.sum(axis=(0, 2, 3)), rtol=1e-13)


@pytest.mark.parametrize("config", CONFIGS[:-1], ids=str)
def test_reference_matches_direct_loops(rng, config):
    N, C, H, W, K, KH, KW, stride, padding, dilation, bias, _ = config
    x, w, b = make(rng, min(N, 2), min(C, 3), H, W, K, KH, KW)
    b = b if bias else None
    y_loop, _ = direct_conv(x, w, b, stride, padding, dilation, None)
    dy = rng.standard_normal(y_loop.shape)
    y_loop, grads = direct_conv(x, w, b, stride, padding, dilation, dy)
    np.testing.assert_allclose(ref.conv2d_forward(x, w, b, stride, padding, dilation), y_loop,
                               rtol=1e-12, atol=1e-12)
    got = ref.conv2d_backward(dy, x, w, stride, padding, dilation)
    for name, g, want in zip(("dx", "dw", "db"), got, grads):
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-12, err_msg=name)


# ------------------------------------------------------------------ cpu against the reference


def compare_with_reference(rng, config, dtype):
    N, C, H, W, K, KH, KW, stride, padding, dilation, bias, need_dx = config
    x, w, b = make(rng, N, C, H, W, K, KH, KW, dtype)
    b = b if bias else None
    y = F.conv2d_forward(x, w, b, stride, padding, dilation)
    assert y.dtype == dtype
    x64, w64, b64 = (None if a is None else a.astype(np.float64) for a in (x, w, b))
    assert_close(y, ref.conv2d_forward(x64, w64, b64, stride, padding, dilation),
                 scale=C * KH * KW / 10 + 1)
    dy = rng.standard_normal(y.shape).astype(dtype)
    got = F.conv2d_backward(dy, x, w, stride, padding, dilation, has_bias=bias, need_dx=need_dx)
    want = ref.conv2d_backward(dy.astype(np.float64), x64, w64, stride, padding, dilation)
    assert (got[0] is None) == (not need_dx) and (got[2] is None) == (not bias)
    for name, g, r in zip(("dx", "dw", "db"), got, want):
        if g is not None:
            assert g.dtype == dtype, name
            assert_close(g, r, scale=N * y.shape[2] * y.shape[3] / 10 + 1, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_cpu_matches_reference(rng, variant, config, dtype):
    compare_with_reference(rng, config, dtype)


@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[2], CONFIGS[6], CONFIGS[7]], ids=str)
@pytest.mark.parametrize("images_per_chunk", [1, 3])
def test_chunked_batch_equals_unchunked(rng, monkeypatch, config, images_per_chunk):
    N, C, H, W, K, KH, KW, stride, padding, dilation, _, _ = config
    x, w, b = make(rng, 7, C, H, W, K, KH, KW)           # 7 images: chunks of 1, or 3 + 3 + 1
    args = (stride, padding, dilation)
    y = F.conv2d_forward(x, w, b, *args)
    assert cpu.chunk_size(cpu.conv_geometry("", x.shape, w.shape, *args), x.itemsize) == 7
    dy = rng.standard_normal(y.shape)
    grads = F.conv2d_backward(dy, x, w, *args)
    column_bytes = C * KH * KW * y.shape[2] * y.shape[3] * x.itemsize  # im2col of one image
    monkeypatch.setattr(cpu, "COL_BUFFER_BYTES", images_per_chunk * column_bytes + 1)
    np.testing.assert_allclose(F.conv2d_forward(x, w, b, *args), y, rtol=1e-12, atol=1e-12)
    for got, want in zip(F.conv2d_backward(dy, x, w, *args), grads):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_writes_into_out_buffers(rng):
    x, w, b = make(rng, 2, 3, 6, 5, 4, 3, 3, np.float32)
    y = np.empty((2, 4, 3, 3), np.float32)
    assert F.conv2d_forward(x, w, b, 2, 1, out=y) is y
    np.testing.assert_allclose(y, ref.conv2d_forward(x, w, b, 2, 1), rtol=1e-5, atol=1e-5)
    bufs = (np.empty_like(x), np.empty_like(w), np.empty_like(b))
    grads = F.conv2d_backward(np.ones_like(y), x, w, 2, 1, out=bufs)
    assert all(g is buf for g, buf in zip(grads, bufs))
    dx, dw, db = F.conv2d_backward(np.ones_like(y), x, w, 2, 1, out=(None, bufs[1], None))
    assert dw is bufs[1] and dx is not bufs[0] and db is not None


# ------------------------------------------------------------------ direct path (few channels)

# (N, C, H, W, K, KH, KW, stride, padding, dilation, bias, need_dx): float32, 3x3, stride 1
DIRECT_CONFIGS = [
    (N, C, 5, 7, 3, 3, 3, 1, padding, 1, bias, need_dx)
    for N, C, padding, bias, need_dx in [
        (1, 1, 1, True, True), (3, 1, 0, False, False), (2, 1, 2, True, False),
        (1, 2, 0, True, True), (3, 2, 1, False, True), (2, 2, 2, True, True),
        (1, 3, 2, False, True), (3, 3, 1, True, False), (2, 3, 0, True, True)]
] + [
    (4, 3, 32, 32, 8, 3, 3, 1, 1, 1, True, True),           # the first layer's shape, batch 4
    (2, 3, 3, 4, 5, 3, 3, 1, "same", 1, True, True),        # "same" = padding 1
    (2, 1, 1, 2, 2, 3, 3, 1, 2, 1, True, True),             # padding wider than the input
] + [
    # float32 vector tiles: 10x9 = 5 vectors of 16 outputs (a block of 4, a single one) and a
    # scalar tail of 10; 7 filters (a group of 4 and 3 singles forward, 3 pairs and 1 single
    # in dw); OW = 9 leaves the vector loads unaligned
    (3, C, 10, 9, 7, 3, 3, 1, padding, 1, True, False)
    for C, padding in [(1, 1), (2, 0), (3, 1), (3, 2)]
]


@pytest.mark.parametrize("config", DIRECT_CONFIGS, ids=str)
def test_direct_path_matches_reference(rng, variant, config):
    N, C, H, W, K, KH, KW, stride, padding, dilation, _, _ = config
    g = cpu.conv_geometry("", (N, C, H, W), (K, C, KH, KW), stride, padding, dilation)
    assert direct.applicable(g, np.float32)                 # the path under test is taken
    compare_with_reference(rng, config, np.float32)


def test_direct_path_only_for_few_channels_and_float32():
    def geometry(C, KH=3, stride=1, dilation=1):
        return cpu.conv_geometry("", (2, C, 8, 8), (4, C, KH, KH), stride, 1, dilation)
    assert direct.applicable(geometry(direct.MAX_CHANNELS), np.float32)
    assert not direct.applicable(geometry(direct.MAX_CHANNELS + 1), np.float32)
    assert not direct.applicable(geometry(1), np.float64)   # float64 keeps the exact path
    assert not direct.applicable(geometry(1, KH=5), np.float32)
    assert not direct.applicable(geometry(1, stride=2), np.float32)
    assert not direct.applicable(geometry(1, dilation=2), np.float32)


@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("C", [1, 3])
def test_direct_path_gradients_finite_difference(rng, monkeypatch, C, padding):
    """The direct kernels in float64 (applicable() keeps float64 on the exact path: forced
    here), against finite differences, dx included."""
    real = direct.applicable
    taken = []

    def float64_too(g, dtype):
        ok = real(g, np.float32)
        taken.append(ok)
        return ok
    monkeypatch.setattr(direct, "applicable", float64_too)
    x, w, b = make(rng, 2, C, 5, 4, 3, 3, 3)
    args = (1, padding, 1)
    r = upstream(cpu.conv2d_forward(x, w, b, *args).shape, rng)
    dx, dw, db = cpu.conv2d_backward(r, x, w, *args)
    assert taken[0]                                          # the direct path ran
    check_gradients(lambda: float(np.sum(cpu.conv2d_forward(x, w, b, *args) * r)),
                    {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db})


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("C", [1, 3])
def test_direct_path_is_independent_of_thread_count(rng, monkeypatch, C):
    monkeypatch.setattr(jit, "PARALLEL_MIN_WORK", 0)        # the prange variants throughout
    x, w, b = make(rng, 5, C, 9, 11, 6, 3, 3, np.float32)
    dy = rng.standard_normal((5, 6, 9, 11)).astype(np.float32)
    results = []
    threads = numba.get_num_threads()
    try:
        for n in (1, 2):
            numba.set_num_threads(n)
            results.append((F.conv2d_forward(x, w, b, 1, 1),
                            *F.conv2d_backward(dy, x, w, 1, 1, need_dx=False)[1:]))
    finally:
        numba.set_num_threads(threads)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


# ------------------------------------------------------------------ gradients


GRAD_CONFIGS = [
    # (N, C, H, W, K, KH, KW, stride, padding, dilation)
    (2, 2, 5, 5, 3, 3, 3, 1, 1, 1),
    (2, 2, 8, 7, 2, 2, 3, 2, (2, 1), 2),                 # stride 2, dilation 2, pad (2, 1)
    (1, 2, 6, 5, 2, 2, 4, 1, "same", (2, 1)),            # "same": pads (1, 1) and (1, 2)
    (2, 3, 4, 5, 2, 1, 1, 1, 0, 1),                      # pointwise GEMM path
]


@pytest.mark.parametrize("config", GRAD_CONFIGS, ids=str)
@pytest.mark.parametrize("module", [ref, F], ids=["ref", "cpu"])
def test_gradients_finite_difference(rng, module, config):
    N, C, H, W, K, KH, KW, stride, padding, dilation = config
    x, w, b = make(rng, N, C, H, W, K, KH, KW)
    args = (stride, padding, dilation)
    r = upstream(module.conv2d_forward(x, w, b, *args).shape, rng)
    dx, dw, db = module.conv2d_backward(r, x, w, *args)
    check_gradients(lambda: float(np.sum(module.conv2d_forward(x, w, b, *args) * r)),
                    {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db})


# ------------------------------------------------------------------ random configurations


@st.composite
def conv_configs(draw):
    KH, KW = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.one_of(st.integers(0, 4), st.tuples(st.integers(0, 4), st.integers(0, 4)),
                             st.sampled_from(["valid", "same"])))
    stride = (1, 1) if padding == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    shape = draw(st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 9),
                           st.integers(1, 9), st.integers(1, 4)))
    return shape, (KH, KW), stride, padding, dilation, draw(st.booleans())


@settings(max_examples=40, deadline=None)
@given(config=conv_configs(), seed=st.integers(0, 2**32 - 1))
def test_cpu_matches_reference_on_random_configs(config, seed):
    (N, C, H, W, K), (KH, KW), stride, padding, dilation, bias = config
    (pt, pb), (pl, pr) = pad_sides(padding, KH, KW, dilation)
    hypothesis.assume(H + pt + pb >= dilation[0] * (KH - 1) + 1)
    hypothesis.assume(W + pl + pr >= dilation[1] * (KW - 1) + 1)
    rng = np.random.default_rng(seed)
    x, w, b = make(rng, N, C, H, W, K, KH, KW)
    b = b if bias else None
    args = (stride, padding, dilation)
    y = F.conv2d_forward(x, w, b, *args)
    assert_close(y, ref.conv2d_forward(x, w, b, *args))
    dy = rng.standard_normal(y.shape)
    for got, want in zip(F.conv2d_backward(dy, x, w, *args, has_bias=bias),
                         ref.conv2d_backward(dy, x, w, *args, has_bias=bias)):
        assert (got is None) == (want is None)
        if got is not None:
            assert_close(got, want)


# ------------------------------------------------------------------ bad input


def test_bad_input_is_rejected_with_a_clear_message(rng):
    x, w, b = make(rng, 2, 3, 6, 6, 4, 3, 3, np.float32)
    f32 = np.float32
    with pytest.raises(ValueError, match=r"x must be 4-D \(N, C, H, W\), got shape \(3, 6, 6\)"):
        F.conv2d_forward(x[0], w, b)
    with pytest.raises(ValueError, match=r"w must be 4-D \(K, C, KH, KW\)"):
        F.conv2d_forward(x, w[0], b)
    with pytest.raises(ValueError, match="x has 3 channels but w expects 4"):
        F.conv2d_forward(x, np.ones((4, 4, 3, 3), f32), b)
    with pytest.raises(ValueError, match=r"b must have shape \(4,\)"):
        F.conv2d_forward(x, w, np.ones(3, f32))
    with pytest.raises(TypeError, match="w has dtype float64 but the other arguments are float32"):
        F.conv2d_forward(x, w.astype(np.float64), b)
    with pytest.raises(TypeError, match="b has dtype float64"):
        F.conv2d_forward(x, w, b.astype(np.float64))
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got int64"):
        F.conv2d_forward(np.ones((2, 3, 6, 6), np.int64), w, b)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        F.conv2d_forward(np.ones((2, 3, 6, 12), f32)[..., ::2], w, b)
    with pytest.raises(ValueError, match="w must be C-contiguous"):
        F.conv2d_forward(x, np.ones((3, 4, 3, 3), f32).transpose(1, 0, 2, 3), b)
    with pytest.raises(ValueError, match="x has empty batch"):
        F.conv2d_forward(np.ones((0, 3, 6, 6), f32), w, b)
    with pytest.raises(TypeError, match="x must be an array, got list"):
        F.conv2d_forward(x.tolist(), w, b)
    with pytest.raises(ValueError, match=r"kernel \(size 3, dilation 3, span 7\) is larger than "
                                         r"the padded input along H \(6 \+ 2\*0 = 6\)"):
        F.conv2d_forward(x, w, b, dilation=(3, 1))
    with pytest.raises(ValueError, match="along W"):
        F.conv2d_forward(np.ones((2, 3, 6, 2), f32), w, b)


@pytest.mark.parametrize("option, value, error, message", [
    ("stride", 0, ValueError, "stride must be >= 1, got 0"),
    ("stride", (1, 0), ValueError, "stride must be >= 1, got 0"),
    ("stride", 1.5, TypeError, "stride must be an int, got float 1.5"),
    ("stride", (1, 2, 3), ValueError, r"stride must be an int or a pair \(h, w\)"),
    ("padding", -1, ValueError, "padding must be >= 0, got -1"),
    ("padding", "full", ValueError, "padding must be an int, a pair .* 'valid' or 'same', got "
                                    "'full'"),
    ("padding", (1, True), TypeError, "padding must be an int, got bool True"),
    ("dilation", 0, ValueError, "dilation must be >= 1, got 0"),
    ("dilation", "2", TypeError, "dilation must be an int, got str"),
])
def test_bad_options_are_rejected(rng, option, value, error, message):
    x, w, b = make(rng, 1, 2, 6, 6, 3, 3, 3)
    y = np.ones((1, 3, 4, 4))
    with pytest.raises(error, match=message):
        F.conv2d_forward(x, w, b, **{option: value})
    with pytest.raises(error, match=message):
        F.conv2d_backward(y, x, w, **{option: value})


def test_bad_backward_input_is_rejected(rng):
    x, w, _ = make(rng, 2, 3, 6, 6, 4, 3, 3)
    dy = np.ones((2, 4, 6, 6))
    with pytest.raises(ValueError, match="padding='same' needs stride 1, got stride"):
        F.conv2d_forward(x, w, stride=2, padding="same")
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 4, 4, 4\) \(\(N, K, OH, OW\) "
                                         r"of the forward\), got \(2, 4, 6, 6\)"):
        F.conv2d_backward(dy, x, w)
    with pytest.raises(ValueError, match=r"dy must be 4-D \(N, K, OH, OW\)"):
        F.conv2d_backward(dy[0], x, w, padding=1)
    with pytest.raises(TypeError, match="dy has dtype float32"):
        F.conv2d_backward(dy.astype(np.float32), x, w, padding=1)
    with pytest.raises(ValueError, match=r"out dw must have shape \(4, 3, 3, 3\)"):
        F.conv2d_backward(dy, x, w, padding=1, out=(None, np.empty((3, 4, 3, 3)), None))
    with pytest.raises(ValueError, match=r"out must be a tuple \(dx, dw, db\)"):
        F.conv2d_backward(dy, x, w, padding=1, out=(None, None))
    with pytest.raises(ValueError, match=r"out must have shape \(2, 4, 6, 6\)"):
        F.conv2d_forward(x, w, padding=1, out=np.empty((2, 4, 4, 4)))
