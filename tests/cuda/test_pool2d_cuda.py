"""CUDA pooling kernels against the NumPy reference (simulator in CI, a real GPU when present).

Shapes are small (the simulator runs one Python thread per CUDA thread) but deliberately not
multiples of the launch shapes: odd heights and widths, batch 1, planes that do not fill a
block.
"""

import numpy as np
import pytest

import nnkern
import nnkern.functional as F
from nnkern.backend import device_of, to_host
from nnkern.ops.pool2d import ref
from nnkern.testing import assert_close

pytestmark = pytest.mark.cuda

NAN, INF = np.nan, np.inf

# (x shape, kernel_size, stride, padding, dilation, ceil_mode)
MAX_CASES = [
    ((2, 2, 8, 8), 2, None, 0, 1, False),
    ((2, 3, 9, 7), 3, 2, 1, 1, False),            # overlapping windows, padding, odd sizes
    ((2, 3, 9, 7), 3, 2, 1, 1, True),
    ((1, 2, 10, 11), (3, 2), (2, 1), (1, 0), (2, 3), False),  # non-square, dilation
    ((1, 2, 10, 11), (2, 3), (3, 2), (1, 1), (2, 1), True),
    ((3, 1, 5, 6), 1, 1, 0, 1, False),
    ((1, 1, 7, 7), 4, 3, 2, 2, True),
]
# (x shape, kernel_size, stride, padding, ceil_mode, count_include_pad)
AVG_CASES = [
    ((2, 2, 8, 8), 2, None, 0, False, True),
    ((2, 3, 9, 7), 3, 2, 1, False, True),
    ((2, 3, 9, 7), 3, 2, 1, False, False),
    ((2, 3, 9, 7), 3, 2, 1, True, True),
    ((2, 3, 9, 7), 3, 2, 1, True, False),
    ((1, 2, 10, 11), (3, 2), (2, 1), (1, 0), True, False),
    ((1, 2, 11, 10), (2, 4), (3, 3), (1, 2), True, True),
    ((3, 1, 5, 6), 1, 1, 0, False, True),
]


def dev(a):
    return nnkern.to_device(a, "cuda")


def shuffled_linspace(rng, shape):
    """Distinct values: no ties."""
    return rng.permutation(np.linspace(-1.0, 1.0, int(np.prod(shape)))).reshape(shape)


def plane(a, dtype=np.float64):
    return np.asarray(a, dtype).reshape(1, 1, *np.shape(a))


# ------------------------------------------------------------------ cuda vs reference

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", MAX_CASES)
def test_max_pool_matches_reference(rng, case, dtype):
    shape, k, s, p, d, ceil = case
    x = shuffled_linspace(rng, shape).astype(dtype)
    y, argmax = F.max_pool2d_forward(dev(x), k, s, p, d, ceil)
    assert device_of(y) == "cuda" and device_of(argmax) == "cuda"
    assert y.dtype == dtype and argmax.dtype == np.int32
    y_ref, argmax_ref = ref.max_pool2d_forward(x.astype(np.float64), k, s, p, d, ceil)
    np.testing.assert_array_equal(to_host(y), y_ref.astype(dtype))  # a max is exact
    np.testing.assert_array_equal(to_host(argmax), argmax_ref)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = F.max_pool2d_backward(dev(dy), argmax, shape)
    assert device_of(dx) == "cuda" and dx.dtype == dtype and dx.shape == shape
    assert_close(to_host(dx), ref.max_pool2d_backward(dy.astype(np.float64), argmax_ref, shape))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", AVG_CASES)
def test_avg_pool_matches_reference(rng, case, dtype):
    shape, k, s, p, ceil, cip = case
    x = rng.standard_normal(shape).astype(dtype)
    y = F.avg_pool2d_forward(dev(x), k, s, p, ceil, cip)
    assert device_of(y) == "cuda" and y.dtype == dtype
    assert_close(to_host(y), ref.avg_pool2d_forward(x.astype(np.float64), k, s, p, ceil, cip))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = F.avg_pool2d_backward(dev(dy), shape, k, s, p, ceil, cip)
    assert device_of(dx) == "cuda" and dx.dtype == dtype
    assert_close(to_host(dx),
                 ref.avg_pool2d_backward(dy.astype(np.float64), shape, k, s, p, ceil, cip))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (1, 2, 17, 16), (3, 70, 2, 1)])
def test_global_avg_pool_matches_reference(rng, shape, dtype):
    # (1, 2, 17, 16): 128 threads per plane; (3, 70, 2, 1): 1 thread per plane, 210 planes
    x = rng.standard_normal(shape).astype(dtype)
    y = F.global_avg_pool2d_forward(dev(x))
    assert y.shape == shape[:2] and y.dtype == dtype
    assert_close(to_host(y), ref.global_avg_pool2d_forward(x.astype(np.float64)))
    dy = rng.standard_normal(shape[:2]).astype(dtype)
    dx = F.global_avg_pool2d_backward(dev(dy), shape)
    assert dx.shape == shape and dx.dtype == dtype
    assert_close(to_host(dx), ref.global_avg_pool2d_backward(dy.astype(np.float64), shape))


@pytest.fixture
def one_block_of_planes(monkeypatch):
    """Cap the launches at one block along the planes (CUDA's cap is 65535 blocks), so that
    every kernel's grid-stride loop over planes runs several trips."""
    from nnkern.ops.pool2d import cuda as pool_cuda  # imports numba.cuda: only in cuda runs
    monkeypatch.setattr(pool_cuda, "MAX_GRID_YZ", 1)
    pool_cuda._grid_3d.cache_clear()
    pool_cuda._global_launch.cache_clear()
    yield
    pool_cuda._grid_3d.cache_clear()
    pool_cuda._global_launch.cache_clear()


def test_grid_stride_loops_over_planes(rng, one_block_of_planes):
    # rounded values: plenty of ties; 300 planes of 3x3, more than one block holds
    x = rng.standard_normal((60, 5, 3, 3)).round(1).astype(np.float32)
    y, argmax = F.max_pool2d_forward(dev(x), 2, 1, 1)
    y_ref, argmax_ref = ref.max_pool2d_forward(x, 2, 1, 1)
    np.testing.assert_array_equal(to_host(y), y_ref)
    np.testing.assert_array_equal(to_host(argmax), argmax_ref)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    assert_close(to_host(F.max_pool2d_backward(dev(dy), argmax, x.shape)),
                 ref.max_pool2d_backward(dy, argmax_ref, x.shape))
    assert_close(to_host(F.avg_pool2d_forward(dev(x), 2, 1, 1)),
                 ref.avg_pool2d_forward(x, 2, 1, 1))
    assert_close(to_host(F.avg_pool2d_backward(dev(dy), x.shape, 2, 1, 1)),
                 ref.avg_pool2d_backward(dy, x.shape, 2, 1, 1))
    assert_close(to_host(F.global_avg_pool2d_forward(dev(x))), ref.global_avg_pool2d_forward(x))
    g = rng.standard_normal((60, 5)).astype(np.float32)
    assert_close(to_host(F.global_avg_pool2d_backward(dev(g), x.shape)),
                 ref.global_avg_pool2d_backward(g, x.shape))


# ------------------------------------------------------------------ ties, NaN, -inf

def test_max_pool_ties_go_to_the_first_maximum():
    y, argmax = F.max_pool2d_forward(dev(plane([[1, 3, 0, 0], [3, 2, 0, 0]])), 2)
    np.testing.assert_array_equal(to_host(y)[0, 0], [[3, 0]])
    np.testing.assert_array_equal(to_host(argmax)[0, 0], [[1, 2]])
    # padding never wins, even over smaller values: the first real tap does
    y, argmax = F.max_pool2d_forward(dev(plane(-np.ones((3, 3)))), 2, 2, 1)
    np.testing.assert_array_equal(to_host(y)[0, 0], -np.ones((2, 2)))
    np.testing.assert_array_equal(to_host(argmax)[0, 0], [[0, 1], [3, 4]])
    # all -inf: y is -inf and argmax the first real tap (as PyTorch)
    y, argmax = F.max_pool2d_forward(dev(plane(np.full((3, 3), -INF))), 2, 2, 1)
    np.testing.assert_array_equal(to_host(y)[0, 0], np.full((2, 2), -INF))
    np.testing.assert_array_equal(to_host(argmax)[0, 0], [[0, 1], [3, 4]])
    # overlapping windows pick the same element: its gradients add up
    y, argmax = F.max_pool2d_forward(dev(plane([[1, 5, 5]])), (1, 2), 1)
    np.testing.assert_array_equal(to_host(argmax)[0, 0], [[1, 1]])
    dx = F.max_pool2d_backward(dev(plane([[1.0, 2.0]])), argmax, (1, 1, 1, 3))
    np.testing.assert_array_equal(to_host(dx)[0, 0], [[0.0, 3.0, 0.0]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_nan_propagates_and_the_last_nan_wins(dtype):
    x = plane([[1, NAN, 3], [NAN, 2, 5], [1, 9, 1]], dtype)
    y, argmax = F.max_pool2d_forward(dev(x), 3)
    assert np.isnan(to_host(y)[0, 0, 0, 0]) and to_host(argmax)[0, 0, 0, 0] == 3
    y, argmax = F.max_pool2d_forward(dev(x), 2, 1)
    np.testing.assert_array_equal(to_host(argmax)[0, 0], [[3, 1], [3, 7]])
    assert np.isnan(to_host(y)[0, 0]).tolist() == [[True, True], [True, False]]
    dx = F.max_pool2d_backward(dev(np.ones((1, 1, 2, 2), dtype)), argmax, x.shape)
    np.testing.assert_array_equal(to_host(dx)[0, 0], [[0, 1, 0], [2, 0, 0], [0, 1, 0]])


def test_max_pool_window_that_misses_the_input():
    # dilation 3 on a 2x2 input with padding 1: the taps (-1, 2) miss the input entirely
    y, argmax = F.max_pool2d_forward(dev(np.ones((1, 1, 2, 2))), 2, 1, 1, 3)
    np.testing.assert_array_equal(to_host(y), np.full((1, 1, 1, 1), -INF))
    np.testing.assert_array_equal(to_host(argmax), np.full((1, 1, 1, 1), -1))
    dx = F.max_pool2d_backward(dev(np.ones((1, 1, 1, 1))), argmax, (1, 1, 2, 2))
    np.testing.assert_array_equal(to_host(dx), np.zeros((1, 1, 2, 2)))


def test_max_pool_backward_gathers_for_any_argmax_in_the_plane(rng):
    """The backward gets no window geometry: it finds the outputs pointing at each input from
    argmax itself, so any index inside the plane (even outside its window, or from another
    geometry) gets its gradient, exactly as the reference's scatter. Indices outside the
    plane are ignored (cpu.py raises; checking here would cost a device-to-host copy)."""
    shape = (2, 3, 6, 5)
    dy = rng.standard_normal((2, 3, 2, 3))
    argmax = rng.integers(0, 30, dy.shape).astype(np.int32)
    argmax[0, 0, 1, 2] = -1
    dx = F.max_pool2d_backward(dev(dy), dev(argmax), shape)
    assert_close(to_host(dx), ref.max_pool2d_backward(dy, argmax, shape))
    bad = argmax.copy()
    bad[1, 2, 0, 0] = 30
    bad[0, 1, 1, 1] = -7
    dx = F.max_pool2d_backward(dev(dy), dev(bad), shape)
    keep = argmax.copy()
    keep[1, 2, 0, 0] = keep[0, 1, 1, 1] = -1
    assert_close(to_host(dx), ref.max_pool2d_backward(dy, keep, shape))


# ------------------------------------------------------------------ determinism, out=

def test_two_runs_give_identical_bits(rng):
    x = rng.standard_normal((2, 3, 9, 7)).round(1).astype(np.float32)  # ties: repeated targets
    dy = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    dy_global = rng.standard_normal((2, 3)).astype(np.float32)

    def run():
        y, argmax = F.max_pool2d_forward(dev(x), 3, 2, 1, ceil_mode=True)
        return [to_host(a) for a in (
            y, argmax, F.max_pool2d_backward(dev(dy), argmax, x.shape),
            F.avg_pool2d_forward(dev(x), 3, 2, 1, True, False),
            F.avg_pool2d_backward(dev(dy), x.shape, 3, 2, 1, True, False),
            F.global_avg_pool2d_forward(dev(x)),
            F.global_avg_pool2d_backward(dev(dy_global), x.shape))]

    for a, b in zip(run(), run()):
        assert a.tobytes() == b.tobytes()


def test_out_buffers_are_used(rng):
    x = dev(rng.standard_normal((2, 3, 6, 6)).astype(np.float32))
    y = dev(np.empty((2, 3, 3, 3), np.float32))
    argmax = dev(np.empty((2, 3, 3, 3), np.int32))
    got = F.max_pool2d_forward(x, 2, out=(y, argmax))
    assert got[0] is y and got[1] is argmax
    np.testing.assert_array_equal(to_host(y), ref.max_pool2d_forward(to_host(x), 2)[0])
    dx = dev(np.full((2, 3, 6, 6), 7.0, np.float32))  # stale values must be overwritten
    ones = dev(np.ones((2, 3, 3, 3), np.float32))
    assert F.max_pool2d_backward(ones, argmax, x.shape, out=dx) is dx
    assert to_host(dx).sum() == 54
    y_only = dev(np.empty((2, 3, 3, 3), np.float32))
    assert F.max_pool2d_forward(x, 2, out=(y_only, None))[0] is y_only
    argmax_only = dev(np.zeros((2, 3, 3, 3), np.int32))
    assert F.max_pool2d_forward(x, 2, out=(None, argmax_only))[1] is argmax_only
    np.testing.assert_array_equal(to_host(argmax_only), to_host(argmax))
    assert F.avg_pool2d_forward(x, 2, out=y) is y
    assert F.avg_pool2d_backward(ones, x.shape, 2, out=dx) is dx
    np.testing.assert_allclose(to_host(dx), 0.25)
    g = dev(np.empty((2, 3), np.float32))
    assert F.global_avg_pool2d_forward(x, out=g) is g
    assert F.global_avg_pool2d_backward(g, x.shape, out=dx) is dx
    assert_close(to_host(dx), np.broadcast_to(to_host(x).mean(axis=(2, 3))[..., None, None] / 36,
                                              x.shape))


# ------------------------------------------------------------------ bad input

def test_bad_input_on_the_device_is_rejected():
    x = np.ones((2, 3, 6, 6), np.float32)
    xd = dev(x)
    with pytest.raises(ValueError, match=r"x on cuda; out on cpu"):
        F.avg_pool2d_forward(xd, 2, out=np.empty((2, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"x on cuda; out argmax on cpu"):
        F.max_pool2d_forward(xd, 2, out=(None, np.empty((2, 3, 3, 3), np.int32)))
    y, argmax = F.max_pool2d_forward(xd, 2)
    with pytest.raises(ValueError, match=r"dy on cuda; argmax on cpu"):
        F.max_pool2d_backward(y, to_host(argmax), x.shape)
    with pytest.raises(ValueError, match=r"dy on cpu; out on cuda"):
        F.global_avg_pool2d_backward(np.ones((2, 3), np.float32), x.shape, out=xd)
    with pytest.raises(ValueError, match=r"max_pool2d_forward: x must be 4-D"):
        F.max_pool2d_forward(dev(x[0]), 2)
    with pytest.raises(TypeError, match="must have dtype float32 or float64, got int64"):
        F.avg_pool2d_forward(dev(np.ones((2, 3, 6, 6), np.int64)), 2)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        F.max_pool2d_forward(dev(np.ones((2, 3, 6, 12), np.float32))[..., ::2], 2)
    with pytest.raises(TypeError, match="argmax must have dtype int32"):
        F.max_pool2d_backward(y, dev(to_host(argmax).astype(np.int64)), x.shape)
    with pytest.raises(TypeError, match="out has dtype float64 but the other arguments are "
                                        "float32"):
        F.avg_pool2d_forward(xd, 2, out=dev(np.empty((2, 3, 3, 3))))
    with pytest.raises(ValueError, match=r"avg_pool2d_backward: dy must have shape"):
        F.avg_pool2d_backward(y, x.shape, 3)
