"""CUDA activations against the NumPy references (simulator in CI, a real GPU when present)."""

import inspect

import numpy as np
import pytest

import nnkern
import nnkern.functional as F
import nnkern.ops.activation as public
from nnkern.backend import to_host
from nnkern.ops.activation import cuda as gpu
from nnkern.ops.activation import ref
from nnkern.ops.shift_scale import cuda as ss_gpu
from nnkern.testing import assert_close

pytestmark = pytest.mark.cuda

DTYPES = [np.float32, np.float64]
SHAPES = [(37,), (3, 5), (2, 3, 2, 3)]  # odd sizes: no multiple of any block size
ELEMENTWISE = [("relu", {}), ("leaky_relu", {"negative_slope": 0.2}), ("elu", {"alpha": 0.7}),
               ("selu", {}), ("sigmoid", {}), ("tanh", {})]


def dev(a):
    return nnkern.to_device(a, "cuda")


def inputs(rng, shape, dtype, scale=3.0):
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    x.reshape(-1)[::7] = 0.0  # the kinks: derivative conventions at exactly 0
    return x, rng.standard_normal(shape).astype(dtype)


def test_backend_exports_the_public_functions():
    for name, fn in inspect.getmembers(public, inspect.isfunction):
        if fn.__module__ == public.__name__ and not name.startswith("_"):
            assert inspect.signature(getattr(gpu, name)) == inspect.signature(fn), name


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_forward_backward_match_reference(rng, dtype):
    for shape in SHAPES:
        x, dy = inputs(rng, shape, dtype)
        x.reshape(-1)[1] = 60.0  # sigmoid/tanh saturation, exp(-|x|) tiny
        x.reshape(-1)[2] = -60.0
        for name, kw in ELEMENTWISE:
            y = getattr(ref, f"{name}_forward")(x, **kw)
            got = getattr(F, f"{name}_forward")(dev(x), **kw)
            assert got.dtype == dtype and got.shape == shape
            assert_close(to_host(got), y, err_msg=f"{name} {shape}")
            want = getattr(ref, f"{name}_backward")(dy, x, y, **kw)
            got = getattr(F, f"{name}_backward")(dev(dy), dev(x), dev(y), **kw)
            assert got.dtype == dtype
            assert_close(to_host(got), want, err_msg=f"{name} backward {shape}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_and_log_softmax_match_reference(rng, dtype):
    # (N, C) rows with groups of consecutive threads; (N, C, H, W) with positions along threads;
    # C = 300 > one block's worth of group members
    for shape in [(3, 5), (2, 3, 2, 3), (1, 300)]:
        x, dy = inputs(rng, shape, dtype)
        for name in ("softmax", "log_softmax"):
            y = getattr(ref, f"{name}_forward")(x)
            got = getattr(F, f"{name}_forward")(dev(x))
            assert got.dtype == dtype
            assert_close(to_host(got), y, err_msg=f"{name} {shape}")
            got = getattr(F, f"{name}_backward")(dev(dy), dev(x), dev(y))
            assert_close(to_host(got), getattr(ref, f"{name}_backward")(dy, x, y),
                         err_msg=f"{name} backward {shape}")


@pytest.mark.parametrize("target, max_blocks", [(1, 1), (8, 2), (1 << 17, 65_535)])
def test_softmax_every_launch_plan(rng, monkeypatch, target, max_blocks):
    # few target threads: groups shrink to one thread per position; few blocks: every block
    # loops over several batches of positions (grid stride)
    monkeypatch.setattr(gpu, "_TARGET_THREADS", target)
    monkeypatch.setattr(gpu, "MAX_BLOCKS", max_blocks)
    gpu.group_plan.cache_clear()
    try:
        for shape in [(5, 3), (2, 5, 1, 3)]:
            x, dy = inputs(rng, shape, np.float64)
            y = ref.log_softmax_forward(x)
            assert_close(to_host(F.log_softmax_forward(dev(x))), y)
            assert_close(to_host(F.log_softmax_backward(dev(dy), dev(x), dev(y))),
                         ref.log_softmax_backward(dy, x, y))
            s = ref.softmax_forward(x)
            assert_close(to_host(F.softmax_backward(dev(dy), dev(x), dev(s))),
                         ref.softmax_backward(dy, x, s))
    finally:
        gpu.group_plan.cache_clear()


def test_softmax_extreme_logits(rng):
    x = (rng.standard_normal((2, 4)) * 1e4).astype(np.float32)
    x[1, 2] = -np.inf  # exp(-inf - m) = 0
    assert_close(to_host(F.log_softmax_forward(dev(x[:1]))), ref.log_softmax_forward(x[:1]))
    y = to_host(F.softmax_forward(dev(x)))
    assert np.all(np.isfinite(y)) and y[1, 2] == 0
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)


def test_nan_propagates_like_the_cpu_kernels():
    x = np.array([[np.nan, 1.0, -1.0], [0.5, 2.0, -3.0]], np.float32)
    for name in ("relu", "sigmoid", "tanh", "elu", "softmax"):
        cpu = getattr(F, f"{name}_forward")(x)
        got = to_host(getattr(F, f"{name}_forward")(dev(x)))
        np.testing.assert_array_equal(np.isnan(got), np.isnan(cpu), err_msg=name)
        assert_close(got, cpu, err_msg=name)  # NaN == NaN here


@pytest.mark.parametrize("dtype", DTYPES)
def test_prelu_matches_reference(rng, dtype):
    for shape, channels in [((37,), 1), ((3, 5), 1), ((3, 5), 5), ((2, 3, 2, 3), 3)]:
        x, dy = inputs(rng, shape, dtype)
        w = rng.uniform(0.05, 0.5, channels).astype(dtype)
        assert_close(to_host(F.prelu_forward(dev(x), dev(w))), ref.prelu_forward(x, w))
        dx, dw = F.prelu_backward(dev(dy), dev(x), dev(w))
        want_dx, want_dw = ref.prelu_backward(dy, x, w)
        assert dx.dtype == dtype and dw.dtype == dtype and dw.shape == (channels,)
        assert_close(to_host(dx), want_dx)
        assert_close(to_host(dw), want_dw, scale=5)


def test_prelu_weight_gradient_over_several_tiles_is_deterministic(rng, monkeypatch):
    # small tiles force the two-kernel path (per-tile partials merged in a fixed order)
    monkeypatch.setattr(ss_gpu, "_MIN_ROWS", 2)
    monkeypatch.setattr(ss_gpu, "_MIN_CHUNK", 4)
    ss_gpu._cols_plan.cache_clear()
    ss_gpu._chan_plan.cache_clear()
    try:
        for shape, channels in [((9, 4), 4), ((3, 2, 2, 3), 2), ((3, 2, 2, 3), 1)]:
            x, dy = inputs(rng, shape, np.float32)
            w = rng.uniform(0.05, 0.5, channels).astype(np.float32)
            first = [to_host(a) for a in F.prelu_backward(dev(dy), dev(x), dev(w))]
            second = [to_host(a) for a in F.prelu_backward(dev(dy), dev(x), dev(w))]
            want = ref.prelu_backward(dy, x, w)
            for a, b, c in zip(first, second, want):
                np.testing.assert_array_equal(a, b)  # same bits twice
                assert_close(a, c, scale=5)
    finally:
        ss_gpu._cols_plan.cache_clear()
        ss_gpu._chan_plan.cache_clear()


def test_out_buffers_and_in_place(rng):
    x, dy = inputs(rng, (2, 3, 2, 3), np.float32)
    want = ref.softmax_forward(x)
    out = dev(np.zeros_like(x))
    assert F.softmax_forward(dev(x), out=out) is out
    assert_close(to_host(out), want)
    xd = dev(x)
    assert F.softmax_forward(xd, out=xd) is xd  # in place
    assert_close(to_host(xd), want)
    xd = dev(x)
    assert F.relu_forward(xd, out=xd) is xd
    np.testing.assert_array_equal(to_host(xd), np.maximum(x, 0))
    w = np.array([0.1, 0.2, 0.3], np.float32)
    outs = (dev(np.zeros_like(x)), dev(np.zeros(3, np.float32)))
    dx, dw = F.prelu_backward(dev(dy), dev(x), dev(w), out=outs)
    assert dx is outs[0] and dw is outs[1]
    assert_close(to_host(dw), ref.prelu_backward(dy, x, w)[1], scale=5)


def test_bad_input_is_rejected(rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"x on cuda; weight on cpu"):
        F.prelu_forward(dev(x), np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"x on cuda; out on cpu"):
        F.relu_forward(dev(x), out=np.empty_like(x))
    with pytest.raises(ValueError, match=r"must be C-contiguous"):
        F.sigmoid_forward(dev(np.ones((4, 6), np.float32))[:, ::2])
    with pytest.raises(TypeError, match=r"y has dtype float64 but the other arguments are "
                                        r"float32"):
        F.tanh_backward(dev(x), dev(x), dev(x.astype(np.float64)))
    with pytest.raises(ValueError, match=r"softmax_forward: x must be at least 2-D"):
        F.softmax_forward(dev(np.ones(3, np.float32)))
