"""Callbacks for ``nnkern.fit``.

A callback is any object with some of these methods (all optional; ``Callback`` has them all as
no-ops):

* ``on_train_begin(trainer)``: once, before the first epoch (also when resuming, before the
  checkpoint's states are loaded). ``trainer`` gives access to ``model``, ``optimizer``,
  ``loss``, ``history``, ``epochs``, ``batch_size``, ``steps_per_epoch``, ``has_validation``;
  set ``trainer.stop_training = True`` (and optionally ``trainer.stop_reason``) to stop.
* ``on_epoch_begin(epoch, logs)``: epochs count from 0; logs is {"epoch": epoch}.
* ``on_batch_begin(step, logs)`` / ``on_batch_end(step, logs)``: ``step`` is the global step
  (0-based count of optimizer updates, continued across epochs); logs has "epoch", "batch" (index
  in the epoch), "size", "loss", "accuracy" (classification), "ema_loss", "epoch_loss" (running
  mean over the epoch so far), "lr" (the last three only in on_batch_end).
* ``on_epoch_end(epoch, logs)``: logs has "loss", "accuracy", "val_loss", "val_accuracy",
  "lr", "time" (absent keys: not computed).
* ``on_train_end(logs)``: once at the end (logs: the last epoch's logs, "stopped_reason").
* ``state_dict()`` / ``load_state_dict(state)``: saved in and restored from checkpoints
  (dicts of numbers, strings, lists and arrays).

Callbacks run in the order given, except that those with a higher ``order`` attribute run
later (``Checkpoint`` has order 100 so that it saves the states every other callback has
updated at the end of the epoch).
"""

import math

from nnkern.training.history import _mode


class Callback:
    """Base class with no-op hooks; ``self.trainer`` is set by ``on_train_begin``."""

    order = 0
    trainer = None

    def on_train_begin(self, trainer):
        self.trainer = trainer

    def on_epoch_begin(self, epoch, logs):
        pass

    def on_batch_begin(self, step, logs):
        pass

    def on_batch_end(self, step, logs):
        pass

    def on_epoch_end(self, epoch, logs):
        pass

    def on_train_end(self, logs):
        pass


class LambdaCallback(Callback):
    """A callback from functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``.
    Accepts on_train_begin(trainer), on_epoch_begin(epoch, logs), on_batch_begin(step, logs),
    on_batch_end(step, logs), on_epoch_end(epoch, logs), on_train_end(logs)."""

    HOOKS = ("on_train_begin", "on_epoch_begin", "on_batch_begin", "on_batch_end",
             "on_epoch_end", "on_train_end")

    def __init__(self, **hooks):
        for name, fn in hooks.items():
            if name not in self.HOOKS:
                raise TypeError(f"LambdaCallback: unknown hook {name!r}; known: {self.HOOKS}")
            if not callable(fn):
                raise TypeError(f"LambdaCallback: {name} must be callable, got "
                                f"{type(fn).__name__}")
        self.hooks = hooks

    def on_train_begin(self, trainer):
        super().on_train_begin(trainer)
        if "on_train_begin" in self.hooks:
            self.hooks["on_train_begin"](trainer)

    def on_epoch_begin(self, epoch, logs):
        if "on_epoch_begin" in self.hooks:
            self.hooks["on_epoch_begin"](epoch, logs)

    def on_batch_begin(self, step, logs):
        if "on_batch_begin" in self.hooks:
            self.hooks["on_batch_begin"](step, logs)

    def on_batch_end(self, step, logs):
        if "on_batch_end" in self.hooks:
            self.hooks["on_batch_end"](step, logs)

    def on_epoch_end(self, epoch, logs):
        if "on_epoch_end" in self.hooks:
            self.hooks["on_epoch_end"](epoch, logs)

    def on_train_end(self, logs):
        if "on_train_end" in self.hooks:
            self.hooks["on_train_end"](logs)


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs (seed 002: val accuracy,
    patience 20); with ``restore_best_weights`` the model gets the parameters and buffers of
    its best epoch back when training ends, whether it stopped early or ran all epochs
    (seed 002 keeps the best parameters, S2:887).

    mode: "min", "max" or "auto" (max for names containing "acc", else min). An epoch improves
    when value < best - min_delta (min) or value > best + min_delta (max); nan never improves.
    """

    def __init__(self, monitor="val_loss", patience=20, mode="auto", min_delta=0.0,
                 restore_best_weights=True):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"EarlyStopping: patience must be an int >= 1, got {patience!r}")
        if not isinstance(min_delta, (int, float)) or not min_delta >= 0:
            raise ValueError(f"EarlyStopping: min_delta must be >= 0, got {min_delta!r}")
        self.monitor = str(monitor)
        self.mode = _mode(self.monitor, mode)
        self.patience, self.min_delta = patience, float(min_delta)
        self.restore_best_weights = bool(restore_best_weights)
        self._reset()

    def _reset(self):
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = None
        self.wait = 0
        self.stopped_epoch = None
        self.best_weights = None

    def on_train_begin(self, trainer):
        super().on_train_begin(trainer)
        self._reset()
        if self.monitor.startswith("val_") and not trainer.has_validation:
            raise ValueError(f"EarlyStopping: monitor {self.monitor!r} needs validation data; "
                             "pass val=(x, y) or val_split= to fit")

    def _improved(self, value):
        if math.isnan(value):
            return False
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs):
        if logs.get(self.monitor) is None:
            raise KeyError(f"EarlyStopping: monitor {self.monitor!r} is not in the epoch logs; "
                           f"available: {sorted(k for k, v in logs.items() if v is not None)}")
        value = float(logs[self.monitor])
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.trainer.model.state_dict()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.trainer.stop_training = True
            best = "none" if self.best_epoch is None else \
                f"best {self.best:.6g} at epoch {self.best_epoch}"
            self.trainer.stop_reason = (f"early stopping at epoch {epoch}: {self.monitor} did not "
                                        f"improve for {self.patience} epochs ({best})")

    def on_train_end(self, logs):
        if self.restore_best_weights and self.best_weights is not None:
            self.trainer.model.load_state_dict(self.best_weights)

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch, "best_weights": self.best_weights}

    def load_state_dict(self, state):
        self.best = float(state["best"])
        self.best_epoch, self.wait = state["best_epoch"], int(state["wait"])
        self.stopped_epoch, self.best_weights = state["stopped_epoch"], state["best_weights"]


class Checkpoint(Callback):
    """Save everything needed to resume training bit for bit (see ``nnkern.fit(resume=)``)
    every ``every`` epochs, after the last epoch and when training stops early.

    ``path`` may contain ``{epoch}`` (the number of completed epochs, e.g.
    "run-{epoch:03d}.npz"); otherwise each save replaces the previous one. Each write is atomic
    (temp file + rename): a crash leaves the previous checkpoint intact. The file holds the
    model's state, the optimizer's and every callback's ``state_dict``, the shuffling
    generator's state, the Dropout layers' generator states, the History and the epoch.
    """

    order = 100

    def __init__(self, path, every=1):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"Checkpoint: every must be an int >= 1, got {every!r}")
        self.path, self.every = path, every
        self.last_path = None

    def on_epoch_end(self, epoch, logs):
        trainer = self.trainer
        if (epoch + 1) % self.every == 0 or epoch + 1 == trainer.epochs \
                or trainer.stop_training:
            path = str(self.path)
            if "{" in path:
                path = path.format(epoch=epoch + 1)
            trainer.save_checkpoint(path)
            self.last_path = path
