"""CUDA update rules against the CPU backend (same steps, same state) and the references."""

import inspect

import numpy as np
import pytest

import nnkern
import nnkern.ops.update as U
from nnkern.backend import to_host
from nnkern.ops.update import cuda as gpu
from nnkern.ops.update import ref
from nnkern.testing import assert_close

pytestmark = pytest.mark.cuda

# (rule, state arrays: name -> initial fill, hyperparameter sets): every option of every rule
RULES = {
    "sgd": ({"buf": 0.0}, [
        dict(lr=0.1),
        dict(lr=0.1, momentum=0.9, weight_decay=0.01, l1=0.003),
        dict(lr=0.05, momentum=0.8, dampening=0.3),
        dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.02)]),
    "adagrad": ({"state_sum": 0.1}, [
        dict(clr=0.1), dict(clr=0.05, eps=1e-6, weight_decay=0.02, l1=0.01)]),
    "rmsprop": ({"square_avg": 0.0, "grad_avg": 0.0, "buf": 0.0}, [
        dict(lr=0.01), dict(lr=0.01, alpha=0.9, momentum=0.8, centered=True, weight_decay=0.1),
        dict(lr=0.02, alpha=0.3, centered=True, l1=0.01)]),
    "adadelta": ({"square_avg": 0.0, "acc_delta": 0.0}, [
        dict(), dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1, l1=0.02)]),
    "adam": ({"exp_avg": 0.0, "exp_avg_sq": 0.0, "max_exp_avg_sq": 0.0}, [
        dict(lr=0.01), dict(lr=0.01, beta1=0.3, beta2=0.9, amsgrad=True, weight_decay=0.1),
        dict(lr=0.01, weight_decay=0.3, l1=0.01, decoupled=True)]),
    "rprop": ({"prev": 0.0, "step_size": 0.01}, [
        dict(), dict(etaminus=0.3, etaplus=1.5, step_size_min=1e-3, step_size_max=0.02,
                     weight_decay=0.1, l1=0.01)]),
}
CASES = [(rule, i) for rule, (_, hps) in RULES.items() for i in range(len(hps))]


def dev(a):
    return nnkern.to_device(a, "cuda")


def run(rule, hp, p, grads, to=lambda a: a):
    """Apply ``rule`` with each gradient in turn (through the public, dispatching function)."""
    fills, _ = RULES[rule]
    state = {name: to(np.full(p.shape, fill, p.dtype)) for name, fill in fills.items()}
    for step, g in enumerate(grads, 1):
        extra = {"first": step == 1} if rule == "sgd" else {"step": step} if rule == "adam" else {}
        getattr(U, f"{rule}_update")(p, to(g), *state.values(), **hp, **extra)
    return p, state


def test_backend_exports_the_public_functions():
    for name, fn in inspect.getmembers(U, inspect.isfunction):
        if fn.__module__ == U.__name__ and not name.startswith("_"):
            assert inspect.signature(getattr(gpu, name)) == inspect.signature(fn), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule,case", CASES)
def test_steps_match_cpu(rng, rule, case, dtype):
    hp = RULES[rule][1][case]
    shape = [(37,), (3, 5), (2, 3, 2, 3)][case % 3]
    p0 = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(3)]
    want, want_state = run(rule, hp, p0.copy(), grads)
    got, got_state = run(rule, hp, dev(p0), grads, dev)
    assert got.dtype == dtype and got.shape == shape
    for name, a, b in [("p", got, want)] + [(k, got_state[k], want_state[k]) for k in got_state]:
        if dtype == np.float64:  # the same operations in the same order: equal to rounding
            np.testing.assert_allclose(to_host(a), b, rtol=1e-13, atol=1e-15, err_msg=name)
        else:
            assert_close(to_host(a), b, scale=5, err_msg=name)
    ref_p = p0.copy()
    fills, _ = RULES[rule]
    state = {k: np.full(shape, f, dtype) for k, f in fills.items()}
    for step, g in enumerate(grads, 1):
        extra = {"first": step == 1} if rule == "sgd" else {"step": step} if rule == "adam" else {}
        getattr(ref, f"{rule}_update")(ref_p, g, *state.values(), **hp, **extra)
    assert_close(to_host(got), ref_p, scale=20)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_norm_sum_squares_and_scale(rng, dtype):
    for shape in [(4, 3), (3, 2, 3, 3), (2, 300)]:
        w = (rng.standard_normal(shape) * 0.8).astype(dtype)
        got, want = dev(w), w.copy()
        U.max_norm_update(got, 1.5)
        U.max_norm_update(want, 1.5)
        assert_close(to_host(got), want, scale=5)
        s = U.sum_squares(dev(w))
        assert isinstance(s, float)
        assert s == pytest.approx(U.sum_squares(w), rel=1e-12 if dtype == np.float64 else 1e-5)
        U.scale_inplace(got, 0.3)
        U.scale_inplace(want, 0.3)
        assert_close(to_host(got), want, scale=5)


def test_sum_squares_over_several_blocks_is_deterministic(rng, monkeypatch):
    monkeypatch.setattr(gpu, "_reduce_plan", lambda n: (3, 32))
    x = rng.standard_normal(250).astype(np.float32)
    first, second = U.sum_squares(dev(x)), U.sum_squares(dev(x))
    assert first == second
    assert first == pytest.approx(ref.sum_squares(x), rel=1e-6)
    y = rng.standard_normal((4, 5))
    many = gpu.sum_squares_many([dev(x), dev(y), dev(x[:7])])
    want = ref.sum_squares(x) + ref.sum_squares(y) + ref.sum_squares(x[:7])
    assert many == pytest.approx(want, rel=1e-6)


def test_bad_input_is_rejected(rng):
    p = dev(rng.standard_normal((2, 3)))
    g = dev(rng.standard_normal((2, 3)))
    with pytest.raises(ValueError, match=r"p, g on cuda; buf on cpu"):
        U.sgd_update(p, g, np.zeros((2, 3)), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"p and g must be distinct arrays"):
        U.adagrad_update(p, p, dev(np.zeros((2, 3))), clr=0.1)
    with pytest.raises(TypeError, match=r"exp_avg has dtype float32"):
        U.adam_update(p, g, dev(np.zeros((2, 3), np.float32)), dev(np.zeros((2, 3))), lr=0.1,
                      step=1)
