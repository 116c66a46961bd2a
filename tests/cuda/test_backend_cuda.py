"""Device handling with CUDA arrays (simulator in CI, a real GPU when present)."""

import numpy as np
import pytest

import nnkern
from nnkern import layers as L
from nnkern.backend import device_of, to_host

pytestmark = pytest.mark.cuda


def test_to_device_round_trip():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    d = nnkern.to_device(x, "cuda")
    assert device_of(d) == "cuda" and d.shape == (3, 4) and d.dtype == np.float32
    assert nnkern.to_device(d, "cuda") is d
    np.testing.assert_array_equal(to_host(d), x)
    np.testing.assert_array_equal(nnkern.to_device(d, "cpu"), x)
    assert nnkern.cuda_available()


def test_mixing_devices_is_an_error_never_a_copy():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"x on cpu; w on cuda"):
        device_of(x, nnkern.to_device(x, "cuda"), names=("x", "w"))


def test_layer_to_cuda_moves_parameters_and_buffers():
    layer = L.BatchNorm2D(3).to("cuda")
    assert layer.device == "cuda"
    assert {p.device for p in layer.parameters()} == {"cuda"}
    assert device_of(layer.buffer("running_var")) == "cuda"
    with pytest.raises(ValueError, match="is a numpy array but the layer lives on cuda"):
        layer.forward(np.ones((2, 3, 2, 2), np.float32))
    state = layer.state_dict()
    assert isinstance(state["running_var"], np.ndarray)
    np.testing.assert_array_equal(state["running_var"], np.ones(3, np.float32))
    layer.to("cpu")
    assert {p.device for p in layer.parameters()} == {"cpu"}
