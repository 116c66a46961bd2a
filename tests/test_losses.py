import math

import numpy as np
import pytest

import nnkern.functional as F
from nnkern.losses import MSE, BinaryCrossEntropy, Hinge, SoftmaxCrossEntropy


@pytest.fixture
def batch(rng):
    x = rng.standard_normal((6, 4))
    y = rng.integers(0, 4, 6)
    t = rng.uniform(0, 1, (6, 4))
    return x, y, t


def test_each_loss_matches_its_functional_op(batch):
    x, y, t = batch
    p = 1 / (1 + np.exp(-x))
    cases = [
        (SoftmaxCrossEntropy(), x, y, F.softmax_cross_entropy_forward(x, y)[0],
         F.softmax_cross_entropy_backward(F.softmax_cross_entropy_forward(x, y)[1], y)),
        (MSE(), x, t, F.mse_forward(x, t), F.mse_backward(x, t)),
        (BinaryCrossEntropy(), p, t, F.binary_cross_entropy_forward(p, t),
         F.binary_cross_entropy_backward(p, t)),
        (BinaryCrossEntropy(from_logits=True), x, t,
         F.binary_cross_entropy_forward(x, t, from_logits=True),
         F.binary_cross_entropy_backward(x, t, from_logits=True)),
        (Hinge(margin=0.5), x, y, F.hinge_forward(x, y, margin=0.5),
         F.hinge_backward(x, y, margin=0.5)),
    ]
    for loss_fn, pred, target, loss, grad in cases:
        value = loss_fn.forward(pred, target)
        assert isinstance(value, float) and value == loss
        np.testing.assert_array_equal(loss_fn.backward(), grad)
        assert loss_fn(pred, target) == loss  # __call__ is forward
        np.testing.assert_array_equal(loss_fn.backward(), grad)


def test_backward_uses_the_last_forward(batch):
    x, y, _ = batch
    loss_fn = SoftmaxCrossEntropy()
    loss_fn(x * 3, y)
    loss_fn(x, y)
    np.testing.assert_array_equal(loss_fn.probs, F.softmax_cross_entropy_forward(x, y)[1])
    np.testing.assert_array_equal(loss_fn.backward(),
                                  F.softmax_cross_entropy_backward(loss_fn.probs, y))


@pytest.mark.parametrize("cls", [SoftmaxCrossEntropy, MSE, BinaryCrossEntropy, Hinge])
def test_backward_before_forward_raises(cls):
    with pytest.raises(RuntimeError, match=rf"{cls.__name__}.backward\(\) called before "
                                           r"forward\(\)"):
        cls().backward()


def test_a_failed_forward_forgets_the_previous_inputs(batch):
    x, y, _ = batch
    loss_fn = Hinge()
    loss_fn(x, y)
    with pytest.raises(ValueError, match="labels must be class indices"):
        loss_fn(x, y + 10)
    with pytest.raises(RuntimeError, match="called before forward"):
        loss_fn.backward()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [-1, 3, 2**63 + 5])
def test_cross_entropy_rejects_labels_out_of_range(dtype, bad):
    # the CPU fast path leaves the range check to its kernel (a -inf loss flags a bad label),
    # also when another row's NaN logits make the loss NaN anyway
    x = np.zeros((4, 3), dtype)
    labels = np.array([0, 1, 2, 0], np.uint64 if bad >= 2**63 else np.int64)
    loss_fn = SoftmaxCrossEntropy()
    assert loss_fn(x, labels) == pytest.approx(np.log(3))
    labels[2] = bad
    for nan in (False, True):
        x[0, 0] = np.nan if nan else 0.0
        with pytest.raises(ValueError, match="labels must be class indices in \\[0, 3\\)"):
            loss_fn(x, labels)
        with pytest.raises(RuntimeError, match="called before forward"):
            loss_fn.backward()
    labels[2] = 2
    assert np.isnan(loss_fn(x, labels))  # NaN logits with valid labels: a NaN loss, no error


def test_targets_are_converted_where_sensible(batch):
    x, y, t = batch
    x32 = x.astype(np.float32)
    # labels as a list; regression targets as float64 or a list for float32 predictions
    assert SoftmaxCrossEntropy()(x, y.tolist()) == F.softmax_cross_entropy_forward(x, y)[0]
    assert Hinge()(x, list(y)) == F.hinge_forward(x, y)
    t32 = t.astype(np.float32)
    mse = MSE()
    assert mse(x32, t) == F.mse_forward(x32, t32)
    assert mse.backward().dtype == np.float32
    assert mse(x32, t32.tolist()) == F.mse_forward(x32, t32)
    bce = BinaryCrossEntropy(from_logits=True)
    hard = (t > 0.5).astype(np.int64)  # 0/1 integer targets
    assert bce(x32, hard) == F.binary_cross_entropy_forward(x32, hard.astype(np.float32),
                                                            from_logits=True)
    # what stays strict: float labels, shape mismatches, the prediction itself
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        SoftmaxCrossEntropy()(x, y.astype(np.float64))
    with pytest.raises(ValueError, match=r"target must have shape \(6, 4\)"):
        mse(x, t.T)
    with pytest.raises(TypeError, match="pred must be an array, got list"):
        mse(x.tolist(), t)


def test_options_are_checked_and_shown_in_repr():
    assert repr(SoftmaxCrossEntropy()) == "SoftmaxCrossEntropy()"
    assert repr(MSE()) == "MSE()"
    assert repr(BinaryCrossEntropy()) == "BinaryCrossEntropy(from_logits=False)"
    assert repr(BinaryCrossEntropy(from_logits=True)) == "BinaryCrossEntropy(from_logits=True)"
    assert repr(Hinge()) == "Hinge(margin=1.0)"
    assert repr(Hinge(margin=2)) == "Hinge(margin=2.0)"
    with pytest.raises(TypeError, match="from_logits must be True or False, got str 'yes'"):
        BinaryCrossEntropy(from_logits="yes")
    with pytest.raises(ValueError, match="margin must be in"):
        Hinge(margin=math.inf)


def test_hinge_is_the_seed_svm_loss_divided_by_c(batch):
    # S2 eq. 2.36: L_n = sum_{j != y} max(0, s_j - s_y + margin), mean over n; torch and nnkern
    # divide each L_n by C as well
    x, y, _ = batch
    n, c = x.shape
    seed = np.mean([sum(max(0.0, x[i, j] - x[i, y[i]] + 1.0) for j in range(c) if j != y[i])
                    for i in range(n)])
    assert Hinge()(x, y) * c == pytest.approx(seed, rel=1e-14)


def test_gradient_descent_on_logits_lowers_the_loss(rng):
    x = rng.standard_normal((8, 5))
    y = rng.integers(0, 5, 8)
    loss_fn = SoftmaxCrossEntropy()
    first = loss_fn(x, y)
    for _ in range(50):
        loss_fn(x, y)
        x -= 5.0 * loss_fn.backward()
    assert loss_fn(x, y) < 0.1 * first
    assert (loss_fn.probs.argmax(axis=1) == y).all()
