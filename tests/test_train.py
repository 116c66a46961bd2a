"""Tests of nnkern.fit / evaluate / History / callbacks / checkpoints.

The loss, optimizer and schedule used here are small local stand-ins following the protocols of
nnkern.training.loop (nnkern.losses and nnkern.optim live on other branches). ReLU, Dropout and
BatchNorm1D are the real layers when their ops are present, else NumPy stand-ins with the same
state (Dropout draws from its ``rng``; BatchNorm keeps running stats and num_batches_tracked).
"""

import importlib.util
import io
import os
import sys

import numpy as np
import pytest

import nnkern
from nnkern import Checkpoint, EarlyStopping, History, LambdaCallback, Sequential, evaluate, fit
from nnkern.layers import BatchNorm1D as _RealBatchNorm1D
from nnkern.layers import Dense, Layer
from nnkern.layers import Dropout as _RealDropout
from nnkern.layers import ReLU as _RealReLU
from nnkern.training import state as st
from nnkern.training.progress import Lines, make_progress


def _has_op(package):
    return importlib.util.find_spec(f"nnkern.ops.{package}") is not None


# -- stand-ins -----------------------------------------------------------------------------------
class NumpyReLU(Layer):
    def _forward(self, x, training):
        self._mask = x > 0
        return x * self._mask

    def _backward(self, dy):
        return dy * self._mask


class NumpyDropout(_RealDropout):
    """Inverted dropout with the mask drawn from ``self.rng`` (as the real layer's seed is)."""

    def _forward(self, x, training):
        p = self.config["p"]
        self._active = training and p > 0
        if not self._active:
            return x
        self._mask = (self.rng.random(x.shape) >= p).astype(x.dtype) / x.dtype.type(1 - p)
        return x * self._mask

    def _backward(self, dy):
        return dy * self._mask if self._active else dy


class NumpyBatchNorm1D(_RealBatchNorm1D):
    """PyTorch semantics on (N, F): batch stats + momentum update of running stats in training."""

    def _forward(self, x, training):
        eps, m = self.config["eps"], self.config["momentum"]
        if training:
            self.num_batches_tracked += 1
            mean, var = x.mean(0), x.var(0)
            unbiased = var * (len(x) / max(len(x) - 1, 1))
            self._set_buffer("running_mean", (1 - m) * self.buffer("running_mean") + m * mean)
            self._set_buffer("running_var", (1 - m) * self.buffer("running_var") + m * unbiased)
        else:
            mean, var = self.buffer("running_mean"), self.buffer("running_var")
        self._inv = (1 / np.sqrt(var + eps)).astype(x.dtype)
        self._xhat = (x - mean) * self._inv
        self._train = training
        return self.gamma.data * self._xhat + self.beta.data

    def _backward(self, dy):
        xhat, inv = self._xhat, self._inv
        self.gamma.grad[...] = (dy * xhat).sum(0)
        self.beta.grad[...] = dy.sum(0)
        dxhat = dy * self.gamma.data
        if not self._train:
            return dxhat * inv
        n = dy.shape[0]
        return inv / n * (n * dxhat - dxhat.sum(0) - xhat * (dxhat * xhat).sum(0))


def ReLU():
    return _RealReLU() if _has_op("activation") else NumpyReLU()


def Dropout(p, rng):
    return _RealDropout(p, rng=rng) if _has_op("dropout") else NumpyDropout(p, rng=rng)


def BatchNorm1D(n):
    return _RealBatchNorm1D(n) if _has_op("batch_norm") else NumpyBatchNorm1D(n)


class CrossEntropy:
    """Mean softmax cross-entropy over integer labels."""

    def forward(self, pred, target):
        with np.errstate(all="ignore"):
            z = pred - pred.max(1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        self._p, self._t = np.exp(logp), target
        return float(-logp[np.arange(len(target)), target].mean())

    def backward(self):
        d = self._p.copy()
        d[np.arange(len(self._t)), self._t] -= 1
        return d / d.dtype.type(len(self._t))


class MSE:
    def forward(self, pred, target):
        with np.errstate(all="ignore"):
            self._d = pred - target
            return float(np.mean(self._d.astype(np.float64) ** 2))

    def backward(self):
        with np.errstate(all="ignore"):
            return self._d * self._d.dtype.type(2 / self._d.size)


class SGD:
    """SGD with (heavy-ball) momentum; state: lr, step count, per-parameter velocities."""

    def __init__(self, params, lr, momentum=0.0):
        self.params, self.lr, self.momentum = list(params), lr, momentum
        self.velocity = {}
        self.steps = 0

    def zero_grad(self):
        for p in self.params:
            p.grad[...] = 0

    def step(self):
        with np.errstate(all="ignore"):
            for i, p in enumerate(self.params):
                g = p.grad
                if self.momentum:
                    v = self.velocity.get(i)
                    g = self.velocity[i] = g.copy() if v is None else self.momentum * v + g
                data = p.data
                data -= self.lr * g
        self.steps += 1

    def state_dict(self):
        return {"lr": self.lr, "momentum": self.momentum, "steps": self.steps,
                "velocity": {i: v.copy() for i, v in self.velocity.items()}}

    def load_state_dict(self, state):
        self.lr, self.momentum, self.steps = state["lr"], state["momentum"], state["steps"]
        self.velocity = {i: v.copy() for i, v in state["velocity"].items()}


class StepLR:
    """A schedule callback: lr *= gamma every step_size epochs."""

    def __init__(self, step_size, gamma):
        self.step_size, self.gamma, self.epochs_seen = step_size, gamma, 0

    def on_train_begin(self, trainer):
        self.optimizer = trainer.optimizer

    def on_epoch_end(self, epoch, logs):
        self.epochs_seen += 1
        if self.epochs_seen % self.step_size == 0:
            self.optimizer.lr *= self.gamma

    def state_dict(self):
        return {"epochs_seen": self.epochs_seen}

    def load_state_dict(self, state):
        self.epochs_seen = state["epochs_seen"]


class ReducePlateau:
    """ReduceLROnPlateau-like, written only against the callback protocol."""

    def __init__(self, monitor, factor=0.5, patience=1):
        self.monitor, self.factor, self.patience = monitor, factor, patience
        self.best, self.wait = np.inf, 0

    def on_train_begin(self, trainer):
        self.trainer = trainer

    def on_epoch_end(self, epoch, logs):
        if logs[self.monitor] < self.best:
            self.best, self.wait = logs[self.monitor], 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.trainer.optimizer.lr *= self.factor
            self.wait = 0


class Recorder(Layer):
    """Identity layer remembering the first input column (a sample id) and the mode."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def _forward(self, x, training):
        self.seen.append((bool(training), x[:, 0].copy()))
        return x

    def _backward(self, dy):
        return dy


# -- data and models -----------------------------------------------------------------------------
def blobs(n=240, seed=0):
    """Three Gaussian blobs in 2-D, integer labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.array([[0.0, 2.5], [2.5, -1.5], [-2.5, -1.5]])
    x = (centres[y] + rng.standard_normal((n, 2))).astype(np.float32)
    return x, y


def mlp(seed=0, hidden=16, dropout=False, batchnorm=False):
    rng = np.random.default_rng(seed)
    layers = [Dense(2, hidden, rng=rng)]
    if batchnorm:
        layers.append(BatchNorm1D(hidden))
    layers.append(ReLU())
    if dropout:
        layers.append(Dropout(0.3, rng=np.random.default_rng(seed + 100)))
    layers.append(Dense(hidden, 3, rng=rng))
    return Sequential(*layers)


def weights(model):
    return model.state_dict()


def assert_same_weights(a, b):
    sa, sb = weights(a), weights(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert np.array_equal(sa[k], sb[k]), k


# -- training ------------------------------------------------------------------------------------
def test_training_reduces_loss_and_learns():
    x, y = blobs()
    model = mlp()
    h = fit(model, CrossEntropy(), SGD(model.parameters(), 0.1, 0.9), train=(x, y),
            val=blobs(90, seed=1), epochs=8, batch_size=16, progress=False)
    assert h.epochs_completed == 8 and h.stopped_reason is None and not h.diverged
    assert h.epochs["loss"][-1] < 0.5 * h.epochs["loss"][0]
    assert h.epochs["val_accuracy"][-1] > 0.9
    assert len(h.steps["loss"]) == 8 * 15 == len(h.steps["accuracy"]) == len(h.ema_loss)
    assert h["val_loss"] is h.epochs["val_loss"] and len(h["val_loss"]) == 8
    assert h.epochs["lr"] == [0.1] * 8 and all(t > 0 for t in h.epochs["time"])
    r = evaluate(model, *blobs(90, seed=1), loss=CrossEntropy())
    assert r["loss"] == pytest.approx(h.epochs["val_loss"][-1], rel=1e-6)
    assert r["accuracy"] == h.epochs["val_accuracy"][-1]


@pytest.mark.parametrize("shuffle", [True, False])
def test_each_sample_once_per_epoch_last_batch_smaller(shuffle):
    n, bs = 100, 32
    x = np.stack([np.arange(n), np.zeros(n)], 1).astype(np.float32)
    y = np.arange(n) % 3
    rec = Recorder()
    model = Sequential(rec, Dense(2, 3, rng=0))
    sizes, per_epoch = [], []

    def epoch_end(epoch, logs):
        ids = np.concatenate([ids for training, ids in rec.seen if training])
        per_epoch.append(ids)
        rec.seen.clear()

    cb = LambdaCallback(on_batch_end=lambda step, logs: sizes.append(logs["size"]),
                        on_epoch_end=epoch_end)
    fit(model, CrossEntropy(), SGD(model.parameters(), 0.01), train=(x, y), epochs=3,
        batch_size=bs, shuffle=shuffle, callbacks=[cb], progress=False)
    assert sizes == [32, 32, 32, 4] * 3
    for ids in per_epoch:
        assert np.array_equal(np.sort(ids), np.arange(n))
    if shuffle:
        assert not np.array_equal(per_epoch[0], per_epoch[1])
        assert not np.array_equal(per_epoch[0], np.arange(n))
    else:
        assert all(np.array_equal(ids, np.arange(n)) for ids in per_epoch)


def test_val_split_holds_out_a_random_fraction():
    n = 100
    x = np.stack([np.arange(n), np.ones(n)], 1).astype(np.float32)
    y = np.arange(n) % 3
    rec = Recorder()
    model = Sequential(rec, Dense(2, 3, rng=0))
    h = fit(model, CrossEntropy(), SGD(model.parameters(), 0.01), train=(x, y), epochs=2,
            batch_size=16, val_split=0.1, seed=3, progress=False)
    train_ids = np.concatenate([i for t, i in rec.seen if t])
    val_ids = np.concatenate([i for t, i in rec.seen if not t])
    assert len(train_ids) == 2 * 90 and len(val_ids) == 2 * 10
    assert set(train_ids) | set(val_ids) == set(range(n))
    assert not set(train_ids) & set(val_ids)
    assert set(val_ids) != set(range(90, 100))  # random, not the tail
    assert h.params["n_train"] == 90 and h.params["n_val"] == 10
    assert len(h.epochs["val_loss"]) == 2 and len(h.epochs["val_accuracy"]) == 2


def test_reproducible_from_seed():
    x, y = blobs()

    def run(seed):
        model = mlp(dropout=True)
        h = fit(model, CrossEntropy(), SGD(model.parameters(), 0.05, 0.9), train=(x, y),
                epochs=2, batch_size=32, seed=seed, progress=False)
        return model, h

    (m1, h1), (m2, h2), (_, h3) = run(7), run(7), run(8)
    assert_same_weights(m1, m2)
    assert h1.steps["loss"] == h2.steps["loss"]
    assert h1.steps["loss"] != h3.steps["loss"]


def test_divergence_stops_with_message(capsys, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 2)).astype(np.float32)
    t = x @ np.array([[1.0], [-2.0]], np.float32)
    model = Sequential(Dense(2, 1, rng=0))
    opt = SGD(model.parameters(), 1e3)
    h = fit(model, MSE(), opt, train=(x, t), epochs=50, batch_size=8, progress=False)
    err = capsys.readouterr().err
    assert h.diverged and h.epochs_completed < 50
    assert "diverged" in h.stopped_reason and "epoch" in h.stopped_reason
    assert "step" in h.stopped_reason and "Try a lower learning rate" in h.stopped_reason
    assert h.stopped_reason in err
    bad = h.steps["loss"][-1]
    assert not np.isfinite(bad) and repr(bad) in h.stopped_reason
    assert all(np.isfinite(h.steps["loss"][:-1]))
    assert h.steps["accuracy"] == []  # float targets: no accuracy
    assert opt.steps == len(h.steps["loss"]) - 1  # the bad step was not applied
    h.to_json(tmp_path / "h.json")
    h2 = History.from_json(tmp_path / "h.json")
    assert h2.diverged and h2.stopped_reason == h.stopped_reason
    assert repr(h2.steps["loss"][-1]) == repr(bad)
    h.plot(tmp_path / "h.png")


def test_ema_of_training_loss():
    x, y = blobs()
    model = mlp()
    h = fit(model, CrossEntropy(), SGD(model.parameters(), 0.1), train=(x, y), epochs=2,
            batch_size=40, progress=False)
    loss, ema = h.steps["loss"], h.steps["ema_loss"]
    assert ema[0] == loss[0]
    want = loss[0]
    for k in range(1, len(loss)):
        want = 0.99 * want + 0.01 * loss[k]
        assert ema[k] == pytest.approx(want, rel=1e-12)
    assert h.steps["epoch"] == [0] * 6 + [1] * 6 and h.steps["size"] == [40] * 12
    # epoch means are sample-weighted step means
    assert h.epochs["loss"][0] == pytest.approx(np.mean(loss[:6]), rel=1e-12)


def test_history_json_round_trip_plot_and_best(tmp_path):
    x, y = blobs()
    model = mlp()
    h = fit(model, CrossEntropy(), SGD(model.parameters(), 0.1), train=(x, y), val_split=0.25,
            epochs=3, batch_size=32, progress=False)
    h.steps["loss"].append(float("nan"))  # non-finite values survive as strings
    h.stopped_reason = "test"
    h.to_json(tmp_path / "h.json")
    h2 = History.from_json(tmp_path / "h.json")
    assert np.isnan(h2.steps["loss"][-1])
    assert h2.steps["loss"][:-1] == h.steps["loss"][:-1]
    assert h2.epochs == h.epochs and h2.params == h.params
    assert (h2.epochs_completed, h2.stopped_reason, h2.diverged) == (3, "test", False)
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []

    h.plot(tmp_path / "h.png")
    with open(tmp_path / "h.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    History().plot(tmp_path / "empty.png")  # nothing recorded: still a figure

    best = h.best("val_loss")
    assert best.value == min(h.epochs["val_loss"])
    assert h.epochs["val_loss"][best.epoch] == best.value
    assert h.best("val_accuracy").value == max(h.epochs["val_accuracy"])
    with pytest.raises(KeyError, match="unknown metric"):
        h.best("nope")
    with pytest.raises(ValueError, match="no recorded values"):
        History().best("val_loss")


# -- callbacks -----------------------------------------------------------------------------------
def test_early_stopping_restores_best_weights():
    x, y = blobs()
    model = mlp()
    scores = [3.0, 1.0, 2.0, 1.5, 0.5, 0.1]
    snapshots = []
    inject = LambdaCallback(on_epoch_end=lambda e, logs: logs.update(score=scores[e]))
    snap = LambdaCallback(on_epoch_end=lambda e, logs: snapshots.append(model.state_dict()))
    stop = EarlyStopping("score", patience=2)
    h = fit(model, CrossEntropy(), SGD(model.parameters(), 0.1), train=(x, y), epochs=6,
            batch_size=32, callbacks=[inject, stop, snap], progress=False)
    assert h.epochs_completed == 4 and stop.stopped_epoch == 3 and stop.best_epoch == 1
    assert "early stopping" in h.stopped_reason and "score" in h.stopped_reason
    final = model.state_dict()
    for k in final:
        assert np.array_equal(final[k], snapshots[1][k])
    assert not np.array_equal(final["0.weight"], snapshots[3]["0.weight"])


def test_early_stopping_on_val_loss_needs_validation():
    x, y = blobs()
    model = mlp()
    with pytest.raises(ValueError, match="needs validation data"):
        fit(model, CrossEntropy(), SGD(model.parameters(), 0.1), train=(x, y),
            callbacks=[EarlyStopping()], progress=False)
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="up")


def test_lr_schedule_callback_via_protocol():
    x, y = blobs()
    model = mlp()
    opt = SGD(model.parameters(), 0.08)
    scores = [1.0, 2.0, 0.5, 0.6, 0.7, 0.4]
    inject = LambdaCallback(on_epoch_end=lambda e, logs: logs.update(score=scores[e]))
    h = fit(model, CrossEntropy(), opt, train=(x, y), epochs=6, batch_size=64,
            callbacks=[inject, ReducePlateau("score")], progress=False)
    assert h.epochs["lr"] == [0.08, 0.08, 0.04, 0.04, 0.02, 0.01]
    assert opt.lr == 0.01


def test_per_step_schedule_via_on_batch_begin():
    x, y = blobs(64)
    model = mlp()
    opt = SGD(model.parameters(), 0.0)

    def warmup(step, logs):
        opt.lr = 0.1 * min(1.0, (step + 1) / 6)

    h = fit(model, CrossEntropy(), opt, train=(x, y), epochs=2, batch_size=16,
            callbacks=[LambdaCallback(on_batch_begin=warmup)], progress=False)
    assert h.steps["lr"] == pytest.approx([0.1 * min(1.0, k / 6) for k in range(1, 9)])
    assert h.epochs["lr"] == [h.steps["lr"][0], h.steps["lr"][4]]


def test_callback_stops_mid_epoch_and_hook_order():
    x, y = blobs()
    model = mlp()
    calls, holder = [], {}

    def train_begin(trainer):
        holder["trainer"] = trainer
        calls.append("begin")

    def batch_end(step, logs):
        calls.append(("batch", step, logs["batch"]))
        if step == 9:
            holder["trainer"].stop_training = True

    cb = LambdaCallback(on_train_begin=train_begin, on_batch_end=batch_end,
                        on_epoch_begin=lambda e, logs: calls.append(("epoch", e)),
                        on_train_end=lambda logs: calls.append(("end", logs["stopped_reason"])))
    h = fit(model, CrossEntropy(), SGD(model.parameters(), 0.1), train=(x, y), epochs=5,
            batch_size=32, callbacks=[cb], progress=False)
    assert calls[:3] == ["begin", ("epoch", 0), ("batch", 0, 0)]
    assert ("epoch", 1) in calls and ("batch", 9, 1) in calls
    assert calls[-1][0] == "end" and "LambdaCallback.on_batch_end" in calls[-1][1]
    assert h.epochs_completed == 1 and len(h.steps["loss"]) == 10
    assert h.stopped_reason == calls[-1][1]


# -- checkpoints and resume ----------------------------------------------------------------------
def _resume_setup(seed=0):
    model = mlp(seed=seed, dropout=True, batchnorm=True)
    opt = SGD(model.parameters(), 0.05, momentum=0.9)
    callbacks = [StepLR(1, 0.7), EarlyStopping("val_accuracy", patience=50)]
    return model, opt, callbacks


def test_resume_is_bit_identical(tmp_path):
    x, y = blobs(203)
    kwargs = dict(train=(x, y), batch_size=16, seed=5, val_split=0.2, progress=False)

    model_a, opt_a, cbs_a = _resume_setup()
    h_a = fit(model_a, CrossEntropy(), opt_a, epochs=4, callbacks=cbs_a, **kwargs)

    model_b, opt_b, cbs_b = _resume_setup()
    path = tmp_path / "ckpt.npz"
    fit(model_b, CrossEntropy(), opt_b, epochs=2, callbacks=cbs_b + [Checkpoint(path)], **kwargs)

    model_c, opt_c, cbs_c = _resume_setup(seed=99)  # different init: everything comes from disk
    h_c = fit(model_c, CrossEntropy(), opt_c, epochs=4, callbacks=cbs_c + [Checkpoint(path)],
              resume=path, **kwargs)

    assert_same_weights(model_a, model_c)
    assert h_c.steps["loss"] == h_a.steps["loss"] and h_c.steps["ema_loss"] == h_a.ema_loss
    assert h_c.epochs["val_loss"] == h_a.epochs["val_loss"]
    assert h_c.epochs["lr"] == h_a.epochs["lr"] == pytest.approx([0.05 * 0.7**k for k in range(4)])
    assert h_c.epochs_completed == 4 and opt_c.steps == opt_a.steps == 4 * 11
    for i in opt_a.velocity:
        assert np.array_equal(opt_a.velocity[i], opt_c.velocity[i])
    assert model_c[1].num_batches_tracked == model_a[1].num_batches_tracked  # BatchNorm
    # the final checkpoint of the resumed run is complete: resuming it trains nothing more
    model_d, opt_d, cbs_d = _resume_setup(seed=42)
    h_d = fit(model_d, CrossEntropy(), opt_d, epochs=4, callbacks=cbs_d, resume=path, **kwargs)
    assert h_d.steps["loss"] == h_a.steps["loss"]
    assert_same_weights(model_a, model_d)


def test_checkpoint_contents_and_epoch_template(tmp_path):
    x, y = blobs()
    model = mlp(dropout=True)
    ck = Checkpoint(tmp_path / "run-{epoch:02d}.npz", every=2)
    fit(model, CrossEntropy(), SGD(model.parameters(), 0.1, 0.9), train=(x, y), epochs=3,
        batch_size=64, callbacks=[ck], progress=False)
    assert sorted(os.listdir(tmp_path)) == ["run-02.npz", "run-03.npz"]
    header, arrays = st.read(tmp_path / "run-03.npz", "nnkern-checkpoint")
    assert header["epochs_completed"] == 3 and header["global_step"] == 12
    assert set(header["layer_rngs"]) == {"2"}  # the Dropout layer
    assert {"model/0.weight", "model/3.bias"} <= set(arrays)
    with np.load(tmp_path / "run-03.npz", allow_pickle=False) as f:  # no pickle needed
        assert "__header__" in f.files


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    x, y = blobs()
    model = mlp()
    opt = SGD(model.parameters(), 0.1)
    path = tmp_path / "ck.npz"
    fit(model, CrossEntropy(), opt, train=(x, y), epochs=1, callbacks=[Checkpoint(path)],
        progress=False)
    before = path.read_bytes()

    def broken(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(st.np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        fit(model, CrossEntropy(), opt, train=(x, y), epochs=1, callbacks=[Checkpoint(path)],
            progress=False)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.npz"]


def test_resume_rejects_other_data_or_callbacks(tmp_path):
    x, y = blobs()
    path = tmp_path / "ck.npz"
    model, opt, cbs = _resume_setup()
    fit(model, CrossEntropy(), opt, train=(x, y), epochs=1, val_split=0.2,
        callbacks=cbs + [Checkpoint(path)], progress=False)
    model, opt, cbs = _resume_setup()
    with pytest.raises(ValueError, match="n_train"):
        fit(model, CrossEntropy(), opt, train=(x[:-10], y[:-10]), epochs=2, val_split=0.2,
            callbacks=cbs, resume=path, progress=False)
    model, opt, cbs = _resume_setup()
    with pytest.raises(ValueError, match="callbacks"):
        fit(model, CrossEntropy(), opt, train=(x, y), epochs=2, val_split=0.2,
            callbacks=cbs[1:], resume=path, progress=False)
    with pytest.raises(ValueError, match="not an nnkern-checkpoint file"):
        nnkern.save(model, tmp_path / "model.npz")
        fit(model, CrossEntropy(), opt, train=(x, y), epochs=2, val_split=0.2, callbacks=cbs,
            resume=tmp_path / "model.npz", progress=False)


def test_state_codec_round_trip():
    obj = {"a": (1, 2.5, None), 3: [np.float32(1.5), np.arange(3, dtype=np.int16)],
           "nan": float("nan"), "inf": -float("inf"), "big": 2**127 + 1, "s": "x",
           "__array__": {(1, 2): True}}
    arrays = {}
    skeleton = st.pack(obj, arrays, "p/")
    back = st.unpack(skeleton, arrays)
    assert back["a"] == (1, 2.5, None) and back["big"] == 2**127 + 1 and back["s"] == "x"
    assert type(back[3][0]) is np.float32 and back[3][0] == 1.5
    assert back[3][1].dtype == np.int16 and np.array_equal(back[3][1], [0, 1, 2])
    assert np.isnan(back["nan"]) and back["inf"] == -np.inf
    assert back["__array__"] == {(1, 2): True}
    with pytest.raises(TypeError, match="cannot store"):
        st.pack({"f": object()}, {}, "p/")


# -- evaluate, modes, dtypes, progress -----------------------------------------------------------
@pytest.mark.parametrize("mode", [True, False])
def test_evaluate_restores_mode_and_is_batched(mode):
    x, y = blobs(50)
    model = mlp(dropout=True, batchnorm=True)
    model.train(mode)
    r1 = evaluate(model, x, y, loss=CrossEntropy(), batch_size=7)
    assert model.training is mode and all(layer.training is mode for layer in model)
    r2 = evaluate(model, x, y, loss=CrossEntropy())
    assert r1["accuracy"] == r2["accuracy"]
    assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-6)
    pred = model.forward(x, training=False)
    assert r2["accuracy"] == np.mean(pred.argmax(1) == y)
    assert r2["loss"] == pytest.approx(CrossEntropy().forward(pred, y), rel=1e-6)
    assert evaluate(model, x, y) == {"loss": None, "accuracy": r2["accuracy"]}


@pytest.mark.parametrize("mode", [True, False])
def test_fit_restores_mode(mode):
    x, y = blobs(50)
    model = mlp(dropout=True)
    model.train(mode)
    fit(model, CrossEntropy(), SGD(model.parameters(), 0.1), train=(x, y), val_split=0.2,
        progress=False)
    assert model.training is mode


def test_dtype_and_integer_inputs():
    x, y = blobs(64)
    model = mlp()
    opt = SGD(model.parameters(), 0.1)
    h = fit(model, CrossEntropy(), opt, train=(x.astype(np.float64), y), dtype="float64",
            progress=False)
    assert model.dtype == np.float64 and model[0].weight.dtype == np.float64
    assert h.params["dtype"] == "float64"
    model = Sequential(Dense(2, 3, rng=0, dtype="float64"))  # Sequential.dtype says float32
    fit(model, CrossEntropy(), SGD(model.parameters(), 0.1), train=(x, y), progress=False)
    assert model[0].weight.dtype == np.float64
    model = Sequential(Dense(2, 3, rng=0))
    xi = np.round(x * 10).astype(np.int16)  # e.g. uint8 pixels: converted per batch
    h = fit(model, CrossEntropy(), SGD(model.parameters(), 1e-3), train=(xi, y),
            progress=False)
    assert model.dtype == np.float32 and h.epochs_completed == 1
    with pytest.raises(TypeError, match="dtype"):
        fit(model, CrossEntropy(), opt, train=(x, y), dtype="int32", progress=False)


def _fit_quiet(progress, epochs=2):
    x, y = blobs(64)
    model = mlp()
    return fit(model, CrossEntropy(), SGD(model.parameters(), 0.1), train=(x, y),
               val_split=0.25, epochs=epochs, batch_size=16, progress=progress)


def test_progress_plain_lines_when_not_a_tty(capsys):
    _fit_quiet(None, epochs=3)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and "\r" not in err and len(lines) == 3
    assert lines[0].startswith("epoch 1/3 - ") and "val_loss" in lines[0] and "lr 0.1" in lines[0]
    _fit_quiet(False)
    assert capsys.readouterr() == ("", "")


def test_progress_bar_on_a_tty(monkeypatch):
    class TTY(io.StringIO):
        def isatty(self):
            return True

    stream = TTY()
    monkeypatch.setattr(sys, "stderr", stream)
    _fit_quiet(None)
    text = stream.getvalue()
    assert "\r" in text and "epoch 1/2" in text and "epoch 2/2" in text
    assert "val_acc" in text
    with pytest.raises(ValueError, match="progress"):
        _fit_quiet("fancy")


def test_zero_size_pseudo_terminal_gets_plain_lines():
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        assert tty.isatty()
        assert type(make_progress(None, 2, 5, stream=tty)) is Lines
    os.close(master)


# -- bad arguments -------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(epochs=0), ValueError, "epochs must be an int >= 1"),
    (dict(epochs=1.5), ValueError, "epochs"),
    (dict(batch_size=0), ValueError, "batch_size must be an int >= 1"),
    (dict(val_split=1.0), ValueError, r"val_split must be a number in \[0, 1\)"),
    (dict(val_split=-0.1), ValueError, "val_split"),
    (dict(val_split=0.001), ValueError, "holds out 0"),
    (dict(val_split=0.1, val="both"), ValueError, "not both"),
    (dict(train=None), TypeError, "missing the training data"),
    (dict(train=np.zeros((4, 2))), TypeError, r"pair \(x, y\)"),
    (dict(train=(np.zeros((4, 2), np.float32), np.zeros(3, np.int64))), ValueError,
     "train x has 4 samples but y has 3"),
    (dict(train=(np.zeros((0, 2), np.float32), np.zeros(0, np.int64))), ValueError,
     "no samples"),
    (dict(train=(np.array([["a", "b"]]), np.zeros(1, np.int64))), TypeError, "real numbers"),
    (dict(val=(np.zeros((4, 3), np.float32), np.zeros(4, np.int64))), ValueError,
     "sample shape"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(shuffle="yes"), TypeError, "shuffle"),
    (dict(callbacks=EarlyStopping), TypeError, "callbacks"),
    (dict(device="tpu"), ValueError, "device must be"),
    (dict(loss=object()), TypeError, "loss must have forward"),
    (dict(optimizer=object()), TypeError, "optimizer must have a step"),
])
def test_bad_arguments(kwargs, error, match):
    x, y = blobs(40)
    model = mlp()
    args = dict(model=model, loss=CrossEntropy(), optimizer=SGD(model.parameters(), 0.1),
                train=(x, y), progress=False)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        fit(**args)


def test_evaluate_bad_arguments():
    x, y = blobs(10)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(mlp(), x, y, batch_size=0)
    with pytest.raises(ValueError, match="10 samples but y has 9"):
        evaluate(mlp(), x, y[:9])


@pytest.mark.skipif(nnkern.cuda_available(), reason="a CUDA device is present")
def test_cuda_device_without_gpu_is_a_clear_error():
    x, y = blobs(10)
    model = mlp()
    with pytest.raises(RuntimeError, match="cuda_available"):
        fit(model, CrossEntropy(), SGD(model.parameters(), 0.1), train=(x, y), device="cuda",
            progress=False)
