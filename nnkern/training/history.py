"""History: what ``nnkern.fit`` records, saved as JSON and drawn with matplotlib."""

import json
import math
from collections import namedtuple

from nnkern.model import atomic_write

FORMAT = "nnkern-history"
FORMAT_VERSION = 1

#: per optimizer step
STEP_KEYS = ("loss", "accuracy", "ema_loss", "size", "epoch", "lr")
#: per completed epoch
EPOCH_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "time")
#: coefficient of the exponential moving average of the training loss (seed 000's plots)
EMA = 0.99

Best = namedtuple("Best", "epoch value")


def _mode(metric, mode):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if "acc" in metric else "min"
    return mode


class History:
    """The record of one training run.

    ``steps``: per optimizer step, lists "loss" (the minibatch mean loss), "accuracy" (minibatch
    accuracy; empty when the targets are not class labels), "ema_loss" (exponential moving
    average of the loss with coefficient 0.99: ``ema ← 0.99·ema + 0.01·loss``, started at the
    first step's loss, so ``ema_loss[0] == loss[0]``), "size" (samples in the minibatch),
    "epoch" (the epoch the step belongs to) and "lr" (the optimizer's base learning rate used
    by the step, read after the ``on_batch_begin`` callbacks).

    ``epochs``: per completed epoch, lists "loss" and "accuracy" (means over the epoch's training
    samples, i.e. the step values weighted by minibatch size), "val_loss" and "val_accuracy"
    (after the epoch, in eval mode; empty without validation data), "lr" (the base learning
    rate of the epoch's first step) and "time"
    (wall seconds of the epoch's training steps, validation excluded).

    ``epochs_completed``; ``stopped_reason`` (None, or why training ended before ``epochs``: a
    non-finite loss, early stopping, a callback); ``diverged`` (True when a non-finite loss
    stopped training); ``params`` (the ``fit`` arguments that shape the run).

    ``history["val_loss"]`` is ``history.epochs["val_loss"]``.
    """

    def __init__(self):
        self.steps = {k: [] for k in STEP_KEYS}
        self.epochs = {k: [] for k in EPOCH_KEYS}
        self.epochs_completed = 0
        self.stopped_reason = None
        self.diverged = False
        self.params = {}

    # -- recording (used by the training loop) ---------------------------------------------------
    def record_step(self, epoch, loss, size, accuracy=None, lr=None):
        steps = self.steps
        ema = loss if not steps["ema_loss"] else EMA * steps["ema_loss"][-1] + (1 - EMA) * loss
        steps["loss"].append(loss)
        steps["ema_loss"].append(ema)
        steps["size"].append(size)
        steps["epoch"].append(epoch)
        if accuracy is not None:
            steps["accuracy"].append(accuracy)
        if lr is not None:
            steps["lr"].append(lr)
        return ema

    def record_epoch(self, logs):
        for key in EPOCH_KEYS:
            if logs.get(key) is not None:
                self.epochs[key].append(logs[key])
        self.epochs_completed += 1

    # -- queries ---------------------------------------------------------------------------------
    def __getitem__(self, key):
        return self.epochs[key]

    @property
    def ema_loss(self):
        return self.steps["ema_loss"]

    def best(self, metric="val_loss", mode="auto"):
        """``Best(epoch, value)``: the epoch (0-based) with the lowest (loss-like metrics) or
        highest (names containing "acc") value of the per-epoch ``metric``; ties go to the
        earliest epoch, nan values are skipped."""
        values = self.epochs.get(metric)
        if values is None:
            raise KeyError(f"History.best: unknown metric {metric!r}; per-epoch metrics are "
                           f"{list(self.epochs)}")
        sign = -1.0 if _mode(metric, mode) == "max" else 1.0
        finite = [(sign * v, i) for i, v in enumerate(values) if not math.isnan(v)]
        if not finite:
            raise ValueError(f"History.best: no recorded values of {metric!r}")
        _, epoch = min(finite)
        return Best(epoch, values[epoch])

    def __repr__(self):
        last = {k: v[-1] for k, v in self.epochs.items() if v}
        extra = f", stopped_reason={self.stopped_reason!r}" if self.stopped_reason else ""
        return f"History(epochs_completed={self.epochs_completed}, last={last}{extra})"

    # -- JSON ------------------------------------------------------------------------------------
    def to_dict(self):
        return {"format": FORMAT, "version": FORMAT_VERSION,
                "steps": {k: [_encode(v) for v in vs] for k, vs in self.steps.items()},
                "epochs": {k: [_encode(v) for v in vs] for k, vs in self.epochs.items()},
                "epochs_completed": self.epochs_completed,
                "stopped_reason": self.stopped_reason, "diverged": self.diverged,
                "params": self.params}

    @classmethod
    def from_dict(cls, data):
        if data.get("format") != FORMAT:
            raise ValueError(f"not an nnkern history (format {data.get('format')!r})")
        if data.get("version", 0) > FORMAT_VERSION:
            raise ValueError(f"history saved by a newer nnkern (format version "
                             f"{data['version']} > {FORMAT_VERSION})")
        history = cls()
        for key, values in data["steps"].items():
            history.steps[key] = [_decode(v) for v in values]
        for key, values in data["epochs"].items():
            history.epochs[key] = [_decode(v) for v in values]
        history.epochs_completed = int(data["epochs_completed"])
        history.stopped_reason = data.get("stopped_reason")
        history.diverged = bool(data.get("diverged", False))
        history.params = dict(data.get("params", {}))
        return history

    def to_json(self, path):
        """Write the history to ``path`` as (standard) JSON, atomically; non-finite numbers are
        written as the strings "nan", "inf", "-inf"."""
        text = json.dumps(self.to_dict(), allow_nan=False)
        atomic_write(path, lambda f: f.write(text.encode()))

    @classmethod
    def from_json(cls, path):
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    # -- plotting --------------------------------------------------------------------------------
    def plot(self, path, title=None, dpi=100):
        """Draw the learning curves in the style of the seeds and save them to ``path`` (PNG).

        Left: the EMA-0.99 training loss after each step (seed 000), against epochs (step k of
        an epoch with n steps sits at epoch + (k+1)/n), with the validation loss after each
        epoch as markers. Right (when accuracies were recorded): validation accuracy per epoch
        (solid, seed 002) and training accuracy per epoch (dashed). Uses matplotlib's Agg
        canvas directly: no display, no pyplot state. Returns the matplotlib Figure.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        has_acc = bool(self.epochs["val_accuracy"] or self.epochs["accuracy"])
        fig = Figure(figsize=(11 if has_acc else 6, 4), dpi=dpi)
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2 if has_acc else 1, squeeze=False)[0]

        ax = axes[0]
        if self.steps["ema_loss"]:
            ax.plot(_step_positions(self.steps["epoch"]), self.steps["ema_loss"], lw=1,
                    label="training loss (EMA 0.99, per step)")
        epochs = range(1, len(self.epochs["val_loss"]) + 1)
        if self.epochs["val_loss"]:
            ax.plot(epochs, self.epochs["val_loss"], "o-", ms=3, label="validation loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()

        if has_acc:
            ax = axes[1]
            if self.epochs["val_accuracy"]:
                ax.plot(range(1, len(self.epochs["val_accuracy"]) + 1),
                        self.epochs["val_accuracy"], "-", label="validation accuracy")
            if self.epochs["accuracy"]:
                ax.plot(range(1, len(self.epochs["accuracy"]) + 1), self.epochs["accuracy"],
                        "--", label="training accuracy")
            ax.set_xlabel("epoch")
            ax.set_ylabel("accuracy")
            ax.grid(alpha=0.3)
            ax.legend()

        text = title or ""
        if self.stopped_reason:
            text = f"{text}\n{self.stopped_reason}" if text else self.stopped_reason
        if text:
            fig.suptitle(text, fontsize=9)
        fig.tight_layout()
        fig.savefig(path)
        return fig


def _step_positions(step_epochs):
    """x position (in epochs) of each step: epoch + (k+1)/n for step k of n in its epoch."""
    counts = {}
    for e in step_epochs:
        counts[e] = counts.get(e, 0) + 1
    seen = {}
    positions = []
    for e in step_epochs:
        seen[e] = seen.get(e, 0) + 1
        positions.append(e + seen[e] / counts[e])
    return positions


def _encode(value):
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # "nan", "inf", "-inf"
    return value


def _decode(value):
    return float(value) if isinstance(value, str) else value
