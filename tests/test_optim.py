import copy

import numpy as np
import pytest

import nnkern.ops._dispatch as dispatch
import nnkern.optim as O
from nnkern.layers import Dense, Shift
from nnkern.layers.base import Parameter
from nnkern.ops.update import cpu
from nnkern.testing import assert_close

SHAPES = [(6, 5), (6,), (3, 2, 3, 3), (1,), (120, 300)]  # the last one runs the parallel variant

OPTIMIZERS = [
    (O.SGD, dict(lr=0.1)),
    (O.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.01, l1=0.001)),
    (O.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, max_norm=2.0)),
    (O.SGD, dict(lr=0.05, momentum=0.5, dampening=0.5, clip_norm=3.0)),
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


def make_params(rng, dtype, shapes=SHAPES):
    return [Parameter(rng.standard_normal(s).astype(dtype), f"p{i}") for i, s in enumerate(shapes)]


def make_grads(rng, params, steps):
    return [[rng.standard_normal(p.shape).astype(p.dtype) for p in params] for _ in range(steps)]


def train(opt, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad[...] = g
        opt.step()


@pytest.fixture
def ref_backend(monkeypatch):
    """Route CPU arrays to the NumPy references (as NNKERN_BACKEND=ref does)."""
    monkeypatch.setattr(dispatch, "_CPU_MODULE", "ref")
    monkeypatch.setattr(dispatch, "_modules", {})


def reference_run(cls, kw, params, grads):
    mp = pytest.MonkeyPatch()
    mp.setattr(dispatch, "_CPU_MODULE", "ref")
    mp.setattr(dispatch, "_modules", {})
    try:
        train(cls(params, **kw), params, grads)
    finally:
        mp.undo()


# -- against the NumPy reference, and independent textbook forms -------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls,kw", OPTIMIZERS, ids=IDS)
def test_optimizer_matches_reference_backend(rng, variant, cls, kw, dtype):
    params = make_params(rng, dtype)
    mirror = [Parameter(p.data.copy(), p.name) for p in params]
    grads = make_grads(rng, params, 4)
    train(cls(params, **kw), params, grads)
    reference_run(cls, kw, mirror, grads)
    for p, q in zip(params, mirror):
        assert p.data.dtype == dtype
        assert_close(p.data, q.data, scale=20, err_msg=p.name)


def textbook(name, w, grads, lr, **kw):
    """Independent float64 forms of the rules (as papers write them) on one array."""
    w = w.copy()
    m, v, u, vmax = (np.zeros_like(w) for _ in range(4))
    prev, size = np.zeros_like(w), np.full_like(w, lr)
    for t, g in enumerate(grads, 1):
        if name == "momentum":  # S2 eq 2.14: v <- mu v - lr g; w <- w + v
            m = kw["mu"] * m - lr * g
            w = w + m
        elif name == "adagrad":
            v = v + g * g
            w = w - lr * g / (np.sqrt(v) + kw["eps"])
        elif name == "rmsprop":
            v = kw["alpha"] * v + (1 - kw["alpha"]) * g * g
            w = w - lr * g / (np.sqrt(v) + kw["eps"])
        elif name == "adadelta":  # Zeiler 2012, Algorithm 1 (times lr)
            v = kw["rho"] * v + (1 - kw["rho"]) * g * g
            dx = -np.sqrt(u + kw["eps"]) / np.sqrt(v + kw["eps"]) * g
            u = kw["rho"] * u + (1 - kw["rho"]) * dx * dx
            w = w + lr * dx
        elif name in ("adam", "amsgrad"):  # Kingma & Ba 2015, Algorithm 1
            b1, b2 = kw["betas"]
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            vmax = np.maximum(vmax, v)
            vv = vmax if name == "amsgrad" else v
            w = w - lr * (m / (1 - b1 ** t)) / (np.sqrt(vv / (1 - b2 ** t)) + kw["eps"])
        elif name == "rprop":  # Rprop- with the update skipped after a sign change
            s = g * prev
            size = np.clip(np.where(s > 0, size * 1.2, np.where(s < 0, size * 0.5, size)),
                           1e-6, 50)
            g = np.where(s < 0, 0.0, g)
            w = w - np.sign(g) * size
            prev = g
    return w


@pytest.mark.parametrize("cls,kw,name,extra", [
    (O.SGD, dict(lr=0.1, momentum=0.8), "momentum", dict(mu=0.8)),
    (O.AdaGrad, dict(lr=0.1), "adagrad", dict(eps=1e-10)),
    (O.RMSProp, dict(lr=0.01, alpha=0.9), "rmsprop", dict(alpha=0.9, eps=1e-8)),
    (O.Adadelta, dict(lr=0.7), "adadelta", dict(rho=0.9, eps=1e-6)),
    (O.Adam, dict(lr=0.01, betas=(0.8, 0.99)), "adam", dict(betas=(0.8, 0.99), eps=1e-8)),
    (O.Adam, dict(lr=0.01, amsgrad=True), "amsgrad", dict(betas=(0.9, 0.999), eps=1e-8)),
    (O.Rprop, dict(lr=0.01), "rprop", {}),
])
def test_optimizer_matches_textbook_form(rng, cls, kw, name, extra):
    w0 = rng.standard_normal(50)
    grads = [rng.standard_normal(50) for _ in range(6)]
    p = Parameter(w0.copy(), "w")
    train(cls([p], **kw), [p], [[g] for g in grads])
    np.testing.assert_allclose(p.data, textbook(name, w0, grads, kw["lr"], **extra),
                               rtol=1e-10, atol=1e-12)


def test_nesterov_is_s2_lookahead_form_after_change_of_variables():
    # S2 eq 2.15: v <- mu v - lr grad(theta + mu v); theta <- theta + v. PyTorch's parameter is
    # the look-ahead point theta + mu v.
    def grad(w):
        return np.array([2.0, 10.0]) * w
    mu, lr = 0.9, 0.02
    theta, vel = np.array([-4.0, 2.0]), np.zeros(2)
    p = Parameter(theta.copy(), "w")
    opt = O.SGD([p], lr=lr, momentum=mu, nesterov=True)
    for _ in range(20):
        vel = mu * vel - lr * grad(theta + mu * vel)
        theta = theta + vel
        p.grad[...] = grad(p.data)
        opt.step()
        np.testing.assert_allclose(p.data, theta + mu * vel, rtol=1e-12, atol=1e-14)


def test_adam_first_step_is_lr_times_sign_of_gradient(rng):
    p = Parameter(np.zeros(20), "w")
    g = rng.standard_normal(20)
    p.grad[...] = g
    O.Adam([p], lr=0.003, eps=1e-14).step()
    np.testing.assert_allclose(p.data, -0.003 * np.sign(g), rtol=1e-9)


@pytest.mark.parametrize("cls,steps,kw", [
    (O.SGD, 100, dict(lr=0.05)),
    (O.SGD, 100, dict(lr=0.05, momentum=0.5)),
    (O.SGD, 100, dict(lr=0.05, momentum=0.5, nesterov=True)),
    (O.AdaGrad, 200, dict(lr=1.0)),
    (O.RMSProp, 300, dict(lr=0.05)),
    (O.RMSProp, 300, dict(lr=0.02, centered=True, momentum=0.5)),
    (O.Adadelta, 1000, dict()),
    (O.Adam, 300, dict(lr=0.1)),
    (O.AdamW, 300, dict(lr=0.1)),
    (O.Rprop, 100, dict(lr=0.1)),
])
def test_quadratic_bowl_converges(cls, steps, kw):
    # S1 fig 7.8: minimise f(w) = w1² + 5 w2² from (-4, 2), where f = 36
    for dtype in (np.float64, np.float32):
        p = Parameter(np.array([-4.0, 2.0], dtype), "w")
        opt = cls([p], **kw)
        for _ in range(steps):
            p.grad[...] = np.array([2.0, 10.0], dtype) * p.data
            opt.step()
        w = p.data.astype(np.float64)
        assert w[0] ** 2 + 5 * w[1] ** 2 < 1e-2, (cls.__name__, kw, dtype, w)


# -- groups, regularizers, clipping ---------------------------------------------------------------
def test_param_group_lr_multipliers_and_overrides(rng):
    w = Parameter(rng.standard_normal((3, 4)), "w")
    b = Parameter(rng.standard_normal(3), "b")
    w0, b0 = w.data.copy(), b.data.copy()
    opt = O.SGD([{"params": [w]}, {"params": [b], "lr_mult": 4.0, "weight_decay": 0.0}],
                lr=0.1, weight_decay=0.5)
    assert opt.param_groups[0]["lr_mult"] == 1.0 and opt.param_groups[0]["weight_decay"] == 0.5
    assert opt.param_groups[1]["momentum"] == 0.0  # defaults filled in
    gw, gb = rng.standard_normal((3, 4)), rng.standard_normal(3)
    w.grad[...], b.grad[...] = gw, gb
    opt.step()
    np.testing.assert_allclose(w.data, w0 - 0.1 * (gw + 0.5 * w0), rtol=1e-14)
    np.testing.assert_allclose(b.data, b0 - 0.4 * gb, rtol=1e-14)
    # the base lr (what schedules change) scales every group; group values may change
    opt.lr = 0.01
    opt.param_groups[1]["lr_mult"] = 2
    w1, b1 = w.data.copy(), b.data.copy()
    opt.step()
    np.testing.assert_allclose(w.data, w1 - 0.01 * (gw + 0.5 * w1), rtol=1e-14)
    np.testing.assert_allclose(b.data, b1 - 0.02 * gb, rtol=1e-14)


def test_add_param_group(rng):
    a, b = Parameter(np.ones(2), "a"), Parameter(np.ones(3), "b")
    opt = O.Adam([a], lr=0.1)
    opt.add_param_group({"params": [b], "lr_mult": 0.5, "betas": (0.8, 0.9)})
    assert opt.param_groups[1]["betas"] == (0.8, 0.9) and opt.param_groups[1]["eps"] == 1e-8
    a.grad[...], b.grad[...] = 1.0, 1.0
    opt.step()
    np.testing.assert_allclose(a.data, 1 - 0.1, rtol=1e-6)
    np.testing.assert_allclose(b.data, 1 - 0.05, rtol=1e-6)


def test_l1_weight_decay_and_elastic_net(rng):
    p0 = np.array([[2.0, -1.0, 0.0]])
    g = np.array([[0.1, 0.2, 0.3]])
    for kw, d in [(dict(weight_decay=0.1), g + 0.1 * p0),
                  (dict(l1=0.05), g + 0.05 * np.sign(p0)),
                  (dict(weight_decay=0.1, l1=0.05), g + 0.1 * p0 + 0.05 * np.sign(p0))]:
        for cls in (O.SGD, O.Adam):
            p = Parameter(p0.copy(), "w")
            p.grad[...] = g
            cls([p], lr=0.5, **kw).step()
            if cls is O.SGD:
                np.testing.assert_allclose(p.data, p0 - 0.5 * d, rtol=1e-15)
            else:  # Adam's first step with gradient d
                np.testing.assert_allclose(p.data, p0 - 0.5 * d / (np.abs(d) + 1e-8), rtol=1e-12)


def test_adamw_decay_is_decoupled(rng):
    p0 = rng.standard_normal(5)
    p = Parameter(p0.copy(), "w")
    opt = O.AdamW([p], lr=0.1, weight_decay=0.3)
    p.grad[...] = 0.0
    opt.step()  # zero gradient: Adam's step is 0 and only the decay acts
    np.testing.assert_allclose(p.data, p0 * (1 - 0.03), rtol=1e-15)
    q = Parameter(p0.copy(), "w")
    q.grad[...] = 0.0
    O.Adam([q], lr=0.1, weight_decay=0.3).step()  # coupled: the decay is a gradient, normalised
    np.testing.assert_allclose(q.data, p0 - 0.1 * np.sign(p0), atol=1e-6)


def test_max_norm_applies_to_weights_not_biases(rng):
    w = Parameter(rng.standard_normal((4, 3, 2, 2)) * 3, "w")
    b = Parameter(np.full(4, 10.0), "b")
    small = w.data[0] * 0  # row 0 becomes the zero vector: stays inside the ball
    w.data[0] = small
    opt = O.SGD([w, b], lr=0.01, max_norm=1.5)
    w.grad[...], b.grad[...] = 0.0, 0.0
    opt.step()
    norms = np.linalg.norm(w.data.reshape(4, -1), axis=1)
    np.testing.assert_allclose(norms[1:], 1.5, rtol=1e-6)
    assert norms[0] == 0
    np.testing.assert_array_equal(b.data, 10.0)


def test_clip_grad_norm(rng):
    a, b = Parameter(np.zeros((3, 4)), "a"), Parameter(np.zeros(5), "b")
    ga, gb = rng.standard_normal((3, 4)), rng.standard_normal(5)
    a.grad[...], b.grad[...] = ga, gb
    total = np.sqrt(np.sum(ga ** 2) + np.sum(gb ** 2))
    got = O.clip_grad_norm([a, b], 1.0)
    assert isinstance(got, float) and got == pytest.approx(total, rel=1e-14)
    coef = 1.0 / (total + 1e-6)
    np.testing.assert_allclose(a.grad, ga * coef, rtol=1e-14)
    np.testing.assert_allclose(b.grad, gb * coef, rtol=1e-14)
    before = a.grad.copy()
    assert O.clip_grad_norm([a, b], 10.0) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_array_equal(a.grad, before)  # below the limit: untouched
    # as an optimizer option, at the start of step(): plain SGD then moves by exactly 2
    p = Parameter(np.zeros(10), "p")
    p.grad[...] = rng.standard_normal(10) * 100
    O.SGD([p], lr=1.0, clip_norm=2.0).step()
    assert np.linalg.norm(p.data) == pytest.approx(2.0, rel=1e-6)


# -- state: lazy allocation, dtype changes, state dicts -----------------------------------------
@pytest.mark.parametrize("cls,kw", OPTIMIZERS, ids=IDS)
def test_state_dict_resumes_bit_identically(rng, cls, kw):
    params = make_params(rng, np.float32)
    grads = make_grads(rng, params, 6)
    opt = cls(params, **kw)
    train(opt, params, grads[:3])
    saved_params = [p.data.copy() for p in params]
    sd = copy.deepcopy(opt.state_dict())
    train(opt, params, grads[3:])
    for entry in sd["state"].values():  # numpy arrays and plain Python values only
        assert all(isinstance(x, (int, np.ndarray)) for x in entry.values())
    assert isinstance(sd["lr"], float) and isinstance(sd["param_groups"][0]["params"], list)
    resumed = [Parameter(d.copy(), p.name) for d, p in zip(saved_params, params)]
    fresh = cls(resumed, **kw)
    fresh.lr = 123.0  # overwritten by the state
    fresh.load_state_dict(sd)
    train(fresh, resumed, grads[3:])
    for p, q in zip(params, resumed):
        np.testing.assert_array_equal(p.data, q.data)
    again = fresh.state_dict()
    assert again["state"].keys() == sd["state"].keys()


def test_state_dict_is_a_copy_and_has_parameter_shapes(rng):
    p = Parameter(rng.standard_normal((3, 2)).astype(np.float32), "w")
    opt = O.Adam([p], lr=0.1)
    p.grad[...] = 1.0
    opt.step()
    sd = opt.state_dict()
    assert sd["type"] == "Adam" and sd["state"][0]["step"] == 1
    assert sd["state"][0]["exp_avg"].shape == (3, 2)
    assert "max_exp_avg_sq" not in sd["state"][0]
    sd["state"][0]["exp_avg"][...] = 99
    assert np.all(opt.state_dict()["state"][0]["exp_avg"] != 99)


def test_lazily_sized_parameter():
    layer = Shift("element")  # its bias is zero-sized until the first input fixes its shape
    assert layer.bias.shape == (0,)
    opt = O.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    opt.step()  # nothing to update yet: no error, no state
    assert opt.state == {}
    layer._materialize(np.zeros((2, 3, 4), np.float32))  # what the first forward does
    layer.bias.grad[...] = 1.0
    opt.step()
    opt.step()
    assert layer.bias.shape == (3, 4)
    np.testing.assert_allclose(layer.bias.data, -0.1 - 0.1 * 1.9, rtol=1e-6)
    buf = opt.state[layer.bias].bufs[0]
    assert buf.shape == (12,) and buf.dtype == np.float32


def test_state_follows_a_dtype_change(rng):
    layer = Dense(4, 3)
    opt = O.Adam(layer.parameters(), lr=0.01)
    x = rng.standard_normal((5, 4))
    layer(x.astype(np.float32))
    layer.backward(np.ones((5, 3), np.float32))
    opt.step()
    m32 = opt.state_dict()["state"][0]["exp_avg"]
    assert m32.dtype == np.float32
    layer(x)  # float64 input converts the layer (new parameter and gradient storage)
    layer.backward(np.ones((5, 3)))
    before = layer.weight.data.copy()
    opt.step()
    sd = opt.state_dict()["state"][0]
    assert sd["exp_avg"].dtype == np.float64 and sd["step"] == 2  # cast, not restarted
    assert layer.weight.data.dtype == np.float64
    assert not np.array_equal(layer.weight.data, before)


def test_zero_grad(rng):
    params = make_params(rng, np.float32, [(2, 3), (4,)])
    for p in params:
        p.grad[...] = 1.0
    O.SGD(params, lr=0.1).zero_grad()
    assert all(np.all(p.grad == 0) for p in params)


def test_steps_do_not_recompile(rng):
    params = make_params(rng, np.float32, [(3, 3), (3,)])
    opt = O.SGD(params, lr=1, momentum=0.5)  # ints are normalised to floats
    for lr in (0.1, 1, 2.5):
        opt.lr = lr
        opt.param_groups[0]["weight_decay"] = lr / 10
        opt.step()
    signatures = [s for s in cpu._sgd_kernel.serial.signatures if str(s[0].dtype) == "float32"]
    assert len(signatures) == 1


# -- bad input -------------------------------------------------------------------------------------
def test_bad_input_is_rejected_with_a_clear_message():
    a, b = Parameter(np.ones(2), "a"), Parameter(np.ones(2), "b")
    with pytest.raises(ValueError, match=r"SGD: lr must be in \[0.0, inf\), got -0.1"):
        O.SGD([a], lr=-0.1)
    with pytest.raises(ValueError, match=r"betas\[1\] must be in \[0, 1\), got 1.0"):
        O.Adam([a], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match=r"betas\[0\] must be in \[0, 1\), got -0.1"):
        O.AdamW([a], betas=(-0.1, 0.9))
    with pytest.raises(TypeError, match="betas must be a pair of numbers"):
        O.Adam([a], betas=0.9)
    with pytest.raises(ValueError, match="empty parameter list"):
        O.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="parameter 'a' appears more than once"):
        O.SGD([{"params": [a]}, {"params": [b, a]}], lr=0.1)
    with pytest.raises(ValueError, match="parameter 'a' appears more than once"):
        O.SGD([a, a], lr=0.1)
    with pytest.raises(ValueError, match=r"unknown keys \['momentun'\]"):
        O.SGD([{"params": [a], "momentun": 0.9}], lr=0.1)
    with pytest.raises(ValueError, match="lr_mult"):
        O.SGD([{"params": [a], "lr": 0.9}], lr=0.1)
    with pytest.raises(ValueError, match="missing the 'params' key"):
        O.SGD([{"lr_mult": 2.0}], lr=0.1)
    with pytest.raises(TypeError, match="params must contain Parameters or parameter-group "
                                        "dicts, got ndarray"):
        O.SGD([np.ones(2)], lr=0.1)
    with pytest.raises(TypeError, match="pass model.parameters()"):
        O.SGD([Dense(2, 2)], lr=0.1)
    with pytest.raises(TypeError, match="iterable of Parameters"):
        O.SGD(a, lr=0.1)
    with pytest.raises(ValueError, match="nesterov needs momentum > 0 and dampening = 0"):
        O.SGD([a], lr=0.1, nesterov=True)
    with pytest.raises(TypeError, match="nesterov must be a bool"):
        O.SGD([a], lr=0.1, momentum=0.9, nesterov="yes")
    with pytest.raises(ValueError, match="0 < etaminus < 1 < etaplus"):
        O.Rprop([a], etas=(0.5, 0.9))
    with pytest.raises(ValueError, match="min <= max"):
        O.Rprop([a], step_sizes=(1.0, 0.1))
    with pytest.raises(ValueError, match=r"weight_decay must be in \[0.0, inf\)"):
        O.AdaGrad([a], weight_decay=-1)
    with pytest.raises(ValueError, match=r"max_norm must be in \(0.0, inf\)"):
        O.RMSProp([a], max_norm=0)
    with pytest.raises(ValueError, match=r"clip_norm must be in \(0.0, inf\)"):
        O.Adadelta([a], clip_norm=-1)
    with pytest.raises(ValueError, match=r"rho must be in \[0.0, 1.0\]"):
        O.Adadelta([a], rho=2)
    opt = O.SGD([a], lr=0.1)
    with pytest.raises(ValueError, match=r"lr must be in \[0.0, inf\)"):
        opt.lr = -1
    opt.param_groups[0]["momentum"] = -0.5  # checked at the next step
    with pytest.raises(ValueError, match=r"param group 0: momentum must be in \[0.0, inf\)"):
        opt.step()
    with pytest.raises(ValueError, match="the state is of a Adam"):
        O.SGD([a], lr=0.1).load_state_dict(O.Adam([b]).state_dict())
    with pytest.raises(ValueError, match="group 0 has 1 parameters in the state, 2 in"):
        O.SGD([a, b], lr=0.1).load_state_dict(O.SGD([a], lr=0.1).state_dict())
    with pytest.raises(TypeError, match="clip_grad_norm: params must contain Parameters"):
        O.clip_grad_norm([np.ones(2)], 1.0)


def test_bad_gradient_is_reported_at_step():
    p = Parameter(np.ones(3), "w")
    p.grad = np.ones(4)
    with pytest.raises(ValueError, match=r"parameter 'w': its .grad must have shape \(3,\)"):
        O.SGD([p], lr=0.1).step()
    p.grad = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="dtype float64"):
        O.SGD([p], lr=0.1).step()
