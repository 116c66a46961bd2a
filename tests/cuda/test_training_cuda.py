"""Whole training on "cuda" (the simulator in CI) against the same training on the CPU."""

import numpy as np
import pytest

import nnkern
from nnkern import layers as L
from nnkern import losses, optim
from nnkern.backend import device_of

pytestmark = pytest.mark.cuda


def small_cnn_bn(seed):
    rng = np.random.default_rng(seed)
    return nnkern.Sequential(
        L.Conv2D(1, 3, 3, padding=1, rng=rng), L.BatchNorm2D(3), L.ReLU(), L.MaxPool2D(2),
        L.Conv2D(3, 4, 3, padding=1, bias=False, rng=rng), L.BatchNorm2D(4), L.ReLU(),
        L.Dropout(0.25, rng=np.random.default_rng(1)), L.Flatten(), L.Dense(4 * 3 * 3, 3, rng=rng))


def assert_same_state(cpu_model, cuda_model, atol=1e-6):
    cuda_state = cuda_model.state_dict()
    for key, value in cpu_model.state_dict().items():
        np.testing.assert_allclose(cuda_state[key], value, rtol=1e-5, atol=atol, err_msg=key)


def test_training_step_of_a_cnn_with_batch_norm_matches_the_cpu():
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32)
    y = np.array([0, 2])
    cpu, gpu = small_cnn_bn(0), small_cnn_bn(0).to("cuda")
    assert {p.device for p in gpu.parameters()} == {"cuda"}
    steps = []
    for model, xb, yb in ((cpu, x, y), (gpu, nnkern.to_device(x, "cuda"),
                                        nnkern.to_device(y, "cuda"))):
        loss = losses.SoftmaxCrossEntropy()
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        value = loss.forward(model.forward(xb), yb)
        model.backward(loss.backward())
        opt.step()
        steps.append(value)
        if model is gpu:  # everything stayed on the device: parameters, grads, state, buffers
            assert {device_of(p.grad) for p in model.parameters()} == {"cuda"}
            assert {device_of(b) for _, b in model.named_buffers()} == {"cuda"}
            assert {device_of(a) for s in opt.state.values() for a in s.bufs
                    if a is not None} == {"cuda"}
    np.testing.assert_allclose(steps[1], steps[0], rtol=1e-5)
    assert_same_state(cpu, gpu)


def test_fit_on_cuda_matches_fit_on_the_cpu(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((10, 4)).astype(np.float32)
    y = rng.integers(0, 3, 10)
    histories, models = [], []
    for device in ("cpu", "cuda"):
        model = nnkern.Sequential(L.Dense(4, 6, rng=np.random.default_rng(5)), L.BatchNorm1D(6),
                                  L.ReLU(), L.Dense(6, 3, rng=np.random.default_rng(6)))
        # (not Adam: the dense bias before BN has a zero true gradient, and Adam would turn
        # each device's ~1e-9 rounding noise there into full +-lr steps)
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        histories.append(nnkern.fit(model, losses.SoftmaxCrossEntropy(), opt, train=(x, y),
                                    val=(x[:4], y[:4]), epochs=1, batch_size=4, seed=0,
                                    device=device, progress=False))
        models.append(model)
    assert models[1].device == "cuda"
    np.testing.assert_allclose(histories[1].steps["loss"], histories[0].steps["loss"], rtol=1e-5)
    np.testing.assert_allclose(histories[1].epochs["val_loss"], histories[0].epochs["val_loss"],
                               rtol=1e-5)
    assert_same_state(models[0], models[1])
    # a model trained on the GPU saves and loads back on the CPU
    models[1].save(tmp_path / "model.npz")
    loaded = nnkern.load(tmp_path / "model.npz")
    assert loaded.device == "cpu"
    assert_same_state(loaded, models[1], atol=0)
