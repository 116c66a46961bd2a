"""Optimizers on CUDA parameters: the same steps as on the CPU, state kept on the GPU, state
dicts that move between devices."""

import copy

import numpy as np
import pytest

import nnkern
import nnkern.optim as O
from nnkern.backend import device_of_array, to_host
from nnkern.layers import Dense
from nnkern.layers.base import Parameter
from nnkern.ops.update import cuda as update_cuda
from nnkern.testing import assert_close

pytestmark = pytest.mark.cuda

SHAPES = [(3, 4), (5,), (2, 3, 2, 1)]

OPTIMIZERS = [
    (O.SGD, dict(lr=0.1)),
    (O.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.01, l1=0.001)),
    (O.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, max_norm=1.5)),
    (O.SGD, dict(lr=0.05, momentum=0.5, dampening=0.5, clip_norm=2.0)),
    (O.AdaGrad, dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.1, weight_decay=0.01)),
    (O.RMSProp, dict(lr=0.01, momentum=0.9, centered=True, l1=0.01)),
    (O.RMSProp, dict(lr=0.01, alpha=0.9)),
    (O.Adadelta, dict(weight_decay=0.05)),
    (O.Adam, dict(lr=0.01)),
    (O.Adam, dict(lr=0.01, betas=(0.5, 0.9), amsgrad=True, weight_decay=0.1, l1=0.01)),
    (O.AdamW, dict(lr=0.01, weight_decay=0.2, max_norm=1.0)),
    (O.Rprop, dict(lr=0.02)),
    (O.Rprop, dict(etas=(0.3, 1.5), step_sizes=(1e-3, 0.1), weight_decay=0.1)),
]
IDS = [f"{cls.__name__}-{i}" for i, (cls, _) in enumerate(OPTIMIZERS)]
STATEFUL = [OPTIMIZERS[i] for i in (1, 4, 5, 9, 12)]
STATEFUL_IDS = [IDS[i] for i in (1, 4, 5, 9, 12)]


def dev(a):
    return nnkern.to_device(a, "cuda")


def make_params(rng, dtype, device="cpu"):
    return [Parameter(nnkern.to_device(rng.standard_normal(s).astype(dtype), device), f"p{i}")
            for i, s in enumerate(SHAPES)]


def make_grads(rng, dtype, steps):
    return [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]


def train(opt, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            if isinstance(p.grad, np.ndarray):
                p.grad[...] = g
            else:
                p.grad.copy_to_device(g)
        opt.step()


def assert_same_run(gpu_params, cpu_params, dtype):
    for p, q in zip(gpu_params, cpu_params):
        assert device_of_array(p.data) == "cuda" and p.dtype == dtype
        if dtype == np.float64:  # same operations in the same order: equal to rounding
            np.testing.assert_allclose(to_host(p.data), q.data, rtol=1e-13, atol=1e-14,
                                       err_msg=p.name)
        else:
            assert_close(to_host(p.data), q.data, scale=20, err_msg=p.name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls,kw", OPTIMIZERS, ids=IDS)
def test_steps_on_cuda_match_steps_on_cpu(rng, cls, kw, dtype):
    cpu_params = make_params(rng, dtype)
    gpu_params = [Parameter(dev(p.data), p.name) for p in cpu_params]
    grads = make_grads(rng, dtype, 3)
    gpu_opt = cls(gpu_params, **kw)
    train(cls(cpu_params, **kw), cpu_params, grads)
    train(gpu_opt, gpu_params, grads)
    assert_same_run(gpu_params, cpu_params, dtype)
    for st in gpu_opt.state.values():  # state on the parameter's device, updated by CUDA
        assert st.backend is update_cuda
        assert all(device_of_array(b) == "cuda" for b in st.bufs if b is not None)


@pytest.mark.parametrize("cls,kw", STATEFUL, ids=STATEFUL_IDS)
def test_state_dicts_move_between_devices(rng, cls, kw):
    dtype = np.float64
    params = make_params(rng, dtype)
    grads = make_grads(rng, dtype, 4)
    start = [p.data.copy() for p in params]
    opt = cls(params, **kw)
    train(opt, params, grads[:2])
    mid = [p.data.copy() for p in params]
    cpu_state = copy.deepcopy(opt.state_dict())
    train(opt, params, grads[2:])  # the CPU run to compare with

    gpu_params = [Parameter(dev(d), f"p{i}") for i, d in enumerate(mid)]
    gpu_opt = cls(gpu_params, **kw).load_state_dict(cpu_state)  # CPU state -> CUDA optimizer
    for st in gpu_opt.state.values():  # moved to the GPU right away
        assert all(device_of_array(b) == "cuda" for b in st.bufs if b is not None)
    train(gpu_opt, gpu_params, grads[2:])
    assert_same_run(gpu_params, params, dtype)

    gpu_params = [Parameter(dev(d), f"p{i}") for i, d in enumerate(start)]
    gpu_opt = cls(gpu_params, **kw)
    train(gpu_opt, gpu_params, grads[:2])
    gpu_state = copy.deepcopy(gpu_opt.state_dict())
    for entry in gpu_state["state"].values():  # host numpy arrays, whatever the device
        assert all(isinstance(x, (int, np.ndarray)) for x in entry.values())
    resumed = [Parameter(to_host(p.data), p.name) for p in gpu_params]
    train(gpu_opt, gpu_params, grads[2:])
    assert_same_run(gpu_params, params, dtype)
    cpu_opt = cls(resumed, **kw).load_state_dict(gpu_state)  # CUDA state -> CPU optimizer
    train(cpu_opt, resumed, grads[2:])
    for p, q in zip(resumed, params):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-13, atol=1e-14)

    gpu_params = [Parameter(dev(d), f"p{i}") for i, d in enumerate(start)]
    gpu_opt = cls(gpu_params, **kw)
    train(gpu_opt, gpu_params, grads[:2])
    twin = [Parameter(dev(to_host(p.data)), p.name) for p in gpu_params]  # CUDA -> CUDA
    twin_opt = cls(twin, **kw).load_state_dict(copy.deepcopy(gpu_opt.state_dict()))
    train(gpu_opt, gpu_params, grads[2:])
    train(twin_opt, twin, grads[2:])
    for p, q in zip(gpu_params, twin):
        np.testing.assert_array_equal(to_host(p.data), to_host(q.data))  # same bits


def test_state_follows_a_layer_moved_to_cuda(rng):
    layers = [Dense(4, 3), Dense(4, 3)]
    layers[1].load_state_dict(layers[0].state_dict())
    opts = [O.Adam(layer.parameters(), lr=0.01, amsgrad=True) for layer in layers]
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in layers[0].parameters()]
             for _ in range(4)]
    for step, step_grads in enumerate(grads):
        if step == 2:
            layers[1].to("cuda")  # new storage on the GPU: the optimizer's state follows
        for layer, opt in zip(layers, opts):
            train(opt, list(layer.parameters()), [step_grads])
    for p, q in zip(layers[1].parameters(), layers[0].parameters()):
        assert device_of_array(p.data) == "cuda"
        assert_close(to_host(p.data), q.data, scale=20)
    assert all(device_of_array(b) == "cuda"
               for st in opts[1].state.values() for b in st.bufs if b is not None)


def test_clip_grad_norm_and_zero_grad(rng):
    cpu_params = make_params(rng, np.float64)
    gpu_params = [Parameter(dev(p.data), p.name) for p in cpu_params]
    for p, q in zip(cpu_params, gpu_params):
        p.grad[...] = rng.standard_normal(p.shape)
        q.grad.copy_to_device(p.grad)
    total = O.clip_grad_norm(gpu_params, 1.0)
    assert total == pytest.approx(O.clip_grad_norm(cpu_params, 1.0), rel=1e-13)
    for p, q in zip(cpu_params, gpu_params):
        np.testing.assert_allclose(to_host(q.grad), p.grad, rtol=1e-13)
    mixed = cpu_params[:1] + gpu_params[1:]  # each gradient on its own device
    assert O.clip_grad_norm(mixed, 10.0) == pytest.approx(1.0, rel=1e-5)
    O.SGD(gpu_params, lr=0.1).zero_grad()
    assert not any(to_host(p.grad).any() for p in gpu_params)


def test_steps_are_deterministic(rng):
    start = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    grads = make_grads(rng, np.float32, 2)
    runs = []
    for _ in range(2):
        params = [Parameter(dev(d), f"p{i}") for i, d in enumerate(start)]
        train(O.Adam(params, lr=0.01, clip_norm=1.0, max_norm=1.0), params, grads)
        runs.append([to_host(p.data) for p in params])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_gradient_on_another_device_is_reported(rng):
    p = Parameter(dev(rng.standard_normal((2, 3))), "w")
    p.grad = rng.standard_normal((2, 3))
    with pytest.raises(ValueError, match=r"\.data and \.grad live on different devices"):
        O.SGD([p], lr=0.1).step()
