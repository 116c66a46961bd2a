import math

import numpy as np
import pytest

import nnkern.optim as O
from nnkern.layers.base import Parameter


def optimizer(lr=0.1):
    return O.SGD([Parameter(np.zeros(2), "w")], lr=lr, momentum=0.9)


def lrs(schedule, epochs, metrics=None):
    """Learning rates used by epochs 0 .. epochs-1 (stepping after each)."""
    out = []
    for t in range(epochs):
        out.append(schedule.optimizer.lr)
        schedule.step(None if metrics is None else metrics[t])
    return out


def test_step_lr():
    s = O.StepLR(optimizer(1.0), step_size=3, gamma=0.5)
    assert s.last_lr == 1.0
    assert lrs(s, 8) == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25]
    assert s.last_lr == 0.25 == s.optimizer.lr and s.epoch == 8


def test_exponential_lr_is_s2_exponential_decay():
    k = 0.2
    s = O.ExponentialLR(optimizer(0.3), gamma=math.exp(-k))
    got = lrs(s, 6)
    np.testing.assert_allclose(got, [0.3 * math.exp(-k * t) for t in range(6)], rtol=1e-15)


def test_power_lr():
    s = O.PowerLR(optimizer(0.6), k=0.5)
    np.testing.assert_allclose(lrs(s, 5), [0.6, 0.4, 0.3, 0.24, 0.2], rtol=1e-15)


def test_linear_lr_then_held():
    s = O.LinearLR(optimizer(1.0), final_lr=0.2, total_epochs=4)
    np.testing.assert_allclose(lrs(s, 7), [1.0, 0.8, 0.6, 0.4, 0.2, 0.2, 0.2], rtol=1e-15)


def test_reduce_on_plateau_counts_like_torch():
    # patience 5: the rate halves after the 6th epoch in a row without improvement
    s = O.ReduceLROnPlateau(optimizer(0.8))
    acc = [0.5, 0.6, 0.6, 0.55, 0.6, 0.59, 0.6, 0.58, 0.61, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]
    got = lrs(s, len(acc), acc)
    assert got[:8] == [0.8] * 8    # epochs 2-7 do not improve on 0.6 (with threshold 0, equal
    assert got[8:15] == [0.4] * 7  # is no improvement): the 6th bad epoch (7) halves the rate;
    assert got[15] == 0.2          # 0.61 at epoch 8 is the new best, epochs 9-14 are bad again
    assert s.optimizer.lr == 0.2 and s.last_lr == 0.2
    assert s.best == 0.61 and s.num_bad_epochs == 1


def test_reduce_on_plateau_min_mode_min_lr_threshold_cooldown():
    s = O.ReduceLROnPlateau(optimizer(1.0), factor=0.1, patience=0, monitor="val_loss",
                            mode="min", min_lr=0.05)
    got = lrs(s, 4, [1.0, 1.0, 0.5, 0.7])
    assert got == [1.0, 1.0, 0.1, 0.1]
    assert s.optimizer.lr == 0.05  # clamped at min_lr
    s = O.ReduceLROnPlateau(optimizer(1.0), patience=0, threshold=0.1)
    assert lrs(s, 3, [1.0, 1.05, 1.2]) == [1.0, 1.0, 0.5]  # +5% is below the 10% threshold
    s = O.ReduceLROnPlateau(optimizer(1.0), patience=0, cooldown=2)
    assert lrs(s, 6, [1.0, 0.9, 0.9, 0.9, 0.9, 0.9]) == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    s = O.ReduceLROnPlateau(optimizer(1.0), patience=1)
    assert lrs(s, 4, [1.0, math.nan, math.nan, 2.0]) == [1.0, 1.0, 1.0, 0.5]  # NaN: no progress


def test_schedules_as_training_callbacks():
    s = O.StepLR(optimizer(1.0), step_size=1, gamma=0.5)
    for epoch in range(3):
        s.on_epoch_end(epoch, {"loss": 1.0, "lr": s.optimizer.lr})
    assert s.optimizer.lr == 0.125
    p = O.ReduceLROnPlateau(optimizer(1.0), patience=1, monitor="val_loss", mode="min")
    for epoch, loss in enumerate([2.0, 2.0, 2.5]):
        p.on_epoch_end(epoch, {"loss": 0.1, "val_loss": np.float32(loss)})
    assert p.optimizer.lr == 0.5
    with pytest.raises(ValueError, match=r"monitor 'val_accuracy' is not in the epoch logs "
                                         r"\(keys: \['accuracy', 'loss'\]\)"):
        O.ReduceLROnPlateau(optimizer()).on_epoch_end(0, {"loss": 1.0, "accuracy": 0.5})


def test_schedule_changes_the_optimizers_base_lr_only():
    w, b = Parameter(np.zeros(2), "w"), Parameter(np.zeros(2), "b")
    opt = O.SGD([{"params": [w]}, {"params": [b], "lr_mult": 2.0}], lr=1.0)
    O.StepLR(opt, step_size=1, gamma=0.5).step()
    w.grad[...], b.grad[...] = 1.0, 1.0
    opt.step()
    np.testing.assert_array_equal(w.data, -0.5)
    np.testing.assert_array_equal(b.data, -1.0)


@pytest.mark.parametrize("make,metrics", [
    (lambda o: O.StepLR(o, 2, 0.3), None),
    (lambda o: O.ExponentialLR(o, 0.9), None),
    (lambda o: O.PowerLR(o, 0.3), None),
    (lambda o: O.LinearLR(o, 0.01, 5), None),
    (lambda o: O.ReduceLROnPlateau(o, patience=1, cooldown=1),
     [0.1, 0.2, 0.2, 0.1, 0.3, 0.3, 0.3, 0.3, 0.2, 0.3, 0.1, 0.1]),
])
def test_state_dict_resumes_exactly(make, metrics):
    a = make(optimizer(0.5))
    full = lrs(a, 12, metrics)
    b = make(optimizer(0.5))
    lrs(b, 5, metrics)
    state = b.state_dict()
    assert all(isinstance(v, (int, float, str)) for v in state.values())
    c = make(optimizer(7.0))
    c.load_state_dict(state)
    assert c.optimizer.lr == b.optimizer.lr  # loading sets the optimizer's rate
    rest = lrs(c, 7, None if metrics is None else metrics[5:])
    assert full[5:] == rest


def test_bad_input_is_rejected_with_a_clear_message():
    with pytest.raises(TypeError, match="StepLR: expected an optimizer"):
        O.StepLR([1, 2], 3)
    with pytest.raises(ValueError, match="step_size must be >= 1, got 0"):
        O.StepLR(optimizer(), 0)
    with pytest.raises(TypeError, match="step_size must be an int"):
        O.StepLR(optimizer(), 2.5)
    with pytest.raises(ValueError, match=r"gamma must be in \(0.0, inf\)"):
        O.ExponentialLR(optimizer(), 0.0)
    with pytest.raises(ValueError, match=r"k must be in \[0.0, inf\)"):
        O.PowerLR(optimizer(), -1)
    with pytest.raises(ValueError, match="total_epochs must be >= 1"):
        O.LinearLR(optimizer(), 0.0, 0)
    with pytest.raises(ValueError, match=r"factor must be in \(0.0, 1.0\)"):
        O.ReduceLROnPlateau(optimizer(), factor=1.0)
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        O.ReduceLROnPlateau(optimizer(), mode="up")
    with pytest.raises(TypeError, match="metric must be a number"):
        O.ReduceLROnPlateau(optimizer()).step()
    with pytest.raises(ValueError, match="the state is of a StepLR"):
        O.PowerLR(optimizer(), 0.1).load_state_dict(O.StepLR(optimizer(), 2).state_dict())
