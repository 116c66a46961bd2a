"""The 2x2 / stride-2 pooling kernels against the reference and the general kernels.

Ties, NaNs and signed zeros must give the general kernel's argmax (the first maximum in
row-major window order; a NaN wins, a later NaN over an earlier one), for narrow rows (the
two-pass form) and wide rows alike; the backward (a scatter) must accept any argmax inside the
plane, e.g. from a 3x3 window with the same output size.
"""

import numpy as np
import pytest

import nnkern.functional as F
from nnkern.ops.pool2d import cpu, ref
from nnkern.testing import assert_close

# narrow rows (OW < 32: two passes), wide rows (OW >= 32), odd H and W (a row and a column in
# no window), a batch of one plane
SHAPES = [(2, 3, 8, 8), (1, 2, 6, 70), (2, 2, 5, 7), (1, 1, 2, 2), (3, 4, 9, 65)]


def tricky(rng, shape, dtype):
    """Random values with ties (a coarse grid, many exact zeros as after a ReLU), NaNs and
    signed zeros spread over every window position."""
    x = np.round(rng.standard_normal(shape) * 2) / 2
    x = np.maximum(x, 0) * (rng.random(shape) < 0.7) - 0.0 * (rng.random(shape) < 0.5)
    x[rng.random(shape) < 0.03] = np.nan
    return x.astype(dtype)


def general_max(x):
    """The general kernel (what the 2x2 one replaces), called directly."""
    n, c, h, w = x.shape
    y = np.empty((n, c, h // 2, w // 2), x.dtype)
    argmax = np.empty(y.shape, np.int32)
    cpu._max_pool2d_fwd_kernel.serial(x.reshape(n * c, -1), cpu._planes(y), cpu._planes(argmax),
                                      2, 2, 2, 2, 0, 0, 1, 1, w)
    return y, argmax


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_max_pool_2x2_matches_the_general_kernel_and_the_reference(rng, variant, shape, dtype):
    x = tricky(rng, shape, dtype)
    y, argmax = F.max_pool2d_forward(x, 2)
    y_gen, argmax_gen = general_max(x)
    np.testing.assert_array_equal(argmax, argmax_gen)
    np.testing.assert_array_equal(y, y_gen)  # NaNs in the same places
    np.testing.assert_array_equal(np.signbit(y), np.signbit(y_gen))
    y_ref, argmax_ref = ref.max_pool2d_forward(x.astype(np.float64), 2)
    np.testing.assert_array_equal(argmax, argmax_ref)
    np.testing.assert_array_equal(y, y_ref.astype(dtype))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = F.max_pool2d_backward(dy, argmax, x.shape)
    np.testing.assert_array_equal(dx, ref.max_pool2d_backward(dy, argmax, x.shape))


def test_max_pool_2x2_tie_and_nan_orders_by_hand():
    # windows (row-major a b / c d): ties between b and c go to b; a NaN at a and d -> d
    x = np.array([[[[0., 1.], [1., 0.]]], [[[np.nan, 0.], [0., np.nan]]],
                  [[[2., 2.], [2., 2.]]], [[[-0., 0.], [0., -0.]]]], np.float32)
    y, argmax = F.max_pool2d_forward(x, 2)
    np.testing.assert_array_equal(argmax.ravel(), [1, 3, 0, 0])
    np.testing.assert_array_equal(y.ravel(), [1, np.nan, 2, 0])
    assert np.signbit(y.ravel()[3])  # -0.0 came first and +0.0 is not greater


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 2, 6, 70)])
def test_max_pool_backward_with_other_windows_of_the_same_size(rng, variant, shape):
    # a 3x3 window with stride 2 and padding 1 has the same output size as 2x2/2 for even
    # sizes: its argmax may point outside the 2x2 window, and two outputs may share one input
    x = rng.standard_normal(shape).astype(np.float32)
    y, argmax = F.max_pool2d_forward(x, 3, 2, 1)
    assert y.shape[2:] == (shape[2] // 2, shape[3] // 2)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_array_equal(F.max_pool2d_backward(dy, argmax, x.shape),
                                  ref.max_pool2d_backward(dy, argmax, x.shape))
    bad = argmax.copy()
    bad[0, 0, 0, 0] = shape[2] * shape[3]  # outside the plane: still the clear error
    with pytest.raises(ValueError, match="holds indices outside"):
        F.max_pool2d_backward(dy, bad, x.shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_avg_pool_2x2_matches_the_general_kernels(rng, variant, shape, dtype):
    """float32: the same bits (four float32 values add exactly in float64, in any order);
    float64: up to rounding (fastmath reassoc may order the four additions differently)."""
    same = np.testing.assert_array_equal if dtype == np.float32 else assert_close
    x = rng.standard_normal(shape).astype(dtype)
    y = F.avg_pool2d_forward(x, 2)
    n, c, h, w = shape
    y_gen = np.empty_like(y)
    cpu._avg_pool2d_fwd_kernel.serial(cpu._planes(x), cpu._planes(y_gen), 2, 2, 2, 2, 0, 0,
                                      True)
    same(y, y_gen)
    assert_close(y, ref.avg_pool2d_forward(x.astype(np.float64), 2))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = F.avg_pool2d_backward(dy, x.shape, 2)
    dx_gen = np.empty_like(dx)
    cpu._avg_pool2d_bwd_kernel.serial(cpu._planes(dy), cpu._planes(dx_gen), 2, 2, 2, 2, 0, 0,
                                      True)
    same(dx, dx_gen)
    assert_close(dx, ref.avg_pool2d_backward(dy.astype(np.float64), x.shape, 2))


def test_2x2_kernels_are_not_used_for_other_geometries(rng):
    """ceil_mode on odd sizes adds a partial window: the general kernels handle it."""
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    y, argmax = F.max_pool2d_forward(x, 2, ceil_mode=True)
    assert y.shape == (1, 2, 3, 3)
    y_ref, argmax_ref = ref.max_pool2d_forward(x, 2, ceil_mode=True)
    np.testing.assert_array_equal(argmax, argmax_ref)
    assert_close(F.avg_pool2d_forward(x, 2, ceil_mode=True),
                 ref.avg_pool2d_forward(x.astype(np.float64), 2, ceil_mode=True))
