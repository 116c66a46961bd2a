"""Learning-rate schedules: each sets ``optimizer.lr`` (the base learning rate) once per epoch.

Use one either by hand, calling ``schedule.step()`` after each epoch (``step(metric)`` for
:class:`ReduceLROnPlateau`), or as a training callback: ``nnkern.fit`` calls
``on_epoch_end(epoch, logs)`` after each epoch, which steps (with ``logs[monitor]`` for
ReduceLROnPlateau). ``t`` below counts completed epochs: epoch 0 trains with η0 (the
optimizer's lr when the schedule was made), epoch t with η(t). ``last_lr`` is the rate set
last; ``state_dict()``/``load_state_dict()`` save and restore the schedule (loading also sets
``optimizer.lr`` to ``last_lr``) so that a resumed training continues exactly.

The closed forms are evaluated from η0 each epoch (no error accumulates from repeated
multiplication); setting ``optimizer.lr`` by hand is overridden at the next step, except by
ReduceLROnPlateau, which always scales the current rate.
"""

import math
import numbers

from nnkern import _validate as v


class LRSchedule:
    """Base class: subclasses implement ``lr_at(t)``, the rate after t completed epochs."""

    def __init__(self, optimizer):
        name = type(self).__name__
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"{name}: expected an optimizer (with an lr attribute), got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.epoch = 0
        self.last_lr = self.base_lr

    def lr_at(self, t):
        raise NotImplementedError

    def step(self, metric=None):
        """Advance one epoch; sets and returns the learning rate of the next epoch."""
        self.epoch += 1
        self._set(self.lr_at(self.epoch))
        return self.last_lr

    def _set(self, lr):
        self.optimizer.lr = lr
        self.last_lr = float(self.optimizer.lr)

    def on_epoch_end(self, epoch, logs=None):
        """Training-callback hook (epochs count from 0): one step."""
        self.step()

    def _settings(self):
        return {}

    def state_dict(self):
        return {"type": type(self).__name__, "epoch": self.epoch, "base_lr": self.base_lr,
                "last_lr": self.last_lr, **self._settings()}

    def load_state_dict(self, state):
        name = type(self).__name__
        state = dict(state)
        if state.get("type", name) != name:
            raise ValueError(f"{name}.load_state_dict: the state is of a {state['type']}")
        self.epoch = v.check_int(name, "epoch", state["epoch"], 0)
        self.base_lr = v.check_float(name, "base_lr", state["base_lr"], 0.0)
        last_lr = v.check_float(name, "last_lr", state["last_lr"], 0.0)
        for key in self._settings():
            if key in state:
                setattr(self, key, state[key])
        self._set(last_lr)
        return self

    def __repr__(self):
        settings = ", ".join(f"{k}={val!r}" for k, val in self._settings().items())
        return f"{type(self).__name__}({settings}, epoch={self.epoch}, last_lr={self.last_lr!r})"


class StepLR(LRSchedule):
    """``StepLR(optimizer, step_size, gamma=0.1)``: η(t) = η0 · gamma^floor(t / step_size)
    (seed S2 eq 2.25, "multiply by k every few epochs"; torch.optim.lr_scheduler.StepLR)."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        super().__init__(optimizer)
        self.step_size = v.check_int("StepLR", "step_size", step_size, 1)
        self.gamma = v.check_float("StepLR", "gamma", gamma, 0.0, None, True)

    def lr_at(self, t):
        return self.base_lr * self.gamma ** (t // self.step_size)

    def _settings(self):
        return {"step_size": self.step_size, "gamma": self.gamma}


class ExponentialLR(LRSchedule):
    """``ExponentialLR(optimizer, gamma)``: η(t) = η0 · gamma^t. Seed S2 eq 2.23's
    η0 · e^(−kt) is gamma = e^(−k); S3's ε0 · 0.1^(t/s) is gamma = 0.1^(1/s)."""

    def __init__(self, optimizer, gamma):
        super().__init__(optimizer)
        self.gamma = v.check_float("ExponentialLR", "gamma", gamma, 0.0, None, True)

    def lr_at(self, t):
        return self.base_lr * self.gamma ** t

    def _settings(self):
        return {"gamma": self.gamma}


class PowerLR(LRSchedule):
    """``PowerLR(optimizer, k)``: η(t) = η0 / (1 + k·t) (seed S2 eq 2.24; S3's ε0 / (1 + t/s)
    is k = 1/s)."""

    def __init__(self, optimizer, k):
        super().__init__(optimizer)
        self.k = v.check_float("PowerLR", "k", k, 0.0)

    def lr_at(self, t):
        return self.base_lr / (1.0 + self.k * t)

    def _settings(self):
        return {"k": self.k}


class LinearLR(LRSchedule):
    """``LinearLR(optimizer, final_lr, total_epochs)``: η(t) = η0 − t (η0 − final_lr) /
    total_epochs for t < total_epochs, then final_lr (seed S2 eq 2.22, with t_sat =
    total_epochs and η_min = final_lr)."""

    def __init__(self, optimizer, final_lr, total_epochs):
        super().__init__(optimizer)
        self.final_lr = v.check_float("LinearLR", "final_lr", final_lr, 0.0)
        self.total_epochs = v.check_int("LinearLR", "total_epochs", total_epochs, 1)

    def lr_at(self, t):
        if t >= self.total_epochs:
            return self.final_lr
        return self.base_lr - t * (self.base_lr - self.final_lr) / self.total_epochs

    def _settings(self):
        return {"final_lr": self.final_lr, "total_epochs": self.total_epochs}


class ReduceLROnPlateau(LRSchedule):
    """``ReduceLROnPlateau(optimizer, factor=0.5, patience=5, monitor="val_accuracy",
    mode="max", min_lr=0, threshold=0, *, cooldown=0, eps=1e-8)``: multiply the rate by
    ``factor`` when the monitored metric has not improved for more than ``patience`` epochs
    (seed S2's experiments: halve when the validation accuracy has not improved for 5 epochs).

    Counting is torch.optim.lr_scheduler.ReduceLROnPlateau's (threshold_mode "rel"): a metric
    improves when it is > best · (1 + threshold) (mode "max") or < best · (1 − threshold)
    (mode "min"); each non-improving epoch adds one to ``num_bad_epochs``, and when that
    exceeds ``patience`` the rate becomes max(lr · factor, min_lr) (unchanged if that changes
    it by no more than ``eps``) and the count restarts, after ``cooldown`` epochs in which it
    is held at 0. With patience 5, the rate drops after the 6th epoch in a row without
    improvement. A NaN metric never improves.
    """

    def __init__(self, optimizer, factor=0.5, patience=5, monitor="val_accuracy", mode="max",
                 min_lr=0.0, threshold=0.0, *, cooldown=0, eps=1e-8):
        super().__init__(optimizer)
        name = "ReduceLROnPlateau"
        self.factor = v.check_float(name, "factor", factor, 0.0, 1.0, True, True)
        self.patience = v.check_int(name, "patience", patience, 0)
        if not isinstance(monitor, str):
            raise TypeError(f"{name}: monitor must be a logs key (a str), got {monitor!r}")
        self.monitor = monitor
        if mode not in ("min", "max"):
            raise ValueError(f"{name}: mode must be 'min' or 'max', got {mode!r}")
        self.mode = mode
        self.min_lr = v.check_float(name, "min_lr", min_lr, 0.0)
        self.threshold = v.check_float(name, "threshold", threshold, 0.0)
        self.cooldown = v.check_int(name, "cooldown", cooldown, 0)
        self.eps = v.check_float(name, "eps", eps, 0.0)
        self.best = -math.inf if mode == "max" else math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def _improves(self, value):
        if self.mode == "max":
            return value > self.best * (1.0 + self.threshold) if self.best != -math.inf \
                else value > self.best
        return value < self.best * (1.0 - self.threshold) if self.best != math.inf \
            else value < self.best

    def step(self, metric=None):
        """Advance one epoch with the monitored metric's value for it."""
        name = type(self).__name__
        if isinstance(metric, bool) or not isinstance(metric, numbers.Real):
            try:
                metric = float(metric)  # numpy scalars and 0-d arrays
            except (TypeError, ValueError):
                raise TypeError(f"{name}.step: metric must be a number (the {self.monitor!r} "
                                f"of the epoch), got {type(metric).__name__} {metric!r}") from None
        metric = float(metric)
        self.epoch += 1
        if self._improves(metric):
            self.best = metric
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            old = float(self.optimizer.lr)
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps:
                self.optimizer.lr = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self.last_lr = float(self.optimizer.lr)
        return self.last_lr

    def on_epoch_end(self, epoch, logs=None):
        """Training-callback hook: ``step(logs[monitor])``."""
        logs = logs or {}
        if self.monitor not in logs or logs[self.monitor] is None:
            raise ValueError(f"ReduceLROnPlateau: monitor {self.monitor!r} is not in the epoch "
                             f"logs (keys: {sorted(logs)}); give validation data or monitor "
                             "another key, e.g. monitor='loss', mode='min'")
        self.step(logs[self.monitor])

    def _settings(self):
        return {"factor": self.factor, "patience": self.patience, "monitor": self.monitor,
                "mode": self.mode, "min_lr": self.min_lr, "threshold": self.threshold,
                "cooldown": self.cooldown, "eps": self.eps, "best": self.best,
                "num_bad_epochs": self.num_bad_epochs, "cooldown_counter": self.cooldown_counter}
