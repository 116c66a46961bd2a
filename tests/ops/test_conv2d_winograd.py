"""The fast float32 conv2d paths: Winograd F(4x4)/F(2x2) and per-image GEMM tasks.

Tolerances. Winograd F(4x4, 3x3) computes each output through transforms with coefficients up
to 8 (A), 5/2 (B) and 16/15 (G), so its float32 rounding error is 2-4x that of a direct sum:
measured max |y - y64| <= 5 eps * max_(n,k,h,w) sum_(c,i,j) |w| |x~| for C = 16..512 (1-2e-6 of
max |y|; with Lavin's points 0, +-1, +-2 it was 12 eps), against ~1 eps for im2col (F(2x2):
~1.5x). The bound grows with the summed magnitudes, i.e. with C*KH*KW for y and with N*OH*OW
for dw, exactly like the tolerance ``scale`` the conv tests already use (C*KH*KW/10 + 1 for y,
N*OH*OW/10 + 1 for the gradients); at those scales the Winograd errors stay several times inside
the float32 tolerance, so the tests below reuse them unchanged.
float64 never takes these paths (gradient checks keep the exact im2col path); the Winograd
kernels are still checked in float64 at 1e-12 and by finite differences, which shows the
algebra is exact and only float32 rounding differs.
"""

import numba
import numpy as np
import pytest

import nnkern.functional as F
from nnkern.ops import _parallel
from nnkern.ops.conv2d import cpu, ref, winograd
from nnkern.ops.conv2d._geometry import conv_geometry
from nnkern.testing import assert_close, check_gradients, upstream

# (N, C, H, W, K, padding, bias, need_dx)
SHAPES = [
    (2, 16, 8, 8, 16, 1, True, True),          # F(4x4), whole tiles, fused backward
    (3, 16, 7, 9, 20, 1, False, True),         # partial tiles on both axes, no bias
    (1, 17, 5, 6, 16, 0, True, True),          # "valid": separate dx (pad 2) and dw passes
    (2, 16, 6, 5, 18, 2, True, True),          # padding 2: dx pads dy by 0
    (2, 16, 9, 7, 16, (2, 0), True, False),    # uneven padding, no dx
    (2, 16, 2, 2, 16, 1, True, True),          # 2x2 output: F(2x2)
    (1, 16, 3, 5, 24, 1, True, True),          # 3 rows: F(2x2), partial tiles
    (2, 16, 1, 1, 16, 1, True, True),          # a single pixel
    (1, 32, 12, 12, 16, "same", True, True),   # "same" is padding 1
]


def make(rng, N, C, H, W, K, dtype=np.float32):
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = (rng.standard_normal((K, C, 3, 3)) / np.sqrt(9 * C)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    return x, w, b


def geometry(x, w, padding):
    return conv_geometry("test", x.shape, w.shape, 1, padding, 1)


# ------------------------------------------------------------------ the algebra


@pytest.mark.parametrize("m", [2, 4])
def test_transform_matrices_compute_correlation_and_its_weight_gradient(rng, m):
    BT, G, AT = winograd.MATRICES[m]
    for _ in range(5):
        g, d, dy = rng.standard_normal(3), rng.standard_normal(m + 2), rng.standard_normal(m)
        corr = np.array([g @ d[a:a + 3] for a in range(m)])           # y_a = sum_i g_i d_(a+i)
        np.testing.assert_allclose(AT @ ((G @ g) * (BT @ d)), corr, rtol=1e-13, atol=1e-13)
        # dw_i = sum_a dy_a d_(a+i) = G^T [(A dy) . (B^T d)]   (module docstring)
        dw = np.array([dy @ d[i:i + m] for i in range(3)])
        np.testing.assert_allclose(G.T @ ((AT.T @ dy) * (BT @ d)), dw, rtol=1e-13, atol=1e-13)


def close(got, want):
    # float32 kernels against float64 matrices: a few float32 roundings of the transforms
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("m", [2, 4])
def test_transform_kernels_match_the_matrices(rng, m):
    BT, G, AT = winograd.MATRICES[m]
    a = m + 2
    f32 = np.float32
    N, C, H, W, K = 2, 5, 2 * m + 1, 3 * m - 1, 3          # partial tiles, odd channel counts
    x = rng.standard_normal((N, C, H, W)).astype(f32)
    pt, pl = 1, 2
    OH, OW = H + 2 * pt - 2, W + 2 * pl - 2
    Th, Tw = -(-OH // m), -(-OW // m)
    P = N * Th * Tw
    xp = np.zeros((N, C, m * Th + 2, m * Tw + 2))
    xp[:, :, pt:pt + H, pl:pl + W] = x
    tiles = np.stack([xp[n, :, m * th:m * th + a, m * tw:m * tw + a]
                      for n in range(N) for th in range(Th) for tw in range(Tw)])  # (P, C, a, a)

    V = np.empty((a * a, P, C), f32)
    winograd.INPUT[m](x, 0, N, pt, pl, Th, Tw, V.reshape(-1), 0, P)
    close(V, np.einsum("xi,pcij,yj->xypc", BT, tiles, BT).reshape(a * a, P, C))

    M = rng.standard_normal((a * a, P, K)).astype(f32)
    bias = rng.standard_normal(K).astype(f32)
    y = np.empty((N, K, OH, OW), f32)
    winograd.OUTPUT[m](M.reshape(-1), 0, P, bias, 0, N, Th, Tw, y)
    out = np.einsum("ax,xypk,by->pkab", AT, M.reshape(a, a, P, K), AT)    # (P, K, m, m)
    full = out.reshape(N, Th, Tw, K, m, m).transpose(0, 3, 1, 4, 2, 5).reshape(
        N, K, Th * m, Tw * m)
    close(y, full[:, :, :OH, :OW] + bias[:, None, None])

    dy = rng.standard_normal((N, K, OH, OW)).astype(f32)
    dyp = np.zeros((N, K, Th * m, Tw * m))
    dyp[:, :, :OH, :OW] = dy
    gt = np.stack([dyp[n, :, m * th:m * th + m, m * tw:m * tw + m]
                   for n in range(N) for th in range(Th) for tw in range(Tw)])   # (P, K, m, m)
    D_want = np.einsum("ax,pkab,by->xypk", AT, gt, AT).reshape(a * a, P, K)
    D = np.empty((a * a, P, K), f32)
    winograd.GRAD[m](dy, 0, N, Th, Tw, D.reshape(-1), 0, P)
    close(D, D_want)
    # the fused pass: the same D, and E = the input transform of dy padded by 1
    E, D2 = np.empty((a * a, P, K), f32), np.empty((a * a, P, K), f32)
    winograd.DY[m](dy, 0, N, Th, Tw, E.reshape(-1), D2.reshape(-1), 0, P)
    E_want = np.empty((a * a, P, K), f32)
    winograd.INPUT[m](dy, 0, N, 1, 1, Th, Tw, E_want.reshape(-1), 0, P)
    np.testing.assert_array_equal(E, E_want)
    np.testing.assert_array_equal(D2, D)

    w = rng.standard_normal((4, 3, 3, 3)).astype(f32)
    for flip in (False, True):
        wf = w[:, :, ::-1, ::-1] if flip else w
        close(winograd.filter_transform(w, m, flip),
              np.einsum("xi,kcij,yj->xykc", G, wf, G).reshape(a * a, 4, 3))
    Wt = rng.standard_normal((a * a, 4, 3)).astype(f32)
    close(winograd.filter_gradient(Wt, m, np.empty((4, 3, 3, 3), f32)),
          np.einsum("xi,xykc,yj->kcij", G, Wt.reshape(a, a, 4, 3), G))


def test_which_convolutions_take_winograd():
    ok = conv_geometry("t", (2, 16, 8, 8), (16, 16, 3, 3), 1, 1, 1)
    assert winograd.applicable(ok, np.float32)
    assert not winograd.applicable(ok, np.float64)                 # float64 stays exact
    for shape_w, stride, padding, dilation, C in [
            ((16, 16, 5, 5), 1, 2, 1, 16),                         # 5x5
            ((16, 16, 3, 3), 2, 1, 1, 16),                         # stride 2
            ((16, 16, 3, 3), 1, 2, 2, 16),                         # dilation 2
            ((16, 16, 3, 3), 1, 3, 1, 16),                         # padding 3 (dx would crop)
            ((16, 3, 3, 3), 1, 1, 1, 3),                           # first layer, C = 3
            ((8, 16, 3, 3), 1, 1, 1, 16)]:                         # 8 output channels
        g = conv_geometry("t", (2, C, 8, 8), shape_w, stride, padding, dilation)
        assert not winograd.applicable(g, np.float32)
    assert winograd.tile_size(4, 9) == 4 and winograd.tile_size(3, 9) == 2


# ------------------------------------------------------------------ against the reference


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_winograd_matches_reference_float32(rng, shape):
    N, C, H, W, K, padding, bias, need_dx = shape
    x, w, b = make(rng, N, C, H, W, K)
    b = b if bias else None
    assert winograd.applicable(geometry(x, w, padding), x.dtype)
    y = F.conv2d_forward(x, w, b, 1, padding)
    assert y.dtype == np.float32
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    b64 = None if b is None else b.astype(np.float64)
    assert_close(y, ref.conv2d_forward(x64, w64, b64, 1, padding), scale=C * 9 / 10 + 1)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    got = F.conv2d_backward(dy, x, w, 1, padding, has_bias=bias, need_dx=need_dx)
    want = ref.conv2d_backward(dy.astype(np.float64), x64, w64, 1, padding)
    assert (got[0] is None) == (not need_dx) and (got[2] is None) == (not bias)
    for name, g, r in zip(("dx", "dw", "db"), got, want):
        if g is not None:
            assert g.dtype == np.float32, name
            assert_close(g, r, scale=N * y.shape[2] * y.shape[3] / 10 + 1, err_msg=name)


def test_winograd_kernels_are_exact_in_float64(rng):
    # the dispatcher never sends float64 here; run the path (F(4x4), fused backward) directly
    N, C, H, W, K, padding, _, _ = SHAPES[1]
    x, w, b = make(rng, N, C, H, W, K, np.float64)
    g = geometry(x, w, padding)
    y = winograd.forward(x, w, b, g, np.empty((N, K, g.OH, g.OW)))
    np.testing.assert_allclose(y, ref.conv2d_forward(x, w, b, 1, padding), rtol=1e-12,
                               atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx, dw = winograd.backward(dy, x, w, g, np.empty_like(x), np.empty_like(w))
    dx_want, dw_want, _ = ref.conv2d_backward(dy, x, w, 1, padding)
    np.testing.assert_allclose(dx, dx_want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, dw_want, rtol=1e-12, atol=1e-12)


def test_winograd_gradients_finite_difference(rng):
    x, w, b = make(rng, 2, 2, 5, 6, 3, np.float64)
    g = geometry(x, w, 1)

    def forward():
        return winograd.forward(x, w, b, g, np.empty((2, 3, 5, 6)))
    r = upstream((2, 3, 5, 6), rng)
    dx, dw = winograd.backward(r, x, w, g, np.empty_like(x), np.empty_like(w))
    check_gradients(lambda: float(np.sum(forward() * r)), {"x": x, "w": w}, {"x": dx, "w": dw})


def test_larger_channel_counts_stay_within_the_winograd_error_bound(rng):
    # the bound in the module docstring, at a VGG-like depth: |y - y64| <= 5 eps sum |w||x~|
    x, w, _ = make(rng, 2, 128, 8, 8, 32)
    y = F.conv2d_forward(x, w, None, 1, 1)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    y64 = ref.conv2d_forward(x64, w64, None, 1, 1)
    bound = ref.conv2d_forward(np.abs(x64), np.abs(w64), None, 1, 1)
    assert np.all(np.abs(y - y64) <= 5 * np.finfo(np.float32).eps * bound.max())


# ------------------------------------------------------------------ chunks, threads, buffers


def run_all(x, w, b, dy, padding):
    y = F.conv2d_forward(x, w, b, 1, padding)
    return (y,) + F.conv2d_backward(dy, x, w, 1, padding)


@pytest.mark.parametrize("padding", [1, 0])
def test_super_chunks_give_the_same_result(rng, monkeypatch, padding):
    x, w, b = make(rng, 5, 16, 8, 8, 16)
    dy = rng.standard_normal((5, 16, 8 + 2 * padding - 2, 8 + 2 * padding - 2)).astype(x.dtype)
    whole = run_all(x, w, b, dy, padding)
    per_image = 36 * 4 * 16 * 4                                  # a*a * tiles * channels * 4 B
    monkeypatch.setattr(winograd, "CHUNK_BYTES", 2 * per_image)  # chunks of 1, 2, 2 images
    assert winograd._chunks(5, 4, 36, 16, 4) == [(0, 1), (1, 3), (3, 5)]
    # dw's chunk partials add in another order: equal up to float32 Winograd rounding
    for got, want in zip(run_all(x, w, b, dy, padding), whole):
        assert_close(got, want, scale=5 * 64 / 10 + 1)


@pytest.mark.parametrize("padding", [1, 0])
def test_whole_chunk_tasks_match_the_phases(rng, monkeypatch, padding):
    # small channel counts run each super-chunk as one task (winograd.TASK_CHANNELS); the
    # phased path does the same GEMMs and additions per chunk, so results are identical
    x, w, b = make(rng, 9, 16, 8, 8, 24)
    dy = rng.standard_normal((9, 24, 8 + 2 * padding - 2, 8 + 2 * padding - 2)).astype(x.dtype)
    monkeypatch.setattr(winograd, "TASK_TILES", 8)               # 2 tiles per image: 4 tasks
    monkeypatch.setattr(winograd, "CHUNK_TILES", 8)              # the same chunks in phases
    assert winograd._task_chunks(9, 4) == winograd._chunks(9, 4, 36, 24, 4)
    tasks = run_all(x, w, b, dy, padding)
    monkeypatch.setattr(winograd, "TASK_CHANNELS", 0)
    for got, want in zip(run_all(x, w, b, dy, padding), tasks):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("config", [
    (7, 16, 8, 8, 16, 3, 1, 1),             # Winograd, fused backward
    (7, 16, 6, 6, 16, 3, 0, 1),             # Winograd, separate dx and dw
    (7, 3, 9, 8, 16, 3, 1, 1),              # first layer: per-image GEMM tasks
    (7, 4, 9, 8, 5, 3, 1, 2),               # stride 2: per-image GEMM tasks
], ids=str)
def test_results_do_not_depend_on_the_thread_count(rng, config):
    N, C, H, W, K, KH, padding, stride = config
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C, KH, KH)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    y = F.conv2d_forward(x, w, b, stride, padding)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    results = []
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            results.append((F.conv2d_forward(x, w, b, stride, padding),)
                           + F.conv2d_backward(dy, x, w, stride, padding))
    finally:
        numba.set_num_threads(before)
    for got in results[1:]:
        for a, b_ in zip(got, results[0]):
            np.testing.assert_array_equal(a, b_)


def test_per_image_tasks_split_the_batch(rng, monkeypatch):
    x = rng.standard_normal((7, 3, 9, 8)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    dy = rng.standard_normal((7, 5, 9, 8)).astype(np.float32)
    g = conv_geometry("t", x.shape, w.shape, 1, 1, 1)
    assert cpu.task_images(g, 4) == [(0, 7)]
    whole = run_all(x, w, b, dy, 1)
    monkeypatch.setattr(cpu, "TASK_COL_BYTES", 3 * 28 * 72 * 4)   # <= 3 images per task
    assert cpu.task_images(g, 4) == [(0, 2), (2, 4), (4, 7)]
    for got, want in zip(run_all(x, w, b, dy, 1), whole):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_out_buffers_are_used(rng):
    x, w, b = make(rng, 2, 16, 6, 6, 16)
    y = np.empty((2, 16, 6, 6), np.float32)
    assert F.conv2d_forward(x, w, b, 1, 1, out=y) is y
    bufs = (np.empty_like(x), np.empty_like(w), np.empty_like(b))
    grads = F.conv2d_backward(np.ones_like(y), x, w, 1, 1, out=bufs)
    assert all(g is buf for g, buf in zip(grads, bufs))
    assert_close(grads[1], ref.conv2d_backward(np.ones(y.shape), x.astype(np.float64),
                                               w.astype(np.float64), 1, 1)[1], scale=8)


def test_task_runner_and_blas_limit():
    seen = []
    add = lambda a, b: seen.append(a + b)  # noqa: E731
    _parallel.run_tasks([(add, 1, 2), (add, 3, 4), (add, 5, 6)])
    assert sorted(seen) == [3, 7, 11]
    libs = _parallel._blas_controllers()
    before = [lib.get_num_threads() for lib in libs]
    with _parallel.single_threaded_blas():
        with _parallel.single_threaded_blas():                   # nests
            assert all(lib.get_num_threads() == 1 for lib in libs)
        assert all(lib.get_num_threads() == 1 for lib in libs)
    assert [lib.get_num_threads() for lib in libs] == before
    with pytest.raises(ZeroDivisionError):
        _parallel.run_tasks([(np.reciprocal, 1), (int.__truediv__, 1, 0)])  # errors surface
    a = _parallel.scratch("test", (3, 4), np.float32)
    assert a.shape == (3, 4) and _parallel.scratch("test", (2, 2), np.float32).base is a.base
