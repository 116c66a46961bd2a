import inspect
import math

import numpy as np
import pytest

import nnkern._jit as jit
import nnkern.functional as F
from nnkern.ops import loss as public
from nnkern.ops.loss import cpu, ref
from nnkern.testing import assert_close, check_gradients, on_one_thread

ROW_SHAPES = [(1, 1), (1, 7), (5, 3), (17, 33), (64, 100)]              # (N, C)
ANY_SHAPES = [(), (1,), (7,), (3, 5), (2, 3, 4, 5), (3, 4099)]          # MSE / BCE, any rank


def labels_for(rng, n, c, dtype=np.int64):
    return rng.integers(0, c, n).astype(dtype)


def probabilities(rng, shape, dtype, low=0.0, high=1.0):
    return np.asarray(rng.uniform(low, high, shape)).astype(dtype)


def hinge_scores(rng, n, c, margin, dtype=np.float64, gap=1e-3):
    """Random scores whose hinge terms margin - s_y + s_j stay >= gap away from the kink, some
    positive (active) and some negative."""
    while True:
        s = rng.standard_normal((n, c)) * 2
        y = labels_for(rng, n, c)
        z = margin - s[np.arange(n), y][:, None] + s
        z[np.arange(n), y] = np.nan
        z = z[~np.isnan(z)]
        if np.abs(z).min() > gap and (z > 0).any() and (z < 0).any():
            return s.astype(dtype), y


# ---------------------------------------------------------------- reference vs hand-computed


def test_reference_cross_entropy_hand_computed():
    # uniform logits: every class has probability 1/C, the loss is log C (ln 10 ≈ 2.3026)
    loss, probs = ref.softmax_cross_entropy_forward(np.zeros((4, 10)), np.arange(4))
    assert loss == pytest.approx(math.log(10), rel=1e-15)
    np.testing.assert_allclose(probs, 0.1, rtol=1e-15)
    dx = ref.softmax_cross_entropy_backward(probs, np.arange(4))
    expected = np.full((4, 10), 0.1 / 4)
    expected[np.arange(4), np.arange(4)] = (0.1 - 1) / 4
    np.testing.assert_allclose(dx, expected, rtol=1e-14)
    # logits (0, ln 3): probabilities (1/4, 3/4); label 1 costs -ln(3/4)
    loss, probs = ref.softmax_cross_entropy_forward(np.array([[0.0, math.log(3)]]), np.array([1]))
    assert loss == pytest.approx(-math.log(0.75), rel=1e-14)
    np.testing.assert_allclose(probs, [[0.25, 0.75]], rtol=1e-14)
    # a confident correct prediction costs ~0: (C-1) e^-40
    logits = np.zeros((2, 5))
    logits[[0, 1], [3, 1]] = 40.0
    loss, _ = ref.softmax_cross_entropy_forward(logits, np.array([3, 1]))
    assert loss == pytest.approx(4 * math.exp(-40), rel=1e-6)


def test_reference_mse_bce_hinge_hand_computed():
    p, t = np.array([[1.0, 2.0, 3.0]]), np.array([[1.0, 0.0, 0.0]])
    assert ref.mse_forward(p, t) == pytest.approx(13 / 3, rel=1e-15)
    np.testing.assert_allclose(ref.mse_backward(p, t), [[0.0, 4 / 3, 2.0]], rtol=1e-15)

    # BCE: p = 1/2 costs ln 2 whatever the target; -ln 0.9 for p = 0.9, t = 1
    assert ref.binary_cross_entropy_forward(np.full(3, 0.5), np.array([0.0, 0.3, 1.0])) == \
        pytest.approx(math.log(2), rel=1e-15)
    assert ref.binary_cross_entropy_forward(np.array([0.9]), np.array([1.0])) == \
        pytest.approx(-math.log(0.9), rel=1e-15)
    # dL/dp = (p - t) / (p (1 - p)): -1/0.9 at p = 0.9, t = 1
    np.testing.assert_allclose(ref.binary_cross_entropy_backward(np.array([0.9]), np.array([1.0])),
                               [-1 / 0.9], rtol=1e-14)
    # torch clamps each log at -100: a confident wrong answer costs 100, a right one 0
    assert ref.binary_cross_entropy_forward(np.array([0.0, 1.0]), np.array([1.0, 1.0])) == 50.0
    # logits: x = 0 costs ln 2; otherwise equal to BCE on sigmoid(x) (an independent formula)
    assert ref.binary_cross_entropy_forward(np.zeros(2), np.array([0.0, 1.0]), from_logits=True) \
        == pytest.approx(math.log(2), rel=1e-15)
    x, t = np.array([-3.0, -0.5, 2.0]), np.array([0.0, 0.7, 1.0])
    sig = 1 / (1 + np.exp(-x))
    assert ref.binary_cross_entropy_forward(x, t, from_logits=True) == \
        pytest.approx(ref.binary_cross_entropy_forward(sig, t), rel=1e-13)
    np.testing.assert_allclose(ref.binary_cross_entropy_backward(x, t, from_logits=True),
                               (sig - t) / 3, rtol=1e-14)

    # hinge, label 0, margin 1: terms max(0, 1 - 1 + 2) = 2 and max(0, 1 - 1 + 0.5) = 0.5;
    # (2 + 0.5) / C with C = 3
    s, y = np.array([[1.0, 2.0, 0.5]]), np.array([0])
    assert ref.hinge_forward(s, y) == pytest.approx(2.5 / 3, rel=1e-15)
    np.testing.assert_allclose(ref.hinge_backward(s, y), [[-2 / 3, 1 / 3, 1 / 3]], rtol=1e-15)
    # the correct class wins by more than the margin: no loss, no gradient
    assert ref.hinge_forward(np.array([[5.0, 1.0, 3.9]]), y) == 0.0
    assert not ref.hinge_backward(np.array([[5.0, 1.0, 3.9]]), y).any()
    # margin 0.5, two rows, mean over rows: row 0 (y = 0) has terms 0.5 + 1 and 0.5 - 1 < 0,
    # row 1 (y = 1) has 0.5 + 3 and 0.5 + 0
    s, y = np.array([[0.0, 1.0, -1.0], [3.0, 0.0, 0.0]]), np.array([0, 1])
    assert ref.hinge_forward(s, y, margin=0.5) == pytest.approx((1.5 / 3 + 4.0 / 3) / 2, rel=1e-15)


# ---------------------------------------------------------------- cpu vs reference


def test_backends_share_names_and_signatures():
    names = [f"{op}_{half}" for op in ("softmax_cross_entropy", "mse", "binary_cross_entropy",
                                       "hinge") for half in ("forward", "backward")]
    for name in names:
        want = inspect.signature(getattr(public, name))
        assert inspect.signature(getattr(ref, name)) == want, name
        assert inspect.signature(getattr(cpu, name)) == want, name
        assert getattr(F, name) is getattr(public, name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_cross_entropy_and_hinge_match_reference(rng, variant, shape, dtype):
    n, c = shape
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    y = labels_for(rng, n, c)
    loss, probs = F.softmax_cross_entropy_forward(x, y)
    ref_loss, ref_probs = ref.softmax_cross_entropy_forward(x.astype(np.float64), y)
    assert isinstance(loss, float) and probs.dtype == dtype
    assert_close(loss, ref_loss, dtype=dtype)
    assert_close(probs, ref_probs)
    dx = F.softmax_cross_entropy_backward(probs, y)
    assert dx.dtype == dtype
    assert_close(dx, ref.softmax_cross_entropy_backward(ref_probs, y), scale=1 + c / 10)
    for margin in (1.0, 0.25):
        loss = F.hinge_forward(x, y, margin=margin)
        assert isinstance(loss, float)
        assert_close(loss, ref.hinge_forward(x.astype(np.float64), y, margin=margin), dtype=dtype)
        ds = F.hinge_backward(x, y, margin=margin)
        assert ds.dtype == dtype
        assert_close(ds, ref.hinge_backward(x.astype(np.float64), y, margin=margin))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", ANY_SHAPES)
def test_mse_and_bce_match_reference(rng, variant, shape, dtype):
    p = probabilities(rng, shape, dtype, 0.01, 0.99)
    t = probabilities(rng, shape, dtype)
    x = np.asarray(rng.standard_normal(shape) * 4).astype(dtype)
    p64, t64, x64 = (a.astype(np.float64) for a in (p, t, x))
    cases = [
        (F.mse_forward(x, t), ref.mse_forward(x64, t64),
         F.mse_backward(x, t), ref.mse_backward(x64, t64)),
        (F.binary_cross_entropy_forward(p, t), ref.binary_cross_entropy_forward(p64, t64),
         F.binary_cross_entropy_backward(p, t), ref.binary_cross_entropy_backward(p64, t64)),
        (F.binary_cross_entropy_forward(x, t, from_logits=True),
         ref.binary_cross_entropy_forward(x64, t64, from_logits=True),
         F.binary_cross_entropy_backward(x, t, from_logits=True),
         ref.binary_cross_entropy_backward(x64, t64, from_logits=True)),
    ]
    for loss, ref_loss, grad, ref_grad in cases:
        assert isinstance(loss, float)
        assert_close(loss, ref_loss, dtype=dtype)
        assert grad.dtype == dtype and grad.shape == shape
        assert_close(grad, ref_grad)


def test_any_integer_label_dtype(rng):
    x = rng.standard_normal((6, 4))
    y = labels_for(rng, 6, 4)
    expected = F.softmax_cross_entropy_forward(x, y)[0]
    for dtype in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.uint64):
        loss, probs = F.softmax_cross_entropy_forward(x, y.astype(dtype))
        assert loss == expected
        np.testing.assert_array_equal(F.softmax_cross_entropy_backward(probs, y.astype(dtype)),
                                      F.softmax_cross_entropy_backward(probs, y))
        assert F.hinge_forward(x, y.astype(dtype)) == F.hinge_forward(x, y)


def test_float32_softmax_exponentials_are_accurate(rng):
    # the float32 kernel has its own vectorisable exp: check it over the whole range of
    # exponents [-87, 0] (and beyond, where exp underflows to 0)
    x = np.concatenate([-np.geomspace(1e-7, 87, 2000), [0.0, -90.0, -200.0, -1e4]])
    x = x.astype(np.float32).reshape(1, -1)
    _, probs = F.softmax_cross_entropy_forward(x, np.array([0]))
    _, expected = ref.softmax_cross_entropy_forward(x.astype(np.float64), np.array([0]))
    normal = expected > 1.2e-38
    rel = np.abs(probs[normal] - expected[normal]) / expected[normal]
    assert rel.max() < 1e-6
    assert np.all(probs[~normal] < 1.2e-38)


def test_loss_is_identical_across_thread_counts(rng, monkeypatch):
    """The parallel kernels split work into fixed chunks: same bits for any thread count. The
    serial variant is compiled separately and may vectorise its sums in another order
    (fastmath reassoc), so it agrees to rounding."""
    x = rng.standard_normal((300, 257)).astype(np.float32)
    y = labels_for(rng, 300, 257)
    p = probabilities(rng, (300, 257), np.float32, 0.01, 0.99)

    def losses():
        return (F.softmax_cross_entropy_forward(x, y)[0], F.hinge_forward(x, y),
                F.mse_forward(x, p), F.binary_cross_entropy_forward(p, p),
                F.binary_cross_entropy_forward(x, p, from_logits=True))

    monkeypatch.setattr(jit, "PARALLEL_MIN_WORK", 1 << 62)
    serial = losses()
    monkeypatch.setattr(jit, "PARALLEL_MIN_WORK", 0)
    parallel = losses()
    one_thread = on_one_thread(losses)
    assert parallel == one_thread
    np.testing.assert_allclose(serial, parallel, rtol=1e-13)


def test_writes_into_out_buffers(rng):
    x = rng.standard_normal((5, 4)).astype(np.float32)
    y = labels_for(rng, 5, 4)
    p = probabilities(rng, (5, 4), np.float32, 0.1, 0.9)
    _, probs = F.softmax_cross_entropy_forward(x, y)
    calls = [
        lambda out: F.softmax_cross_entropy_backward(probs, y, out=out),
        lambda out: F.mse_backward(x, p, out=out),
        lambda out: F.binary_cross_entropy_backward(p, p, out=out),
        lambda out: F.binary_cross_entropy_backward(x, p, from_logits=True, out=out),
        lambda out: F.hinge_backward(x, y, margin=0.5, out=out),
    ]
    for call in calls:
        out = np.full((5, 4), np.nan, np.float32)
        assert call(out) is out
        np.testing.assert_array_equal(out, call(None))
    out = np.empty((5, 4), np.float64)
    np.testing.assert_array_equal(ref.mse_backward(x, p, out=out), out)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("module", [ref, F], ids=["ref", "cpu"])
def test_gradients_finite_difference(rng, module):
    x = rng.standard_normal((3, 4)) * 2
    y = labels_for(rng, 3, 4)
    _, probs = module.softmax_cross_entropy_forward(x, y)
    check_gradients(lambda: module.softmax_cross_entropy_forward(x, y)[0], {"logits": x},
                    {"logits": module.softmax_cross_entropy_backward(probs, y)})

    pred, target = rng.standard_normal((2, 3, 2)), rng.standard_normal((2, 3, 2))
    check_gradients(lambda: module.mse_forward(pred, target), {"pred": pred},
                    {"pred": module.mse_backward(pred, target)})

    p, t = rng.uniform(0.05, 0.95, (3, 4)), rng.uniform(0, 1, (3, 4))
    check_gradients(lambda: module.binary_cross_entropy_forward(p, t), {"p": p},
                    {"p": module.binary_cross_entropy_backward(p, t)})
    z = rng.standard_normal((3, 4)) * 3
    check_gradients(lambda: module.binary_cross_entropy_forward(z, t, from_logits=True), {"x": z},
                    {"x": module.binary_cross_entropy_backward(z, t, from_logits=True)})

    for margin in (1.0, 0.3):
        s, y = hinge_scores(rng, 4, 5, margin)
        ds = module.hinge_backward(s, y, margin=margin)
        assert (ds > 0).any() and (ds == 0).any()  # some active terms, some inactive
        check_gradients(lambda s=s, y=y, m=margin: module.hinge_forward(s, y, margin=m),
                        {"scores": s}, {"scores": ds})


def test_hinge_subgradient_is_zero_at_the_kink():
    # margin - s_y + s_j = 1 - 2 + 1 = 0 exactly: torch counts the term as inactive
    s, y = np.array([[2.0, 1.0, 0.0]]), np.array([0])
    for module in (ref, F):
        assert module.hinge_forward(s, y) == 0.0
        assert not module.hinge_backward(s, y).any()


# ---------------------------------------------------------------- stability


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_logits_stay_finite(dtype):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], dtype)
    y = np.array([0, 0])
    loss, probs = F.softmax_cross_entropy_forward(x, y)
    # row 0 is right with certainty (loss 0), row 1 wrong by 2e4 + log 2
    assert loss == pytest.approx((0.0 + 2e4 + math.log(2)) / 2, rel=1e-7)
    np.testing.assert_allclose(probs, [[1, 0, 0], [0, 0.5, 0.5]], atol=1e-7)
    dx = F.softmax_cross_entropy_backward(probs, y)
    assert np.isfinite(dx).all()
    np.testing.assert_allclose(dx, [[0, 0, 0], [-0.5, 0.25, 0.25]], atol=1e-7)

    t = np.array([0.0, 1.0, 1.0, 0.0], dtype)
    z = np.array([1e4, -1e4, 1e4, -1e4], dtype)
    loss = F.binary_cross_entropy_forward(z, t, from_logits=True)
    assert loss == pytest.approx((1e4 + 1e4 + 0 + 0) / 4, rel=1e-7)
    np.testing.assert_allclose(F.binary_cross_entropy_backward(z, t, from_logits=True),
                               [0.25, -0.25, 0, 0], atol=1e-7)
    assert F.hinge_forward(x, y) == pytest.approx((0 + 2 * (1 + 2e4) / 3) / 2, rel=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_at_probability_zero_and_one_is_finite_like_torch(dtype):
    p = np.array([0.0, 1.0, 0.0, 1.0], dtype)
    t = np.array([1.0, 0.0, 0.0, 1.0], dtype)
    # wrong with certainty: log clamped at -100; right with certainty: 0
    assert F.binary_cross_entropy_forward(p, t) == pytest.approx((100 + 100) / 4, rel=1e-12)
    grad = F.binary_cross_entropy_backward(p, t)
    assert np.isfinite(grad).all()
    eps = float(np.float32(1e-12))  # torch's floor on p (1 - p), a float constant
    assert_close(grad, np.array([-1, 1, 0, 0]) / eps / 4)


def test_nan_logits_give_nan_like_torch():
    x = np.array([[0.0, np.nan, 1.0], [0.0, 1.0, 2.0]], np.float32)
    assert math.isnan(F.softmax_cross_entropy_forward(x, np.array([0, 1]))[0])
    assert math.isnan(F.mse_forward(x, np.zeros_like(x)))
    wide = np.zeros((2, 1000), np.float32)  # a row long enough for the vectorised maximum
    wide[0, 700] = np.nan
    loss, probs = F.softmax_cross_entropy_forward(wide, np.array([3, 4]))
    assert math.isnan(loss) and np.isnan(probs[0]).all()
    assert_close(probs[1], np.full(1000, 1e-3, np.float32))


# ---------------------------------------------------------------- bad input


def test_bad_labels_are_rejected_with_a_clear_message():
    x = np.zeros((4, 5), np.float32)
    op = F.softmax_cross_entropy_forward
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 5\) "
                                         r"\(C = 5\), got label 5"):
        op(x, np.array([0, 1, 5, 2]))
    with pytest.raises(ValueError, match=r"in \[0, 5\) \(C = 5\), got label -1"):
        F.hinge_forward(x, np.array([0, -1, 4, 2]))
    with pytest.raises(ValueError, match="got label 300"):
        op(x, np.array([0, 1, 300, 2], np.uint16))
    with pytest.raises(TypeError, match="labels must have an integer dtype .*got float64"):
        op(x, np.array([0.0, 1.0, 2.0, 3.0]))
    with pytest.raises(TypeError, match="labels must have an integer dtype .*got bool"):
        op(x, np.ones(4, bool))
    with pytest.raises(TypeError, match="labels must be an array of integer class indices, "
                                        "got list"):
        op(x, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="labels has 3 entries but the batch has 4 rows"):
        op(x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"labels must be 1-D \(N,\), got shape \(4, 1\)"):
        op(x, np.zeros((4, 1), np.int64))
    with pytest.raises(ValueError, match="labels must be C-contiguous"):
        op(x, np.zeros(8, np.int64)[::2])
    with pytest.raises(ValueError, match=r"softmax_cross_entropy_backward: labels must be class"):
        F.softmax_cross_entropy_backward(x, np.array([0, 1, 2, 7]))


def test_bad_arrays_are_rejected_with_a_clear_message():
    x = np.zeros((4, 5), np.float32)
    y = np.zeros(4, np.int64)
    with pytest.raises(ValueError, match=r"logits must be 2-D \(N, C\), got shape \(5,\)"):
        F.softmax_cross_entropy_forward(x[0], y)
    with pytest.raises(ValueError, match=r"scores must be 2-D \(N, C\), got shape \(4, 5, 1\)"):
        F.hinge_forward(x[..., None], y)
    with pytest.raises(TypeError, match="logits must have dtype float32 or float64, got int64"):
        F.softmax_cross_entropy_forward(np.zeros((4, 5), np.int64), y)
    with pytest.raises(ValueError, match="logits must be C-contiguous"):
        F.softmax_cross_entropy_forward(np.zeros((4, 10), np.float32)[:, ::2], y)
    with pytest.raises(ValueError, match="logits has empty batch"):
        F.softmax_cross_entropy_forward(np.zeros((0, 5), np.float32), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match=r"out must have shape \(4, 5\)"):
        F.softmax_cross_entropy_backward(x, y, out=np.empty((5, 4), np.float32))
    with pytest.raises(TypeError, match="out has dtype float64 but the other arguments"):
        F.hinge_backward(x, y, out=np.empty((4, 5)))

    with pytest.raises(ValueError, match=r"target must have shape \(4, 5\) \(the shape of pred\), "
                                         r"got \(5, 4\)"):
        F.mse_forward(x, np.zeros((5, 4), np.float32))
    with pytest.raises(TypeError, match="target has dtype float64 but the other arguments are "
                                        "float32"):
        F.mse_backward(x, np.zeros((4, 5)))
    with pytest.raises(TypeError, match="pred must have dtype float32 or float64, got int32"):
        F.mse_forward(np.zeros(3, np.int32), np.zeros(3, np.int32))
    with pytest.raises(TypeError, match="target must be an array, got list"):
        F.mse_forward(np.zeros(3), [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="pred has empty batch"):
        F.mse_forward(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="pred must be C-contiguous"):
        F.binary_cross_entropy_forward(np.zeros((3, 4)).T, np.zeros((4, 3)))


def test_bad_options_and_values_are_rejected_with_a_clear_message():
    p = np.full((2, 3), 0.5)
    with pytest.raises(ValueError, match=r"pred must lie in \[0, 1\] \(probabilities; pass "
                                         r"from_logits=True for raw scores\), got values in "
                                         r"\[-0.5, 0.5\]"):
        F.binary_cross_entropy_forward(np.array([-0.5, 0.5]), np.zeros(2))
    with pytest.raises(ValueError, match=r"pred must lie in \[0, 1\].*nan"):
        F.binary_cross_entropy_backward(np.array([np.nan, 0.5]), np.zeros(2))
    with pytest.raises(ValueError, match=r"target must lie in \[0, 1\], got values in "
                                         r"\[0, 2\]"):
        F.binary_cross_entropy_forward(p, np.array([[0.0, 1, 2], [0, 0, 0]]), from_logits=True)
    # logits may be anything
    assert F.binary_cross_entropy_forward(p * 10 - 7, p, from_logits=True) > 0
    with pytest.raises(TypeError, match="from_logits must be True or False, got str 'yes'"):
        F.binary_cross_entropy_forward(p, p, from_logits="yes")
    s, y = np.zeros((2, 3)), np.zeros(2, np.int64)
    with pytest.raises(ValueError, match="hinge_forward: margin must be finite, got inf"):
        F.hinge_forward(s, y, margin=float("inf"))
    with pytest.raises(ValueError, match="margin must be finite, got nan"):
        F.hinge_backward(s, y, margin=float("nan"))
    with pytest.raises(TypeError, match="margin must be a number, got str '1'"):
        F.hinge_forward(s, y, margin="1")
    with pytest.raises(TypeError, match="margin must be a number, got bool True"):
        F.hinge_forward(s, y, margin=True)
    assert F.hinge_forward(s, y, margin=2) == pytest.approx(2 * 2 / 3)  # int margin is fine
