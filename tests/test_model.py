"""Sequential: naming, state dicts with PyTorch keys, save/load, summary, training a small CNN."""

import os

import numpy as np
import pytest

import nnkern
from nnkern import layers as L
from nnkern.losses import SoftmaxCrossEntropy
from nnkern.model import atomic_write


def small_cnn(rng=None):
    rng = np.random.default_rng(0) if rng is None else rng
    return nnkern.Sequential(
        L.Conv2D(1, 4, 3, padding=1, rng=rng), L.BatchNorm2D(4), L.ReLU(), L.MaxPool2D(2),
        L.Conv2D(4, 6, 3, padding=1, bias=False, rng=rng), L.BatchNorm2D(6), L.ReLU(),
        L.GlobalAvgPool2D(), L.Dense(6, 3, rng=rng))


def test_parameter_names_and_state_dict_keys_follow_pytorch():
    model = small_cnn()
    names = [p.name for p in model.parameters()]
    assert names == ["0.weight", "0.bias", "1.gamma", "1.beta", "4.weight", "5.gamma", "5.beta",
                     "8.weight", "8.bias"]
    assert list(model.state_dict()) == [
        "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
        "1.num_batches_tracked", "4.weight", "5.weight", "5.bias", "5.running_mean",
        "5.running_var", "5.num_batches_tracked", "8.weight", "8.bias"]


def test_nested_sequential_keys():
    model = nnkern.Sequential(nnkern.Sequential(L.Dense(2, 3), L.ReLU()), L.Dense(3, 1))
    assert list(model.state_dict()) == ["0.0.weight", "0.0.bias", "1.weight", "1.bias"]
    assert [p.name for p in model.parameters()][0] == "0.0.weight"


def test_load_state_dict_from_a_pytorch_style_dict(rng):
    model = small_cnn()
    state = {k: rng.standard_normal(v.shape).astype(v.dtype) if v.ndim else v
             for k, v in model.state_dict().items()}
    state["1.running_var"] = np.abs(state["1.running_var"]) + 0.5
    state["5.running_var"] = np.abs(state["5.running_var"]) + 0.5
    state["1.num_batches_tracked"] = np.array(7)
    del state["5.num_batches_tracked"]  # optional, as PyTorch's loading allows
    model.load_state_dict(state)
    loaded = model.state_dict()
    for key in state:
        np.testing.assert_array_equal(loaded[key], state[key])
    assert model[1].num_batches_tracked == 7
    with pytest.raises(KeyError, match="missing keys"):
        model.load_state_dict({k: v for k, v in state.items() if k != "8.bias"})
    with pytest.raises(KeyError, match="unexpected keys"):
        model.load_state_dict({**state, "9.weight": np.ones(2)})
    model.load_state_dict({k: v for k, v in state.items() if k != "8.bias"}, strict=False)


def test_float64_state_dict_makes_a_float64_model(rng):
    model = small_cnn()
    model.load_state_dict({k: v.astype(np.float64) if v.dtype.kind == "f" else v
                           for k, v in model.state_dict().items()})
    assert {p.dtype for p in model.parameters()} == {np.dtype(np.float64)}
    assert model[1].buffer("running_var").dtype == np.float64


def test_save_and_load_round_trip(tmp_path, rng):
    model = nnkern.Sequential(small_cnn(), L.Shift("layer"), L.Scale("channel"),
                              L.Dropout(0.1), L.Softmax())
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    model.forward(x)  # updates BN statistics, sizes the lazy Scale
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = nnkern.load(path)
    assert repr(loaded) == repr(model)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value)
    model.eval(), loaded.eval()
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_load_rejects_other_files(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="not an nnkern model file"):
        nnkern.load(tmp_path / "other.npz")


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")

    def failing(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, failing)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.bin"]


def test_summary_lists_shapes_and_parameter_counts():
    text = small_cnn().summary((2, 1, 8, 8), print_fn=None)
    assert "(2, 4, 4, 4)" in text and "(2, 3)" in text
    total = 4 * 9 + 4 + 8 + 6 * 4 * 9 + 12 + 6 * 3 + 3
    assert f"total parameters: {total:,}" in text


def test_train_and_eval_propagate():
    model = small_cnn()
    model.eval()
    assert not any(layer.training for layer in model)
    model.train()
    assert all(layer.training for layer in model)


def test_backward_without_input_gradient(rng):
    model = small_cnn()
    y = model.forward(rng.standard_normal((2, 1, 8, 8)).astype(np.float32))
    assert model.backward(np.ones_like(y), need_input_grad=False) is None
    assert model.backward(np.ones_like(y)).shape == (2, 1, 8, 8)


def test_small_cnn_with_batch_norm_overfits_one_batch(rng):
    """Plain SGD on one fixed batch: the loss must fall at least tenfold."""
    model = nnkern.Sequential(
        L.Conv2D(1, 8, 3, padding=1, rng=rng), L.BatchNorm2D(8), L.ReLU(), L.MaxPool2D(2),
        L.Conv2D(8, 8, 3, padding=1, rng=rng), L.BatchNorm2D(8), L.ReLU(), L.Flatten(),
        L.Dense(8 * 4 * 4, 3, rng=rng))
    x = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 3, 16)
    loss = SoftmaxCrossEntropy()
    losses = []
    for _ in range(100):
        losses.append(loss.forward(model.forward(x), labels))
        model.backward(loss.backward())
        for p in model.parameters():
            p.data -= 0.1 * p.grad
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])
