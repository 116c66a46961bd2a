import math

import numpy as np
import pytest

import nnkern.ops.update as U
from nnkern.ops.update import cpu, ref
from nnkern.testing import assert_close, on_one_thread

SIZES = [(1,), (7,), (5, 3), (4, 3, 2, 2), (40000,)]  # the last one runs the parallel variant

# (rule, state arrays to allocate: name -> initial fill, hyperparameter sets)
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


def run(module, rule, hp, p, grads):
    """Apply ``rule`` of ``module`` with each gradient in turn; returns p and the state."""
    fills, _ = RULES[rule]
    state = {name: np.full(p.shape, fill, p.dtype) for name, fill in fills.items()}
    fn = getattr(module, f"{rule}_update")
    for step, g in enumerate(grads, 1):
        extra = {"first": step == 1} if rule == "sgd" else {"step": step} if rule == "adam" else {}
        fn(p, g, *state.values(), **hp, **extra)
    return p, state


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule,case", CASES)
def test_cpu_matches_reference_over_steps(rng, variant, rule, case, dtype):
    hp = RULES[rule][1][case]
    for shape in SIZES:
        p0 = rng.standard_normal(shape).astype(dtype)
        grads = [rng.standard_normal(shape).astype(dtype) for _ in range(4)]
        got, got_state = run(cpu, rule, hp, p0.copy(), grads)
        want, want_state = run(ref, rule, hp, p0.copy(), grads)
        assert got.dtype == dtype
        assert_close(got, want, scale=20, err_msg=f"{rule} {hp} {shape}")
        for name in got_state:
            assert got_state[name].dtype == dtype
            assert_close(got_state[name], want_state[name], scale=20, err_msg=name)


def test_public_functions_dispatch_and_validate(rng):
    p = rng.standard_normal((3, 4))
    g = rng.standard_normal((3, 4))
    for rule, (fills, hps) in RULES.items():
        for hp in hps:
            state = {k: np.full(p.shape, f) for k, f in fills.items()}
            extra = {"step": 1} if rule == "adam" else {}
            want_p, want_state = p.copy(), {k: a.copy() for k, a in state.items()}
            getattr(ref, f"{rule}_update")(want_p, g, *want_state.values(), **hp, **extra)
            got_p = p.copy()
            getattr(U, f"{rule}_update")(got_p, g, *state.values(), **hp, **extra)
            assert_close(got_p, want_p)


# -- the reference against hand-computed steps ------------------------------------------------
def test_sgd_momentum_by_hand():
    p, buf = np.array([1.0, -2.0]), np.zeros(2)
    ref.sgd_update(p, np.array([0.5, 1.0]), buf, lr=0.1, momentum=0.9, first=True)
    np.testing.assert_allclose(buf, [0.5, 1.0])                 # first step: buf = g
    np.testing.assert_allclose(p, [0.95, -2.1])
    ref.sgd_update(p, np.array([1.0, 0.0]), buf, lr=0.1, momentum=0.9, dampening=0.5)
    np.testing.assert_allclose(buf, [0.9 * 0.5 + 0.5, 0.9])       # 0.95, 0.9
    np.testing.assert_allclose(p, [0.95 - 0.095, -2.1 - 0.09])
    p, buf = np.array([1.0]), np.array([2.0])
    ref.sgd_update(p, np.array([1.0]), buf, lr=0.1, momentum=0.5, nesterov=True)
    # buf = 0.5*2 + 1 = 2; d = g + 0.5*buf = 2; p = 1 - 0.2
    np.testing.assert_allclose([p[0], buf[0]], [0.8, 2.0])


def test_regularizers_by_hand():
    p = np.array([2.0, -1.0, 0.0])
    ref.sgd_update(p, np.array([1.0, 1.0, 1.0]), lr=0.5, weight_decay=0.1, l1=0.2)
    # d = g + 0.1 p + 0.2 sign(p) = [1.4, 0.7, 1.0]
    np.testing.assert_allclose(p, [2.0 - 0.7, -1.0 - 0.35, -0.5])


def test_adam_first_step_is_lr_times_sign():
    g = np.array([3.0, -1e-3, 250.0, -7.0])
    for module in (ref, cpu):
        p = np.zeros(4)
        m, v = np.zeros(4), np.zeros(4)
        module.adam_update(p, g, m, v, lr=0.01, eps=1e-12, step=1)
        np.testing.assert_allclose(p, -0.01 * np.sign(g), rtol=1e-8)
        np.testing.assert_allclose(m, 0.1 * g)
        np.testing.assert_allclose(v, 0.001 * g * g)


def test_adamw_decays_before_the_step():
    p = np.array([2.0, -4.0])
    m, v = np.zeros(2), np.zeros(2)
    ref.adam_update(p, np.zeros(2), m, v, lr=0.1, step=1, weight_decay=0.5, decoupled=True)
    np.testing.assert_allclose(p, [2.0 * 0.95, -4.0 * 0.95])  # zero gradient: pure decay


def test_adaptive_first_steps_by_hand():
    g = np.array([2.0, -0.5])
    p, s = np.zeros(2), np.full(2, 0.25)
    ref.adagrad_update(p, g, s, clr=0.1, eps=0.0)
    np.testing.assert_allclose(s, [4.25, 0.5])
    np.testing.assert_allclose(p, -0.1 * g / np.sqrt([4.25, 0.5]))
    p, sq = np.zeros(2), np.zeros(2)
    ref.rmsprop_update(p, g, sq, lr=0.01, alpha=0.9, eps=0.0)
    np.testing.assert_allclose(p, -0.01 * g / np.sqrt(0.1 * g * g))
    p, sq, ga = np.zeros(2), np.zeros(2), np.zeros(2)
    ref.rmsprop_update(p, g, sq, ga, lr=0.01, alpha=0.9, eps=0.0, centered=True)
    np.testing.assert_allclose(ga, 0.1 * g)
    np.testing.assert_allclose(p, -0.01 * g / np.sqrt(0.1 * g * g - 0.01 * g * g))
    p, sq, acc = np.zeros(2), np.zeros(2), np.zeros(2)
    ref.adadelta_update(p, g, sq, acc, lr=1.0, rho=0.9, eps=1e-6)
    delta = np.sqrt(1e-6) / np.sqrt(0.1 * g * g + 1e-6) * g
    np.testing.assert_allclose(p, -delta)  # a descent step (S1 eq 7.49 lacks the minus)
    np.testing.assert_allclose(acc, 0.1 * delta * delta)


def test_rprop_step_sizes_by_hand():
    p, prev, size = np.zeros(3), np.zeros(3), np.full(3, 0.1)
    kw = dict(etaminus=0.5, etaplus=1.2, step_size_min=0.01, step_size_max=0.11)
    ref.rprop_update(p, np.array([1.0, -1.0, 1.0]), prev, size, **kw)
    np.testing.assert_allclose(p, [-0.1, 0.1, -0.1])          # no previous sign: size kept
    ref.rprop_update(p, np.array([2.0, -3.0, -1.0]), prev, size, **kw)
    np.testing.assert_allclose(size, [0.11, 0.11, 0.05])      # grown (clamped), shrunk
    np.testing.assert_allclose(p, [-0.21, 0.21, -0.1])        # sign change: no step
    np.testing.assert_allclose(prev, [2.0, -3.0, 0.0])        # ... and no memory of it
    ref.rprop_update(p, np.array([1.0, 1.0, 1.0]), prev, size, **kw)
    np.testing.assert_allclose(size, [0.11, 0.055, 0.05])
    np.testing.assert_allclose(p, [-0.32, 0.21, -0.15])


# -- max-norm, clipping passes ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 4), (5, 2, 3, 3), (1, 1), (200, 300)])
def test_max_norm_matches_reference_and_definition(rng, variant, shape, dtype):
    w = rng.standard_normal(shape).astype(dtype)
    w[0] *= 0.01  # one row well inside the ball
    limit = 1.5
    got, want = w.copy(), w.astype(np.float64)
    U.max_norm_update(got, limit)
    ref.max_norm_update(want, limit)
    assert got.dtype == dtype
    assert_close(got, want)
    norms = np.linalg.norm(got.reshape(shape[0], -1).astype(np.float64), axis=1)
    assert np.all(norms <= limit * (1 + 1e-6))
    before = np.linalg.norm(w.reshape(shape[0], -1).astype(np.float64), axis=1)
    inside = before <= limit
    np.testing.assert_array_equal(got.reshape(shape[0], -1)[inside],
                                  w.reshape(shape[0], -1)[inside])
    big = ~inside
    np.testing.assert_allclose(norms[big], limit * before[big] / (before[big] + 1e-7),
                               rtol=2e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 15, 17, 100003])
def test_sum_squares_and_scale(rng, variant, n, dtype):
    x = rng.standard_normal(n).astype(dtype)
    s = U.sum_squares(x)
    assert isinstance(s, float)
    assert math.isclose(s, ref.sum_squares(x), rel_tol=1e-12)
    assert U.sum_squares(x) == s  # deterministic
    assert U.sum_squares(x.reshape(1, -1)) == s
    y = x.copy()
    U.scale_inplace(y, 0.3)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, x * dtype(0.3))


def test_sum_squares_same_bits_for_any_thread_count(rng):
    """Fixed chunks: the parallel kernel gives the same bits on 1 or 2 threads; the separately
    compiled serial variant may order its vectorised sums differently (fastmath reassoc)."""
    x = rng.standard_normal(100003).astype(np.float32)
    partial = [np.empty(cpu.SUM_CHUNKS) for _ in range(3)]
    cpu._sum_squares_kernel.serial(x, partial[0])
    cpu._sum_squares_kernel.parallel(x, partial[1])
    on_one_thread(lambda: cpu._sum_squares_kernel.parallel(x, partial[2]))
    np.testing.assert_array_equal(partial[1], partial[2])
    np.testing.assert_allclose(partial[0], partial[1], rtol=1e-13)


# -- bad input ------------------------------------------------------------------------------------
def test_bad_input_is_rejected_with_a_clear_message():
    p = np.zeros((3, 2), np.float32)
    g = np.ones((3, 2), np.float32)
    buf = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"g must have shape \(3, 2\) \(the shape of p\)"):
        U.sgd_update(p, np.ones((2, 3), np.float32), lr=0.1)
    with pytest.raises(TypeError, match="g has dtype float64 but the other arguments are float32"):
        U.sgd_update(p, g.astype(np.float64), lr=0.1)
    with pytest.raises(TypeError, match="p must have dtype float32 or float64, got int64"):
        U.sgd_update(np.zeros(3, np.int64), np.zeros(3, np.int64), lr=0.1)
    with pytest.raises(ValueError, match="must be C-contiguous"):
        U.sgd_update(np.zeros((3, 4), np.float32)[:, ::2], g, lr=0.1)
    with pytest.raises(ValueError, match="an axis of size 0|empty batch"):
        U.sgd_update(np.zeros(0, np.float32), np.zeros(0, np.float32), lr=0.1)
    with pytest.raises(ValueError, match=r"lr must be in \[0.0, inf\), got -0.1"):
        U.sgd_update(p, g, lr=-0.1)
    with pytest.raises(ValueError, match="buf is required when momentum != 0"):
        U.sgd_update(p, g, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="nesterov needs momentum > 0"):
        U.sgd_update(p, g, buf, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="p and buf must be distinct arrays"):
        U.sgd_update(p, g, p, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"beta2 must be in \[0.0, 1.0\), got 1.0"):
        U.adam_update(p, g, buf, buf.copy(), lr=0.1, beta2=1.0, step=1)
    with pytest.raises(ValueError, match="step must be >= 1"):
        U.adam_update(p, g, buf, buf.copy(), lr=0.1, step=0)
    with pytest.raises(ValueError, match="max_exp_avg_sq is required when amsgrad"):
        U.adam_update(p, g, buf, buf.copy(), lr=0.1, step=1, amsgrad=True)
    with pytest.raises(TypeError, match="amsgrad must be a bool"):
        U.adam_update(p, g, buf, buf.copy(), lr=0.1, step=1, amsgrad="yes")
    with pytest.raises(ValueError, match="grad_avg is required when centered"):
        U.rmsprop_update(p, g, buf, lr=0.1, centered=True)
    with pytest.raises(ValueError, match=r"etaminus must be in \(0.0, 1.0\)"):
        U.rprop_update(p, g, buf, buf.copy(), etaminus=1.0)
    with pytest.raises(ValueError, match=r"rho must be in \[0.0, 1.0\]"):
        U.adadelta_update(p, g, buf, buf.copy(), rho=1.5)
    with pytest.raises(ValueError, match=r"w must be at least 2-D \(out, ...\)"):
        U.max_norm_update(np.ones(3, np.float32), 1.0)
    with pytest.raises(ValueError, match=r"max_norm must be in \(0.0, inf\)"):
        U.max_norm_update(p, 0.0)
    with pytest.raises(TypeError, match="x must be an array, got list"):
        U.sum_squares([1.0, 2.0])
