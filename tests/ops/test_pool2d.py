import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import nnkern._jit as jit
import nnkern.functional as F
from nnkern.ops.pool2d import ref
from nnkern.testing import assert_close, check_gradients, upstream

NAN, INF = np.nan, np.inf

# (x shape, kernel_size, stride, padding, dilation, ceil_mode)
MAX_CASES = [
    ((2, 3, 8, 8), 2, None, 0, 1, False),
    ((2, 3, 9, 7), 3, 2, 1, 1, False),            # overlapping windows, padding, odd sizes
    ((2, 3, 9, 7), 3, 2, 1, 1, True),
    ((1, 2, 10, 11), (3, 2), (2, 1), (1, 0), (2, 3), False),  # non-square, dilation
    ((1, 2, 10, 11), (2, 3), (3, 2), (1, 1), (2, 1), True),
    ((3, 1, 5, 6), 1, 1, 0, 1, False),
    ((1, 1, 7, 7), 4, 3, 2, 2, True),
    ((40, 20, 13, 12), 3, 2, 1, 1, True),        # big enough to run in parallel
]
# (x shape, kernel_size, stride, padding, ceil_mode, count_include_pad)
AVG_CASES = [
    ((2, 3, 8, 8), 2, None, 0, False, True),
    ((2, 3, 9, 7), 3, 2, 1, False, True),
    ((2, 3, 9, 7), 3, 2, 1, False, False),
    ((2, 3, 9, 7), 3, 2, 1, True, True),
    ((2, 3, 9, 7), 3, 2, 1, True, False),
    ((1, 2, 10, 11), (3, 2), (2, 1), (1, 0), True, False),
    ((1, 2, 11, 10), (2, 4), (3, 3), (1, 2), True, True),
    ((3, 1, 5, 6), 1, 1, 0, False, True),
    ((40, 20, 13, 12), 3, 2, 1, True, False),
]


def shuffled_linspace(rng, shape):
    """Distinct values spaced far apart: no ties, no max flips under finite differences."""
    return rng.permutation(np.linspace(-1.0, 1.0, int(np.prod(shape)))).reshape(shape)


def plane(a):
    return np.asarray(a, np.float64).reshape(1, 1, *np.shape(a))


# ------------------------------------------------------------------ references, by hand

def test_reference_max_pool_hand_computed():
    x = plane(np.arange(1, 17).reshape(4, 4))
    y, argmax = ref.max_pool2d_forward(x, 2)
    np.testing.assert_array_equal(y[0, 0], [[6, 8], [14, 16]])
    np.testing.assert_array_equal(argmax[0, 0], [[5, 7], [13, 15]])
    assert argmax.dtype == np.int32
    # padding 1, 3x3 stride 2 on 3x3: windows rows/cols [-1, 2) and [1, 4)
    x = plane([[3, 1, 2], [0, 5, 4], [7, 6, -8]])
    y, argmax = ref.max_pool2d_forward(x, 3, 2, 1)
    np.testing.assert_array_equal(y[0, 0], [[5, 5], [7, 6]])
    np.testing.assert_array_equal(argmax[0, 0], [[4, 4], [6, 7]])
    # dilation 2: taps (0, 0), (0, 2), (2, 0), (2, 2) for the first output
    x = plane(np.arange(16).reshape(4, 4) % 7)
    y, argmax = ref.max_pool2d_forward(x, 2, 1, 0, 2)
    np.testing.assert_array_equal(y[0, 0], [[3, 4], [6, 6]])
    np.testing.assert_array_equal(argmax[0, 0], [[10, 11], [6, 13]])
    dx = ref.max_pool2d_backward(plane([[1.0, 2.0], [3.0, 4.0]]), argmax, x.shape)
    np.testing.assert_array_equal(dx[0, 0].ravel()[[6, 10, 11, 13]], [3.0, 1.0, 2.0, 4.0])
    assert dx.sum() == 10.0


def test_reference_avg_pool_hand_computed():
    ones = np.ones((1, 1, 3, 3))
    np.testing.assert_allclose(ref.avg_pool2d_forward(ones, 2, 2, 1)[0, 0],
                               [[0.25, 0.5], [0.5, 1.0]])
    np.testing.assert_allclose(ref.avg_pool2d_forward(ones, 2, 2, 1, count_include_pad=False),
                               np.ones((1, 1, 2, 2)))
    x = plane(np.arange(1, 10).reshape(3, 3))
    # ceil mode: the last windows hang over the edge and are clipped
    np.testing.assert_allclose(ref.avg_pool2d_forward(x, 2, ceil_mode=True)[0, 0],
                               [[3.0, 4.5], [7.5, 9.0]])
    # 4x4, k=3, s=2, p=1, ceil: windows [-1, 2), [1, 4), [3, 6); the last one is clipped to
    # the padded input [-1, 5) -> 2 rows (count_include_pad) or to the input -> 1 row.
    ones = np.ones((1, 1, 4, 4))
    real, padded = np.array([2.0, 3.0, 1.0]), np.array([3.0, 3.0, 2.0])
    y = ref.avg_pool2d_forward(ones, 3, 2, 1, ceil_mode=True)
    np.testing.assert_allclose(y[0, 0], np.outer(real / padded, real / padded))
    y = ref.avg_pool2d_forward(ones, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    np.testing.assert_allclose(y[0, 0], np.ones((3, 3)))
    dx = ref.avg_pool2d_backward(np.ones((1, 1, 3, 3)), (1, 1, 4, 4), 3, 2, 1, True, True)
    col = np.array([1 / 3, 1 / 3 + 1 / 3, 1 / 3, 1 / 3 + 1 / 2])  # row/column factor sums
    np.testing.assert_allclose(dx[0, 0], np.outer(col, col))


def test_reference_global_avg_pool_hand_computed():
    x = np.arange(24, dtype=np.float64).reshape(2, 3, 2, 2)
    np.testing.assert_allclose(ref.global_avg_pool2d_forward(x), x.reshape(2, 3, 4).mean(-1))
    dx = ref.global_avg_pool2d_backward(np.array([[4.0, 8.0, 0.0], [1.0, 2.0, 3.0]]),
                                        (2, 3, 2, 2))
    np.testing.assert_allclose(dx[0, 1], np.full((2, 2), 2.0))
    np.testing.assert_allclose(dx[1, 2], np.full((2, 2), 0.75))


# ------------------------------------------------------------------ cpu vs reference

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", MAX_CASES)
def test_max_pool_matches_reference(rng, variant, case, dtype):
    shape, k, s, p, d, ceil = case
    x = shuffled_linspace(rng, shape).astype(dtype)
    y, argmax = F.max_pool2d_forward(x, k, s, p, d, ceil)
    y_ref, argmax_ref = ref.max_pool2d_forward(x.astype(np.float64), k, s, p, d, ceil)
    assert y.dtype == dtype and argmax.dtype == np.int32
    np.testing.assert_array_equal(y, y_ref.astype(dtype))  # a max is exact
    np.testing.assert_array_equal(argmax, argmax_ref)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = F.max_pool2d_backward(dy, argmax, shape)
    assert dx.dtype == dtype
    assert_close(dx, ref.max_pool2d_backward(dy.astype(np.float64), argmax, shape))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", AVG_CASES)
def test_avg_pool_matches_reference(rng, variant, case, dtype):
    shape, k, s, p, ceil, cip = case
    x = rng.standard_normal(shape).astype(dtype)
    y = F.avg_pool2d_forward(x, k, s, p, ceil, cip)
    assert y.dtype == dtype
    assert_close(y, ref.avg_pool2d_forward(x.astype(np.float64), k, s, p, ceil, cip))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = F.avg_pool2d_backward(dy, shape, k, s, p, ceil, cip)
    assert dx.dtype == dtype
    assert_close(dx, ref.avg_pool2d_backward(dy.astype(np.float64), shape, k, s, p, ceil, cip))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (1, 4, 32, 33), (64, 40, 4, 4)])
def test_global_avg_pool_matches_reference(rng, variant, shape, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    y = F.global_avg_pool2d_forward(x)
    assert y.shape == shape[:2] and y.dtype == dtype
    assert_close(y, ref.global_avg_pool2d_forward(x.astype(np.float64)))
    dy = rng.standard_normal(shape[:2]).astype(dtype)
    dx = F.global_avg_pool2d_backward(dy, shape)
    assert dx.dtype == dtype
    assert_close(dx, ref.global_avg_pool2d_backward(dy.astype(np.float64), shape))


def test_out_buffers_are_used(rng):
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    y, argmax = np.empty((2, 3, 3, 3), np.float32), np.empty((2, 3, 3, 3), np.int32)
    got = F.max_pool2d_forward(x, 2, out=(y, argmax))
    assert got[0] is y and got[1] is argmax
    np.testing.assert_array_equal(y, ref.max_pool2d_forward(x, 2)[0])
    dx = np.full_like(x, 7.0)  # stale values must be overwritten
    assert F.max_pool2d_backward(np.ones_like(y), argmax, x.shape, out=dx) is dx
    assert dx.sum() == y.size
    y_only = np.empty_like(y)
    assert F.max_pool2d_forward(x, 2, out=(y_only, None))[0] is y_only
    assert F.avg_pool2d_forward(x, 2, out=y) is y
    assert F.avg_pool2d_backward(np.ones_like(y), x.shape, 2, out=dx) is dx
    np.testing.assert_allclose(dx, 0.25)
    g = np.empty((2, 3), np.float32)
    assert F.global_avg_pool2d_forward(x, out=g) is g
    assert F.global_avg_pool2d_backward(g, x.shape, out=dx) is dx


# ------------------------------------------------------------------ ties, NaN, -inf

@pytest.mark.parametrize("module", [ref, F], ids=["ref", "cpu"])
def test_max_pool_ties_go_to_the_first_maximum(module):
    x = plane([[1, 3, 0, 0], [3, 2, 0, 0]])
    y, argmax = module.max_pool2d_forward(x, 2)
    np.testing.assert_array_equal(y[0, 0], [[3, 0]])
    np.testing.assert_array_equal(argmax[0, 0], [[1, 2]])  # first in row-major window order
    # padding never wins, even over equal or smaller values: the first real tap does
    y, argmax = module.max_pool2d_forward(plane(-np.ones((3, 3))), 2, 2, 1)
    np.testing.assert_array_equal(y[0, 0], -np.ones((2, 2)))
    np.testing.assert_array_equal(argmax[0, 0], [[0, 1], [3, 4]])
    # all -inf: y is -inf and argmax the first real tap (as PyTorch)
    y, argmax = module.max_pool2d_forward(plane(np.full((3, 3), -INF)), 2, 2, 1)
    np.testing.assert_array_equal(y[0, 0], np.full((2, 2), -INF))
    np.testing.assert_array_equal(argmax[0, 0], [[0, 1], [3, 4]])
    # a tie under overlapping windows: both windows pick index 1 and its gradients add up
    y, argmax = module.max_pool2d_forward(plane([[1, 5, 5]]), (1, 2), 1)
    np.testing.assert_array_equal(argmax[0, 0], [[1, 1]])
    dx = module.max_pool2d_backward(plane([[1.0, 2.0]]), argmax, (1, 1, 1, 3))
    np.testing.assert_array_equal(dx[0, 0], [[0.0, 3.0, 0.0]])


@pytest.mark.parametrize("module", [ref, F], ids=["ref", "cpu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_nan_propagates_and_the_last_nan_wins(module, dtype):
    # PyTorch CPU's `val > maxval || isnan(val)`: NaN beats numbers, a later NaN an earlier one
    x = plane([[1, NAN, 3], [NAN, 2, 5], [1, 9, 1]]).astype(dtype)
    y, argmax = module.max_pool2d_forward(x, 3)
    assert np.isnan(y[0, 0, 0, 0]) and argmax[0, 0, 0, 0] == 3
    y, argmax = module.max_pool2d_forward(x, 2, 1)
    np.testing.assert_array_equal(argmax[0, 0], [[3, 1], [3, 7]])
    assert np.isnan(y[0, 0]).tolist() == [[True, True], [True, False]]
    dx = module.max_pool2d_backward(np.ones((1, 1, 2, 2), dtype), argmax, x.shape)
    np.testing.assert_array_equal(dx[0, 0], [[0, 1, 0], [2, 0, 0], [0, 1, 0]])


@pytest.mark.parametrize("module", [ref, F], ids=["ref", "cpu"])
def test_max_pool_window_that_misses_the_input(module):
    # dilation 3 on a 2x2 input with padding 1: the taps (-1, 2) miss the input entirely
    y, argmax = module.max_pool2d_forward(np.ones((1, 1, 2, 2)), 2, 1, 1, 3)
    np.testing.assert_array_equal(y, np.full((1, 1, 1, 1), -INF))
    np.testing.assert_array_equal(argmax, np.full((1, 1, 1, 1), -1))
    dx = module.max_pool2d_backward(np.ones((1, 1, 1, 1)), argmax, (1, 1, 2, 2))
    np.testing.assert_array_equal(dx, np.zeros((1, 1, 2, 2)))


# ------------------------------------------------------------------ gradients

@pytest.mark.parametrize("module", [ref, F], ids=["ref", "cpu"])
@pytest.mark.parametrize("k, s, p, d, ceil", [(2, None, 0, 1, False), (3, 2, 1, 1, True),
                                              ((2, 3), (1, 2), (1, 1), (2, 1), False)])
def test_max_pool_gradients_finite_difference(rng, module, k, s, p, d, ceil):
    x = shuffled_linspace(rng, (2, 2, 5, 6))
    y, argmax = module.max_pool2d_forward(x, k, s, p, d, ceil)
    r = upstream(y.shape, rng)
    dx = module.max_pool2d_backward(r, argmax, x.shape)
    check_gradients(lambda: float(np.sum(module.max_pool2d_forward(x, k, s, p, d, ceil)[0] * r)),
                    {"x": x}, {"x": dx})


@pytest.mark.parametrize("module", [ref, F], ids=["ref", "cpu"])
@pytest.mark.parametrize("k, s, p, ceil, cip", [(2, None, 0, False, True), (3, 2, 1, True, True),
                                                (3, 2, 1, True, False),
                                                ((2, 3), (1, 2), (1, 1), False, False)])
def test_avg_pool_gradients_finite_difference(rng, module, k, s, p, ceil, cip):
    x = rng.standard_normal((2, 2, 5, 6))
    y = module.avg_pool2d_forward(x, k, s, p, ceil, cip)
    r = upstream(y.shape, rng)
    dx = module.avg_pool2d_backward(r, x.shape, k, s, p, ceil, cip)
    check_gradients(lambda: float(np.sum(module.avg_pool2d_forward(x, k, s, p, ceil, cip) * r)),
                    {"x": x}, {"x": dx})


@pytest.mark.parametrize("module", [ref, F], ids=["ref", "cpu"])
def test_global_avg_pool_gradients_finite_difference(rng, module):
    x = rng.standard_normal((2, 3, 4, 5))
    r = upstream((2, 3), rng)
    dx = module.global_avg_pool2d_backward(r, x.shape)
    check_gradients(lambda: float(np.sum(module.global_avg_pool2d_forward(x) * r)),
                    {"x": x}, {"x": dx})


# ------------------------------------------------------------------ property test

@st.composite
def pool_configs(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return dict(
        shape=(draw(st.integers(1, 3)), draw(st.integers(1, 3)),
               draw(st.integers(1, 10)), draw(st.integers(1, 10))),
        kernel_size=(kh, kw),
        stride=draw(st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4)))),
        padding=(draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))),
        dilation=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        ceil_mode=draw(st.booleans()),
        count_include_pad=draw(st.booleans()),
        parallel=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def _fits(shape, k, p, d):
    return all(shape[2 + a] + 2 * p[a] >= d[a] * (k[a] - 1) + 1 for a in range(2))


@settings(max_examples=40, deadline=None)
@given(pool_configs())
def test_random_configurations_match_reference(cfg):
    shape, k, s, p, d = (cfg[name] for name in ("shape", "kernel_size", "stride", "padding",
                                                "dilation"))
    ceil, cip = cfg["ceil_mode"], cfg["count_include_pad"]
    rng = np.random.default_rng(cfg["seed"])
    old = jit.PARALLEL_MIN_WORK
    jit.PARALLEL_MIN_WORK = 0 if cfg["parallel"] else 1 << 62
    try:
        if _fits(shape, k, p, d):
            x = rng.standard_normal(shape).round(1)  # rounded: plenty of ties
            y, argmax = F.max_pool2d_forward(x, k, s, p, d, ceil)
            y_ref, argmax_ref = ref.max_pool2d_forward(x, k, s, p, d, ceil)
            np.testing.assert_array_equal(y, y_ref)
            np.testing.assert_array_equal(argmax, argmax_ref)
            dy = rng.standard_normal(y.shape)
            assert_close(F.max_pool2d_backward(dy, argmax, shape),
                         ref.max_pool2d_backward(dy, argmax_ref, shape))
        assume(_fits(shape, k, p, (1, 1)))
        x = rng.standard_normal(shape)
        y = F.avg_pool2d_forward(x, k, s, p, ceil, cip)
        assert_close(y, ref.avg_pool2d_forward(x, k, s, p, ceil, cip))
        dy = rng.standard_normal(y.shape)
        assert_close(F.avg_pool2d_backward(dy, shape, k, s, p, ceil, cip),
                     ref.avg_pool2d_backward(dy, shape, k, s, p, ceil, cip))
    finally:
        jit.PARALLEL_MIN_WORK = old


# ------------------------------------------------------------------ bad input

def test_bad_pooling_input_is_rejected_with_a_clear_message():
    x = np.ones((2, 3, 6, 6), np.float32)
    with pytest.raises(ValueError, match=r"max_pool2d_forward: x must be 4-D \(N, C, H, W\), "
                                         r"got shape \(3, 6, 6\)"):
        F.max_pool2d_forward(x[0], 2)
    with pytest.raises(ValueError, match=r"avg_pool2d_forward: x must be 4-D"):
        F.avg_pool2d_forward(x[None], 2)
    with pytest.raises(ValueError, match=r"global_avg_pool2d_forward: x must be 4-D"):
        F.global_avg_pool2d_forward(x[0, 0])
    with pytest.raises(TypeError, match="must have dtype float32 or float64, got int64"):
        F.max_pool2d_forward(np.ones((2, 3, 6, 6), np.int64), 2)
    with pytest.raises(TypeError, match="must have dtype float32 or float64, got int32"):
        F.global_avg_pool2d_forward(np.ones((2, 3, 6, 6), np.int32))
    with pytest.raises(ValueError, match="must be C-contiguous"):
        F.avg_pool2d_forward(np.ones((2, 3, 6, 12), np.float32)[..., ::2], 2)
    with pytest.raises(ValueError, match="empty batch"):
        F.max_pool2d_forward(np.ones((0, 3, 6, 6), np.float32), 2)
    with pytest.raises(ValueError, match=r"kernel \(size 7, dilation 1, span 7\) is larger than "
                                         r"the padded input along H \(6 \+ 2\*0 = 6\)"):
        F.max_pool2d_forward(x, (7, 1))
    with pytest.raises(ValueError, match=r"span 7\) is larger than the padded input along W"):
        F.max_pool2d_forward(x, 4, dilation=(1, 2))
    with pytest.raises(ValueError, match="kernel_size must be >= 1, got 0"):
        F.max_pool2d_forward(x, 0)
    with pytest.raises(TypeError, match="kernel_size must be an int, got float 2.0"):
        F.avg_pool2d_forward(x, 2.0)
    with pytest.raises(ValueError, match=r"kernel_size must be an int or a pair \(h, w\)"):
        F.avg_pool2d_forward(x, (2, 2, 2))
    with pytest.raises(ValueError, match="stride must be >= 1, got 0"):
        F.max_pool2d_forward(x, 2, 0)
    with pytest.raises(ValueError, match="padding must be >= 0, got -1"):
        F.avg_pool2d_forward(x, 2, 1, -1)
    with pytest.raises(ValueError, match="dilation must be >= 1, got 0"):
        F.max_pool2d_forward(x, 2, dilation=0)
    with pytest.raises(ValueError, match=r"padding must be at most half the kernel size, i.e. "
                                         r"<= \(1, 1\) for kernel_size \(3, 3\), got padding "
                                         r"\(2, 2\)"):
        F.max_pool2d_forward(x, 3, padding=2)
    with pytest.raises(ValueError, match="padding must be at most half the kernel size"):
        F.avg_pool2d_forward(x, (4, 1), padding=(2, 1))
    with pytest.raises(TypeError, match="ceil_mode must be a bool, got int 1"):
        F.max_pool2d_forward(x, 2, ceil_mode=1)
    with pytest.raises(TypeError, match="count_include_pad must be a bool, got str"):
        F.avg_pool2d_forward(x, 2, count_include_pad="yes")
    with pytest.raises(ValueError, match=r"out y must have shape \(2, 3, 3, 3\)"):
        F.max_pool2d_forward(x, 2, out=(np.empty((2, 3, 2, 2), np.float32), None))
    with pytest.raises(TypeError, match=r"out argmax must have dtype int32 .*got int64"):
        F.max_pool2d_forward(x, 2, out=(None, np.empty((2, 3, 3, 3), np.int64)))
    with pytest.raises(TypeError, match="out has dtype float64 but the other arguments are "
                                        "float32"):
        F.avg_pool2d_forward(x, 2, out=np.empty((2, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"out must have shape \(2, 3\)"):
        F.global_avg_pool2d_forward(x, out=np.empty((2, 3, 1, 1), np.float32))


def test_bad_backward_input_is_rejected_with_a_clear_message():
    x = np.ones((2, 3, 6, 6), np.float32)
    y, argmax = F.max_pool2d_forward(x, 2)
    dy = np.ones_like(y)
    op = "max_pool2d_backward"
    with pytest.raises(TypeError, match=f"{op}: argmax must have dtype int32 .*got int64"):
        F.max_pool2d_backward(dy, argmax.astype(np.int64), x.shape)
    with pytest.raises(ValueError, match=r"argmax must have shape \(2, 3, 3, 3\) \(the shape "
                                         r"of dy\), got \(2, 3, 3, 2\)"):
        F.max_pool2d_backward(dy, np.ascontiguousarray(argmax[..., :2]), x.shape)
    with pytest.raises(TypeError, match=f"{op}: argmax must be an array, got list"):
        F.max_pool2d_backward(dy, argmax.tolist(), x.shape)
    with pytest.raises(ValueError, match="argmax must be C-contiguous"):
        F.max_pool2d_backward(dy, np.swapaxes(np.swapaxes(argmax, 2, 3).copy(), 2, 3), x.shape)
    with pytest.raises(ValueError, match=r"dy has \(N, C\) = \(2, 3\) but x_shape has \(2, 4\)"):
        F.max_pool2d_backward(dy, argmax, (2, 4, 6, 6))
    with pytest.raises(ValueError, match=r"argmax of plane \(n, c\) = \(1, 2\) holds indices "
                                         r"outside \[0, H\*W = 36\)"):
        bad = argmax.copy()
        bad[1, 2, 0, 0] = 36
        F.max_pool2d_backward(dy, bad, x.shape)
    with pytest.raises(ValueError, match="holds indices outside"):
        bad = argmax.copy()
        bad[0, 0, 1, 1] = -5
        F.max_pool2d_backward(dy, bad, x.shape)
    with pytest.raises(ValueError, match=f"{op}: dy must be 4-D"):
        F.max_pool2d_backward(dy[0], argmax[0], x.shape)
    with pytest.raises(TypeError, match=r"x_shape must be a tuple of 4 ints \(N, C, H, W\)"):
        F.max_pool2d_backward(dy, argmax, (2, 3, 6))
    with pytest.raises(TypeError, match="x_shape must be a tuple of 4 ints"):
        F.max_pool2d_backward(dy, argmax, x)
    with pytest.raises(ValueError, match=r"x_shape has an empty batch: \(0, 3, 6, 6\)"):
        F.avg_pool2d_backward(dy, (0, 3, 6, 6), 2)
    with pytest.raises(ValueError, match=r"avg_pool2d_backward: dy must have shape "
                                         r"\(2, 3, 2, 2\) \(\(N, C, OH, OW\) of the forward with "
                                         r"these pooling parameters\), got \(2, 3, 3, 3\)"):
        F.avg_pool2d_backward(dy, x.shape, 3)
    with pytest.raises(ValueError, match=r"avg_pool2d_backward: dy must have shape"):
        F.avg_pool2d_backward(dy, (2, 3, 6, 7), 2, ceil_mode=True)
    with pytest.raises(TypeError, match="must have dtype float32 or float64, got int64"):
        F.avg_pool2d_backward(np.ones((2, 3, 3, 3), np.int64), x.shape, 2)
    with pytest.raises(ValueError, match="padding must be at most half the kernel size"):
        F.avg_pool2d_backward(dy, x.shape, 2, 2, 2)
    with pytest.raises(ValueError, match=r"global_avg_pool2d_backward: dy must have shape "
                                         r"\(2, 3\)"):
        F.global_avg_pool2d_backward(np.ones((3, 2), np.float32), x.shape)
    with pytest.raises(ValueError, match=r"dy must be 2-D \(N, C\)"):
        F.global_avg_pool2d_backward(dy, x.shape)
    with pytest.raises(ValueError, match=r"out must have shape \(2, 3, 6, 6\)"):
        F.max_pool2d_backward(dy, argmax, x.shape, out=np.empty((2, 3, 6, 5), np.float32))


def test_ceil_mode_accepts_a_span_one_stride_past_the_input():
    """PyTorch: a 6x6 input, kernel 3, stride 3, dilation (1, 3), ceil_mode -> 2x1 output
    (the window's span 7 exceeds the input, but ceil mode still places one window)."""
    x = np.arange(36, dtype=np.float64).reshape(1, 1, 6, 6)
    y, argmax = F.max_pool2d_forward(x, 3, 3, 0, (1, 3), ceil_mode=True)
    assert y.shape == (1, 1, 2, 1)
    np.testing.assert_array_equal(y, ref.max_pool2d_forward(x, 3, 3, 0, (1, 3), True)[0])
