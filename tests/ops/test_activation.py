import math

import numpy as np
import pytest

import nnkern._jit as jit
import nnkern.functional as F
from nnkern.ops.activation import SELU_ALPHA, SELU_SCALE, ref
from nnkern.testing import assert_close, check_gradients, upstream

# name -> (forward kwargs, backward kwargs); every op's backward is (dy, x, y, **kwargs)
ELEMENTWISE = {
    "relu": {},
    "leaky_relu": {"negative_slope": 0.2},
    "elu": {"alpha": 0.7},
    "selu": {},
    "sigmoid": {},
    "tanh": {},
}
SOFTMAXES = ["softmax", "log_softmax"]
SHAPES = [(1,), (7,), (5, 3), (1, 1, 1, 1), (2, 3, 4, 5), (3, 5, 7, 9)]
SOFTMAX_SHAPES = [(1, 1), (5, 3), (4, 130), (1, 10, 1, 1), (2, 3, 4, 5), (3, 7, 33, 35)]


def away_from_kinks(rng, shape, scale=2.0, dtype=np.float64):
    """Random values with |x| >= 0.05 (finite differences with h = 1e-6 never cross 0)."""
    x = rng.standard_normal(shape) * scale
    x = np.where(np.abs(x) < 0.05, np.copysign(0.05, x) + x, x)
    return x.astype(dtype)


def fwd(module, name, x, **kw):
    return getattr(module, f"{name}_forward")(x, **kw)


def bwd(module, name, dy, x, y, **kw):
    return getattr(module, f"{name}_backward")(dy, x, y, **kw)


# ---------------------------------------------------------------- the reference


def test_reference_matches_hand_computed():
    x = np.array([-2.0, -0.5, 0.0, 1.5])
    ones = np.ones(4)
    np.testing.assert_array_equal(ref.relu_forward(x), [0, 0, 0, 1.5])
    np.testing.assert_array_equal(ref.relu_backward(ones, x, None), [0, 0, 0, 1])
    np.testing.assert_allclose(ref.leaky_relu_forward(x, 0.1), [-0.2, -0.05, 0, 1.5])
    np.testing.assert_allclose(ref.leaky_relu_backward(ones, x, None, 0.1), [0.1, 0.1, 0.1, 1])
    e = math.e
    np.testing.assert_allclose(ref.elu_forward(x, 2.0), [2 * (e**-2 - 1), 2 * (e**-0.5 - 1), 0,
                                                          1.5], rtol=1e-15)
    np.testing.assert_allclose(ref.elu_backward(ones, x, None, 2.0),
                               [2 * e**-2, 2 * e**-0.5, 2, 1], rtol=1e-15)
    np.testing.assert_allclose(ref.selu_forward(np.array([1.0, -1e3])),
                               [1.0507009873554805, -1.7580993408473766], rtol=1e-15)
    np.testing.assert_allclose(ref.selu_backward(np.ones(2), np.array([1.0, 0.0]), None),
                               [1.0507009873554805, 1.7580993408473766], rtol=1e-15)
    # sigmoid(ln 3) = 3/4, tanh(ln 2) = 3/5; derivatives 3/16 and 1 - 9/25
    np.testing.assert_allclose(ref.sigmoid_forward(np.log([3.0, 1 / 3])), [0.75, 0.25])
    np.testing.assert_allclose(ref.sigmoid_backward(np.ones(1), np.log([3.0]), None), [3 / 16])
    np.testing.assert_allclose(ref.tanh_forward(np.log([2.0])), [0.6])
    np.testing.assert_allclose(ref.tanh_backward(np.ones(1), np.log([2.0]), None), [16 / 25])
    # softmax of log([1, 2, 3]) = [1, 2, 3] / 6
    s = np.log([[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(ref.softmax_forward(s), [[1 / 6, 2 / 6, 3 / 6]])
    np.testing.assert_allclose(ref.log_softmax_forward(s), np.log([[1 / 6, 2 / 6, 3 / 6]]))
    w = np.array([0.25, 0.5])
    xp = np.array([[-4.0, 4.0], [-2.0, -1.0]])
    np.testing.assert_array_equal(ref.prelu_forward(xp, w), [[-1.0, 4.0], [-0.5, -0.5]])
    dx, dw = ref.prelu_backward(np.ones((2, 2)), xp, w)
    np.testing.assert_array_equal(dx, [[0.25, 1.0], [0.25, 0.5]])
    np.testing.assert_array_equal(dw, [-6.0, -1.0])


def test_reference_softmax_backward_is_the_jacobian_product(rng):
    # an independent formula: the explicit Jacobian J_ik = y_i (δ_ik - y_k), dx = J^T dy
    x, dy = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    y = ref.softmax_forward(x)
    for n in range(3):
        jac = np.diag(y[n]) - np.outer(y[n], y[n])
        np.testing.assert_allclose(ref.softmax_backward(dy, x, y)[n], jac.T @ dy[n])
        jac_log = np.eye(5) - np.outer(np.ones(5), y[n])  # d log y_i / d x_k = δ_ik - y_k
        np.testing.assert_allclose(ref.log_softmax_backward(dy, x, None)[n], jac_log.T @ dy[n])


# ---------------------------------------------------------------- cpu vs reference


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(ELEMENTWISE) + SOFTMAXES)
def test_forward_backward_match_reference(rng, variant, name, dtype):
    kw = ELEMENTWISE.get(name, {})
    shapes = SOFTMAX_SHAPES if name in SOFTMAXES else SHAPES
    for shape in shapes:
        x = (rng.standard_normal(shape) * 3).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        y = fwd(F, name, x, **kw)
        assert y.dtype == dtype and y.shape == x.shape
        assert_close(y, fwd(ref, name, x.astype(np.float64), **kw), err_msg=f"{name} {shape}")
        dx = bwd(F, name, dy, x, y, **kw)
        assert dx.dtype == dtype and dx.shape == x.shape
        want = bwd(ref, name, dy.astype(np.float64), x.astype(np.float64), None, **kw)
        assert_close(dx, want, scale=3.0 if name in SOFTMAXES else 1.0,
                     err_msg=f"{name} backward {shape}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prelu_matches_reference(rng, variant, dtype):
    for shape, k in [((5, 3), 3), ((5, 3), 1), ((2, 3, 4, 5), 3), ((2, 3, 4, 5), 1),
                     ((3, 4, 7), 4), ((1, 6, 1, 1), 6), ((9,), 1), ((40, 70, 3, 3), 70)]:
        x = (rng.standard_normal(shape) * 3).astype(dtype)
        w = rng.uniform(-0.5, 0.5, k).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
        y = F.prelu_forward(x, w)
        assert y.dtype == dtype
        assert_close(y, ref.prelu_forward(x64, w64))
        dx, dw = F.prelu_backward(dy, x, w)
        want_dx, want_dw = ref.prelu_backward(dy64, x64, w64)
        assert dx.dtype == dtype and dw.dtype == dtype and dw.shape == (k,)
        assert_close(dx, want_dx)
        assert_close(dw, want_dw, scale=10.0)  # float32 rounding of x and dy, summed in float64


def test_prelu_with_one_weight_is_leaky_relu(rng):
    x = rng.standard_normal((4, 3, 2, 2))
    np.testing.assert_array_equal(F.prelu_forward(x, np.array([0.3])),
                                  F.leaky_relu_forward(x, 0.3))


def test_selu_is_scaled_elu(rng):
    x = rng.standard_normal((6, 7))
    np.testing.assert_allclose(F.selu_forward(x), SELU_SCALE * F.elu_forward(x, SELU_ALPHA),
                               rtol=1e-15)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("module", [ref, F], ids=["ref", "cpu"])
@pytest.mark.parametrize("name", list(ELEMENTWISE) + SOFTMAXES)
def test_gradients_finite_difference(rng, module, name):
    kw = ELEMENTWISE.get(name, {})
    for shape in ([(3, 4), (2, 3, 2, 2)] if name in SOFTMAXES else [(7,), (2, 3, 2, 2)]):
        x = away_from_kinks(rng, shape)
        r = upstream(shape, rng)
        dx = bwd(module, name, r, x, fwd(module, name, x, **kw), **kw)
        check_gradients(lambda x=x, r=r: float(np.sum(fwd(module, name, x, **kw) * r)),
                        {"x": x}, {"x": dx})


@pytest.mark.parametrize("module", [ref, F], ids=["ref", "cpu"])
def test_prelu_gradients_finite_difference(rng, module):
    for shape, k in [((4, 3), 3), ((2, 3, 2, 3), 3), ((2, 3, 2, 3), 1)]:
        x = away_from_kinks(rng, shape)
        w = rng.uniform(0.1, 0.5, k)
        r = upstream(shape, rng)
        dx, dw = module.prelu_backward(r, x, w)
        check_gradients(lambda x=x, w=w, r=r: float(np.sum(module.prelu_forward(x, w) * r)),
                        {"x": x, "weight": w}, {"x": dx, "weight": dw})


def test_derivatives_at_the_kink_follow_pytorch():
    x = np.zeros(1)
    one = np.ones(1)
    assert F.relu_backward(one, x, x)[0] == 0.0
    assert F.leaky_relu_backward(one, x, x, 0.2)[0] == np.float64(0.2)
    assert F.elu_backward(one, x, x, 0.5)[0] == 0.5
    assert F.selu_backward(one, x, x)[0] == pytest.approx(SELU_SCALE * SELU_ALPHA, rel=1e-15)
    dx, dw = F.prelu_backward(one.reshape(1, 1), x.reshape(1, 1), np.array([0.25]))
    assert dx[0, 0] == 0.25 and dw[0] == 0.0


# ---------------------------------------------------------------- numerics


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_inputs_are_stable(dtype):
    x = np.array([[-1000.0, 1000.0, 0.0, -1e4], [1e4, -1e4, 3.0, 5.0]], dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        np.testing.assert_array_equal(F.sigmoid_forward(x), ref.sigmoid_forward(x))
        np.testing.assert_array_equal(F.tanh_forward(x), np.tanh(x))
        np.testing.assert_array_equal(F.elu_forward(x)[0, :2], [-1.0, 1000.0])
        y = F.softmax_forward(x)
        np.testing.assert_allclose(y, [[0, 1, 0, 0], [1, 0, 0, 0]], atol=1e-30)
        ls = F.log_softmax_forward(x)
        assert np.all(np.isfinite(ls))
        assert_close(ls, ref.log_softmax_forward(x.astype(np.float64)))
        x4 = np.array([1e4, 1e4 + 1.0, 1e4 - 2.0], dtype).reshape(1, 3, 1, 1).repeat(3, axis=3)
        for a in (x4, x4[..., 0].copy()):  # (N, C, H, W) kernel and (N, C) kernel
            assert_close(F.log_softmax_forward(a), ref.log_softmax_forward(a.astype(np.float64)))
            assert_close(F.softmax_forward(a), ref.softmax_forward(a.astype(np.float64)))


def test_nan_propagates_like_pytorch():
    x = np.array([np.nan, -1.0, 2.0])
    for name in ("relu", "leaky_relu", "elu", "selu", "sigmoid", "tanh"):
        y = fwd(F, name, x)
        assert np.isnan(y[0]) and not np.isnan(y[1:]).any(), name
    assert np.isnan(F.softmax_forward(x.reshape(1, 3))).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("where", [0, 1, 500, 999])
def test_a_nan_turns_its_softmax_row_to_nan(dtype, where):
    # the row maximum skips NaNs (a vectorised maxnum); exp(NaN - max) must still spoil the row
    x = np.random.default_rng(0).standard_normal((3, 1000)).astype(dtype)
    x[1, where] = np.nan
    for name in SOFTMAXES:
        y = fwd(F, name, x)
        assert np.isnan(y[1]).all() and not np.isnan(y[[0, 2]]).any(), name
        assert_close(y[[0, 2]], fwd(ref, name, x[[0, 2]].astype(np.float64)))


def test_float32_transcendentals_are_accurate():
    # the vectorised float32 exp/expm1/tanh polynomials: a few ulp from float64 NumPy
    x = np.linspace(-20, 20, 20001).astype(np.float32)
    x64 = x.astype(np.float64)
    neg = x[x <= 0]
    np.testing.assert_allclose(F.elu_forward(neg), np.expm1(neg.astype(np.float64)), rtol=3e-7)
    np.testing.assert_allclose(F.elu_backward(np.ones_like(neg), neg, neg),
                               np.exp(neg.astype(np.float64)), rtol=3e-7)
    np.testing.assert_allclose(F.tanh_forward(x), np.tanh(x64), rtol=3e-7)
    np.testing.assert_allclose(F.sigmoid_forward(x), ref.sigmoid_forward(x64), rtol=4e-7)
    tiny = np.array([-1e-30, -1e-7, -1e-3], np.float32)
    np.testing.assert_allclose(F.elu_forward(tiny), np.expm1(tiny.astype(np.float64)),
                               rtol=2e-7)


# ---------------------------------------------------------------- buffers, bad input


def test_writes_into_out_buffers(rng):
    x = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    for name in list(ELEMENTWISE) + SOFTMAXES:
        out = np.empty_like(x)
        assert fwd(F, name, x, out=out) is out
        y = out.copy()
        dx = np.empty_like(x)
        assert bwd(F, name, np.ones_like(x), x, y, out=dx) is dx
    w = np.full(3, 0.1, np.float32)
    bufs = (np.empty_like(x), np.empty_like(w))
    got = F.prelu_backward(np.ones_like(x), x, w, out=bufs)
    assert got[0] is bufs[0] and got[1] is bufs[1]
    inplace = x.copy()  # out may be the input itself
    F.relu_forward(inplace, out=inplace)
    np.testing.assert_array_equal(inplace, np.maximum(x, 0))


def test_prelu_weight_gradient_is_deterministic(rng, monkeypatch):
    x = rng.standard_normal((64, 8, 16, 16)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    results = []
    for k, limit in [(8, 1 << 62), (8, 0), (1, 1 << 62), (1, 0)]:  # serial, parallel
        monkeypatch.setattr(jit, "PARALLEL_MIN_WORK", limit)
        results.append(F.prelu_backward(dy, x, np.full(k, 0.1, np.float32))[1])
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[2], results[3])


def test_bad_input_is_rejected_with_a_clear_message():
    x = np.ones((4, 3), np.float32)
    with pytest.raises(TypeError, match="relu_forward: x must have dtype float32 or float64"):
        F.relu_forward(np.ones((4, 3), np.int32))
    with pytest.raises(TypeError, match="must be an array, got list"):
        F.tanh_forward([1.0, 2.0])
    with pytest.raises(ValueError, match="must be C-contiguous"):
        F.sigmoid_forward(np.ones((4, 6), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="empty batch"):
        F.relu_forward(np.ones((0, 3), np.float32))
    with pytest.raises(ValueError, match=r"x must be at least 1-D, got shape \(\)"):
        F.relu_forward(np.array(1.0))
    with pytest.raises(ValueError, match=r"softmax_forward: x must be at least 2-D: \(N, C\)"):
        F.softmax_forward(np.ones(5, np.float32))
    with pytest.raises(TypeError, match="y has dtype float64 but the other arguments are float32"):
        F.relu_backward(x, x, x.astype(np.float64))
    with pytest.raises(ValueError, match=r"dy must have shape \(4, 3\)"):
        F.tanh_backward(np.ones((3, 4), np.float32), x, x)
    with pytest.raises(ValueError, match=r"out must have shape \(4, 3\)"):
        F.relu_forward(x, out=np.empty((3, 4), np.float32))
    with pytest.raises(TypeError, match="out has dtype float64"):
        F.relu_forward(x, out=np.empty((4, 3)))
    with pytest.raises(ValueError, match=r"alpha must be in \(0.0, inf\), got -1.0"):
        F.elu_forward(x, alpha=-1.0)
    with pytest.raises(ValueError, match=r"alpha must be in \(0.0, inf\), got 0.0"):
        F.elu_backward(x, x, x, alpha=0)
    with pytest.raises(ValueError, match="negative_slope must be in"):
        F.leaky_relu_forward(x, negative_slope=float("nan"))
    with pytest.raises(TypeError, match="negative_slope must be a number, got str"):
        F.leaky_relu_forward(x, negative_slope="0.1")
    with pytest.raises(ValueError, match=r"weight must have shape \(1,\) or \(C,\) = \(3,\)"):
        F.prelu_forward(x, np.ones(2, np.float32))
    with pytest.raises(ValueError, match="weight must be 1-D"):
        F.prelu_forward(x, np.ones((1, 3), np.float32))
    with pytest.raises(TypeError, match="weight has dtype float64"):
        F.prelu_forward(x, np.ones(3))
    with pytest.raises(ValueError, match="has no channel axis"):
        F.prelu_forward(np.ones(3, np.float32), np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"out dweight must have shape \(3,\)"):
        F.prelu_backward(x, x, np.ones(3, np.float32), out=(None, np.empty(1, np.float32)))
