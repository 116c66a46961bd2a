"""The training loop: ``fit`` and ``evaluate``.

Protocols (duck-typed):
* model: a ``Layer`` (usually ``Sequential``): ``forward(x, training)``, ``backward(dy[,
  need_input_grad])``, ``train(mode)``, ``state_dict()``/``load_state_dict()``, ``dtype``.
* loss: ``forward(pred, target) -> float`` (mean over the batch), ``backward() -> dpred``.
* optimizer: ``step()``, optional ``zero_grad()``, ``lr`` (the base learning rate),
  ``state_dict()``/``load_state_dict()`` (for checkpoints).
* callbacks: see ``nnkern.training.callbacks``.
"""

import inspect
import math
import sys
import time

import numpy as np

from nnkern.backend import CPU, check_device, cuda_available, to_host
from nnkern.training import state as st
from nnkern.training.history import History
from nnkern.training.progress import make_progress
from nnkern.training.transfer import BatchTransfer

CHECKPOINT_FORMAT = "nnkern-checkpoint"
CHECKPOINT_VERSION = 1
HOOKS = ("on_train_begin", "on_epoch_begin", "on_batch_begin", "on_batch_end", "on_epoch_end",
         "on_train_end")


def fit(model, loss, optimizer, train=None, val=None, epochs=1, batch_size=32, shuffle=True,
        seed=0, callbacks=(), val_split=0.0, device="cpu", resume=None, progress=None,
        dtype=None, val_batch_size=256):
    """Train ``model`` on ``train=(x, y)`` for ``epochs`` epochs of minibatch updates; returns
    a :class:`History`.

    Each epoch shuffles the training samples with a generator seeded once from ``seed``
    (``np.random.default_rng(seed)``; ``shuffle=False`` keeps their order) and walks them in
    minibatches of ``batch_size`` (the last one may be smaller). Each step: forward in training
    mode, ``loss.forward``, ``loss.backward``, ``model.backward`` (no input gradient),
    ``optimizer.step()``. Layers overwrite their parameters' gradients in backward, so
    ``optimizer.zero_grad()`` is called only once, before the first step. After each epoch the
    model is evaluated in eval mode on ``val=(x, y)``, or on ``val_split`` (a fraction in
    [0, 1)) of the training samples held out at random (the generator's first draw; the split
    is ``round(len(x) * val_split)`` samples). The model's train/eval mode is restored at the
    end.

    Batches are gathered per step (``x[idx]``; the data set is never copied as a whole) and
    converted to ``dtype`` (default: the model's dtype, float32 unless changed; a given dtype
    converts the model first) as contiguous arrays. Integer 1-D targets are class labels: the
    accuracy (argmax over axis 1 of the prediction, for predictions with 2+ columns) is recorded
    with the loss; float targets are converted to ``dtype`` and get no accuracy.

    A non-finite loss stops training at once (before the update) with a message naming the
    epoch, the step and the value, printed to stderr (even with ``progress=False``) and kept
    in ``history.stopped_reason`` (``history.diverged`` is True); ``fit`` returns normally.
    NumPy floating-point warnings (overflow, invalid) are silenced during training for this
    reason.

    callbacks: objects with optional ``on_*`` hooks (``nnkern.training.callbacks``).
    resume: path of a ``Checkpoint`` file: loads the model, optimizer, callbacks, generators and
    history and continues after the saved epoch; with the same arguments the final weights are
    identical, bit for bit, to those of an uninterrupted run. Build the model, optimizer and
    callbacks as for the original run (same architecture, same types, same order).
    progress: None/True (a tqdm bar per epoch when stderr is a terminal, else one line per
    epoch), False (silent), "bar" or "lines".
    device: "cpu", or "cuda" (moves the model there and copies each batch once).
    val_batch_size: batch size of the validation passes (results do not depend on it beyond
    float rounding).
    """
    trainer = Trainer(model, loss, optimizer, train=train, val=val, epochs=epochs,
                      batch_size=batch_size, shuffle=shuffle, seed=seed, callbacks=callbacks,
                      val_split=val_split, device=device, progress=progress, dtype=dtype,
                      val_batch_size=val_batch_size)
    return trainer.run(resume)


def evaluate(model, x, y, loss=None, batch_size=256, dtype=None):
    """``{"loss": mean loss or None (no loss given), "accuracy": fraction correct or None (not
    class labels)}`` of ``model`` on ``(x, y)``, in eval mode (the previous mode is restored),
    in batches of ``batch_size``. Batches go to the model's device and dtype."""
    _check_int("evaluate", "batch_size", batch_size)
    if loss is not None:
        _check_loss("evaluate", loss)
    x, y = _check_pair("evaluate", "(x, y)", (x, y))
    dtype = _resolve_dtype("evaluate", model, dtype)
    device = getattr(model, "device", CPU)
    return _evaluate(model, loss, x, y, None, batch_size, dtype, device)


class Trainer:
    """The state of one ``fit`` call; callbacks get it in ``on_train_begin``.

    Attributes: model, loss, optimizer, history, callbacks, epochs, batch_size,
    steps_per_epoch, has_validation, n_train, n_val, dtype, device, rng (the shuffling
    generator), epoch (the current epoch), step (global count of optimizer updates),
    stop_training (set True to stop after the current step), stop_reason.
    """

    def __init__(self, model, loss, optimizer, *, train, val, epochs, batch_size, shuffle, seed,
                 callbacks, val_split, device, progress, dtype, val_batch_size):
        self.epochs = _check_int("fit", "epochs", epochs)
        self.batch_size = _check_int("fit", "batch_size", batch_size)
        self.val_batch_size = _check_int("fit", "val_batch_size", val_batch_size)
        if not isinstance(shuffle, (bool, np.bool_)):
            raise TypeError(f"fit: shuffle must be True or False, got {shuffle!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                 or seed < 0):
            raise ValueError(f"fit: seed must be an int >= 0 or None, got {seed!r}")
        if isinstance(val_split, bool) or not isinstance(val_split, (int, float)) \
                or not 0.0 <= val_split < 1.0:
            raise ValueError(f"fit: val_split must be a number in [0, 1), got {val_split!r}")
        if val is not None and val_split > 0:
            raise ValueError("fit: give either val=(x, y) or val_split, not both")
        if not hasattr(model, "forward") or not hasattr(model, "backward"):
            raise TypeError(f"fit: model must be a Layer or Sequential, got {type(model).__name__}")
        _check_loss("fit", loss)
        if not callable(getattr(optimizer, "step", None)):
            raise TypeError(f"fit: optimizer must have a step() method, got "
                            f"{type(optimizer).__name__}")
        if isinstance(callbacks, (str, bytes)) or not hasattr(callbacks, "__iter__"):
            raise TypeError(f"fit: callbacks must be a list of callback objects, got "
                            f"{type(callbacks).__name__}")
        self.callbacks = list(callbacks)
        # Checkpoint (order 100) runs after the callbacks whose state it saves
        self._ordered = sorted(self.callbacks, key=lambda c: getattr(c, "order", 0))

        self.device = check_device(device)
        self._transfer = BatchTransfer(self.device)
        if self.device != CPU and not cuda_available():
            raise RuntimeError(f"fit: device={device!r} but no CUDA device is available "
                               "(nnkern.cuda_available() is False); use device='cpu'")
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.dtype = _resolve_dtype("fit", model, dtype)

        if train is None:
            raise TypeError("fit: missing the training data train=(x, y)")
        self.x, self.y = _check_pair("fit", "train", train)
        n = len(self.x)
        self.shuffle, self.seed, self.val_split = bool(shuffle), seed, float(val_split)
        self.rng = np.random.default_rng(seed)
        self.train_index = None  # indices of the training samples in x (None: all of them)
        self.val_x = self.val_y = self.val_index = None
        if val is not None:
            self.val_x, self.val_y = _check_pair("fit", "val", val)
            if self.val_x.shape[1:] != self.x.shape[1:]:
                raise ValueError(f"fit: val x has sample shape {self.val_x.shape[1:]} but train x "
                                 f"has {self.x.shape[1:]}")
        elif val_split > 0:
            n_val = round(n * val_split)
            if not 1 <= n_val < n:
                raise ValueError(f"fit: val_split={val_split} of {n} samples holds out {n_val}; "
                                 "need at least one validation and one training sample")
            order = self.rng.permutation(n)
            self.val_index, self.train_index = np.sort(order[:n_val]), np.sort(order[n_val:])
            self.val_x, self.val_y = self.x, self.y
        self.n_train = n if self.train_index is None else len(self.train_index)
        self.n_val = 0 if self.val_x is None else \
            (len(self.val_x) if self.val_index is None else len(self.val_index))
        self.has_validation = self.n_val > 0
        self.steps_per_epoch = -(-self.n_train // self.batch_size)
        self.classification = _is_labels(self.y)

        self.history = History()
        self.history.params = self.params()
        self.progress = make_progress(progress, self.epochs, self.steps_per_epoch)
        params = inspect.signature(model.backward).parameters
        self._backward_kwargs = {"need_input_grad": False} if "need_input_grad" in params else {}
        self.epoch, self.step, self.epochs_completed = 0, 0, 0
        self.stop_training, self.stop_reason = False, None

    def params(self):
        return {"epochs": self.epochs, "batch_size": self.batch_size, "shuffle": self.shuffle,
                "seed": self.seed, "val_split": self.val_split, "n_train": self.n_train,
                "n_val": self.n_val, "steps_per_epoch": self.steps_per_epoch,
                "dtype": str(self.dtype), "device": self.device}

    # -- device seam -------------------------------------------------------------------------------
    def _to_device(self, batch):
        """Copy one host batch to the training device (the only host→device copy per step)."""
        return self._transfer(batch)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self, resume=None):
        model, history = self.model, self.history
        was_training = bool(getattr(model, "training", True))
        if self.device != CPU:
            model.to(self.device)
        if _model_dtype(model) != self.dtype:
            model.astype(self.dtype)
        try:
            self._call("on_train_begin", self)
            if resume is not None:
                self.load_checkpoint(resume)
            elif callable(getattr(self.optimizer, "zero_grad", None)):
                self.optimizer.zero_grad()
            logs = {}
            # a diverging run overflows inside NumPy ops (BLAS matmul, ...) before the loss
            # turns non-finite; the explicit check below reports it once, clearly, instead
            # of a stream of RuntimeWarnings (the Numba kernels never warn)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                for epoch in range(self.epochs_completed, self.epochs):
                    if self.stop_training:
                        break
                    logs = self._epoch(epoch)
                    if logs is None:  # stopped inside the epoch
                        break
            if self.stop_training and self.stop_reason is None:
                self.stop_reason = f"stopped by a callback at epoch {self.epoch}"
            if self.stop_training and not history.diverged:  # divergence printed already
                self.progress.message(self.stop_reason)
            history.stopped_reason = self.stop_reason
            logs = dict(logs or {}, stopped_reason=self.stop_reason)
            self._call("on_train_end", logs)
        finally:
            self.progress.close()
            model.train(was_training)
        return history

    def _epoch(self, epoch):
        model, loss, history = self.model, self.loss, self.history
        self.epoch = epoch
        self._call("on_epoch_begin", epoch, {"epoch": epoch})
        if self.stop_training:
            return None
        lr = None
        model.train(True)
        self.progress.epoch_begin(epoch)
        order = self.rng.permutation(self.n_train) if self.shuffle else None
        total_loss, correct, seen = 0.0, 0, 0
        start = time.perf_counter()
        for batch in range(self.steps_per_epoch):
            lo, hi = batch * self.batch_size, min(self.n_train, (batch + 1) * self.batch_size)
            if order is not None:
                index = order[lo:hi] if self.train_index is None else self.train_index[order[lo:hi]]
            else:
                index = slice(lo, hi) if self.train_index is None else self.train_index[lo:hi]
            xb, yb, yb_host = _gather(self.x, self.y, index, self.dtype, self._to_device)
            size = hi - lo
            step = self.step
            logs = {"epoch": epoch, "batch": batch, "size": size}
            self._call("on_batch_begin", step, logs)
            step_lr = _lr(self.optimizer)  # after on_batch_begin: per-step schedules
            if batch == 0:
                lr = step_lr
            pred = model.forward(xb, training=True)
            value = float(loss.forward(pred, yb))
            count = _correct(pred, yb_host) if self.classification else None
            accuracy = None if count is None else count / size
            ema = history.record_step(epoch, value, size, accuracy, step_lr)
            if not math.isfinite(value):
                self._diverged(epoch, batch, step, value)
                return None
            model.backward(loss.backward(), **self._backward_kwargs)
            self.optimizer.step()
            self.step = step + 1
            total_loss += value * size
            seen += size
            if count is not None:
                correct += count
            logs.update(loss=value, ema_loss=ema, epoch_loss=total_loss / seen, lr=step_lr)
            if accuracy is not None:
                logs["accuracy"] = accuracy
            self._call("on_batch_end", step, logs)
            self.progress.step(logs)
            if self.stop_training:
                return None
        elapsed = time.perf_counter() - start

        logs = {"loss": total_loss / seen, "lr": lr, "time": elapsed}
        if self.classification:
            logs["accuracy"] = correct / seen
        if self.has_validation:
            result = _evaluate(model, loss, self.val_x, self.val_y, self.val_index,
                               self.val_batch_size, self.dtype, self.device)
            logs["val_loss"] = result["loss"]
            if result["accuracy"] is not None:
                logs["val_accuracy"] = result["accuracy"]
        history.record_epoch(logs)
        self.epochs_completed = epoch + 1
        self.progress.epoch_end(epoch, logs)
        self._call("on_epoch_end", epoch, logs)
        return logs

    def _diverged(self, epoch, batch, step, value):
        self.stop_training = True
        self.history.diverged = True
        self.stop_reason = (f"training diverged: the loss is {value} at epoch {epoch} (0-based), "
                            f"step {batch} of {self.steps_per_epoch} in that epoch (global step "
                            f"{step}); stopped before that update. Try a lower learning rate.")
        self.progress.close()
        print(f"nnkern.fit: {self.stop_reason}", file=sys.stderr, flush=True)

    def _call(self, hook, *args):
        for callback in self._ordered:
            fn = getattr(callback, hook, None)
            if fn is None:
                continue
            stopped = self.stop_training
            fn(*args)
            if self.stop_training and not stopped and self.stop_reason is None:
                self.stop_reason = (f"stopped by {type(callback).__name__}.{hook} at epoch "
                                    f"{self.epoch}")

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self, path):
        """Write everything needed to continue this run bit for bit to ``path`` (atomically)."""
        arrays = {f"model/{k}": to_host(v) for k, v in self.model.state_dict().items()}
        optimizer = None
        if callable(getattr(self.optimizer, "state_dict", None)):
            optimizer = st.pack(self.optimizer.state_dict(), arrays, "optimizer/")
        callbacks = [{"type": type(c).__name__,
                      "state": st.pack(c.state_dict(), arrays, f"callbacks/{i}/")}
                     for i, c in enumerate(self._stateful_callbacks())]
        history = self.history.to_dict()
        for group in ("steps", "epochs"):  # long float lists: stored as exact float64 arrays
            history[group] = {k: np.asarray(v, np.int64 if k in ("size", "epoch") else np.float64)
                              for k, v in self.history.__dict__[group].items()}
        header = {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "epochs_completed": self.epochs_completed, "global_step": self.step,
            "stop_training": bool(self.stop_training), "stop_reason": self.stop_reason,
            "fit": self.params(),
            "model": {"type": type(self.model).__name__, "dtype": str(self.dtype)},
            "optimizer": {"type": type(self.optimizer).__name__, "state": optimizer},
            "callbacks": callbacks,
            "shuffle_rng": st.pack(self.rng.bit_generator.state, arrays, "rng/"),
            "layer_rngs": {path: st.pack(layer.rng.bit_generator.state, arrays, "rng/")
                           for path, layer in _rng_layers(self.model)},
            "history": st.pack(history, arrays, "history/"),
        }
        st.write(path, header, arrays)

    def load_checkpoint(self, path):
        header, arrays = st.read(path, CHECKPOINT_FORMAT)
        if header.get("version", 0) > CHECKPOINT_VERSION:
            raise ValueError(f"{path}: checkpoint from a newer nnkern (format version "
                             f"{header['version']} > {CHECKPOINT_VERSION})")
        saved, now = header["fit"], self.params()
        keys = ["n_train", "n_val", "val_split", "dtype"] + (["seed"] if self.val_split else [])
        diff = [f"{k}: checkpoint {saved[k]!r}, now {now[k]!r}" for k in keys if saved[k] != now[k]]
        if diff:
            raise ValueError(f"fit(resume={path!r}): the checkpoint was made with other data or "
                             f"arguments ({'; '.join(diff)})")
        self.model.load_state_dict({k[len("model/"):]: v for k, v in arrays.items()
                                    if k.startswith("model/")})
        if header["optimizer"]["state"] is not None:
            if not callable(getattr(self.optimizer, "load_state_dict", None)):
                raise TypeError(f"fit(resume=...): {type(self.optimizer).__name__} has no "
                                "load_state_dict() for the saved optimizer state")
            self.optimizer.load_state_dict(st.unpack(header["optimizer"]["state"], arrays))
        stateful = self._stateful_callbacks()
        types = [c["type"] for c in header["callbacks"]]
        if types != [type(c).__name__ for c in stateful]:
            raise ValueError(f"fit(resume={path!r}): the checkpoint holds the states of the "
                             f"callbacks {types}, but this run's callbacks with state are "
                             f"{[type(c).__name__ for c in stateful]} (same types, same order)")
        for callback, entry in zip(stateful, header["callbacks"]):
            callback.load_state_dict(st.unpack(entry["state"], arrays))
        self.rng.bit_generator.state = st.unpack(header["shuffle_rng"], arrays)
        layers = dict(_rng_layers(self.model))
        if set(layers) != set(header["layer_rngs"]):
            raise ValueError(f"fit(resume={path!r}): the checkpoint has random generators for "
                             f"layers {sorted(header['layer_rngs'])}, the model for "
                             f"{sorted(layers)}")
        for where, state in header["layer_rngs"].items():
            layers[where].rng.bit_generator.state = st.unpack(state, arrays)
        history = st.unpack(header["history"], arrays)
        for group in ("steps", "epochs"):
            history[group] = {k: v.tolist() for k, v in history[group].items()}
        loaded = History.from_dict(history)
        loaded.params = self.history.params
        self.history.__dict__.update(loaded.__dict__)  # callbacks may hold this object
        self.epochs_completed = self.epoch = int(header["epochs_completed"])
        self.step = int(header["global_step"])
        self.stop_training = bool(header["stop_training"])
        self.stop_reason = header["stop_reason"]

    def _stateful_callbacks(self):
        return [c for c in self.callbacks if callable(getattr(c, "state_dict", None))]


# -- helpers ---------------------------------------------------------------------------------------
def _check_int(op, name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{op}: {name} must be an int >= 1, got {value!r}")
    return int(value)


def _check_loss(op, loss):
    if not callable(getattr(loss, "forward", None)) or not callable(getattr(loss, "backward",
                                                                            None)):
        raise TypeError(f"{op}: loss must have forward(pred, target) and backward() methods, "
                        f"got {type(loss).__name__}")


def _check_pair(op, name, pair):
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"{op}: {name} must be a pair (x, y) of arrays, got "
                        f"{type(pair).__name__}")
    x, y = (np.asarray(a) for a in pair)
    for what, a in (("x", x), ("y", y)):
        if a.ndim == 0:
            raise ValueError(f"{op}: {name} {what} must have a leading sample axis, got a scalar")
        if a.dtype.kind not in "fiub":
            raise TypeError(f"{op}: {name} {what} must hold real numbers, got dtype {a.dtype}")
    if len(x) != len(y):
        raise ValueError(f"{op}: {name} x has {len(x)} samples but y has {len(y)}")
    if len(x) == 0:
        raise ValueError(f"{op}: {name} has no samples")
    return x, y


def _model_dtype(model):
    """The dtype the model computes in (float32 for an object without one)."""
    return np.dtype(getattr(model, "dtype", np.float32))


def _resolve_dtype(op, model, dtype):
    dtype = _model_dtype(model) if dtype is None else np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{op}: dtype must be float32 or float64, got {dtype}")
    return dtype


def _is_labels(y):
    return y.ndim == 1 and y.dtype.kind in "iu"


def _gather(x, y, index, dtype, to_dev):
    """One batch: inputs as contiguous ``dtype`` arrays, float targets likewise, integer labels
    as they are; returns (x, y) on the device and y on the host (for the accuracy)."""
    xb = np.ascontiguousarray(x[index], dtype=dtype)
    yb = y[index]
    yb = np.ascontiguousarray(yb, dtype=dtype if yb.dtype.kind in "fb" else None)
    return to_dev(xb), to_dev(yb), yb


def _correct(pred, labels):
    """Number of rows whose argmax is the label; None when pred is not (N, classes >= 2)."""
    if len(pred.shape) != 2 or pred.shape[1] < 2:
        return None
    return int(np.count_nonzero(np.argmax(to_host(pred), axis=1) == labels))


def _lr(optimizer):
    lr = getattr(optimizer, "lr", None)
    return None if lr is None else float(lr)


def _evaluate(model, loss, x, y, index, batch_size, dtype, device):
    n = len(x) if index is None else len(index)
    labels = _is_labels(y)
    total, correct, counted = 0.0, 0, labels
    transfer = BatchTransfer(device)
    was_training = bool(getattr(model, "training", False))
    model.train(False)
    try:
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            idx = slice(lo, hi) if index is None else index[lo:hi]
            xb, yb, yb_host = _gather(x, y, idx, dtype, transfer)
            pred = model.forward(xb, training=False)
            if loss is not None:
                total += float(loss.forward(pred, yb)) * (hi - lo)
            if counted:
                count = _correct(pred, yb_host)
                counted = count is not None
                correct += count or 0
    finally:
        model.train(was_training)
    return {"loss": total / n if loss is not None else None,
            "accuracy": correct / n if counted else None}


def _rng_layers(model, prefix=""):
    """[(path, layer)] of the layers holding a numpy Generator ``rng`` (Dropout): "3" is the
    model's layer 3, "2.1" layer 1 of layer 2, "" the model itself."""
    found = []
    if isinstance(getattr(model, "rng", None), np.random.Generator):
        found.append((prefix.rstrip("."), model))
    for i, child in enumerate(getattr(model, "layers", None) or ()):
        found += _rng_layers(child, f"{prefix}{i}.")
    return found


__all__ = ["fit", "evaluate", "Trainer"]
