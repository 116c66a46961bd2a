"""Small-model fast paths: fused Dense/BatchNorm -> ReLU and Dense -> BatchNorm1D (-> ReLU)
steps, layer fast paths, buffer safety.

The fused steps must give the bits of the layers run one by one (same kernels, one pass fewer),
and the fast paths (which skip re-validation once a per-sample shape was checked) must keep
every error of the validating path.
"""

import numpy as np
import pytest

import nnkern
from nnkern import layers as L
from nnkern import losses
from nnkern.model import Sequential, _BatchNormReLU, _DenseBatchNorm, _DenseReLU, _Single
from nnkern.ops import _dispatch
from nnkern.ops.batch_norm import cpu as bn_cpu
from nnkern.ops.batch_norm import ref as bn_ref
from nnkern.ops.dense import cpu as dense_cpu
from nnkern.ops.dense import ref as dense_ref
from nnkern.ops.dense_batch_norm import cpu as dense_bn_cpu
from nnkern.testing import assert_close, numerical_gradient


def mlp_bn(rng):
    return Sequential(L.Flatten(), L.Dense(12, 7, bias=False, rng=rng), L.BatchNorm1D(7),
                      L.ReLU(), L.Dense(7, 5, rng=rng), L.ReLU(), L.Dense(5, 3, rng=rng))


def cnn_bn(rng):
    return Sequential(L.Conv2D(2, 3, 3, padding=1, bias=False, rng=rng), L.BatchNorm2D(3),
                      L.ReLU(), L.MaxPool2D(2), L.Flatten(), L.Dense(12, 4, rng=rng), L.ReLU(),
                      L.Dense(4, 3, rng=rng))


def mlp_bn_variants(rng):
    """Dense -> BN without a ReLU, BN with momentum=None, without affine or running
    statistics, a Dense -> BN pair at the end."""
    return Sequential(L.Flatten(), L.Dense(12, 7, rng=rng), L.BatchNorm1D(7, momentum=None),
                      L.Dense(7, 6, rng=rng),
                      L.BatchNorm1D(6, affine=False, track_running_stats=False), L.ReLU(),
                      L.Dense(6, 3, rng=rng), L.BatchNorm1D(3))


# model, input shape, the fused steps it must contain
MODELS = {"mlp": (mlp_bn, (6, 3, 2, 2), {_DenseBatchNorm, _DenseReLU}),
          "mlp_variants": (mlp_bn_variants, (6, 3, 2, 2), {_DenseBatchNorm}),
          "cnn": (cnn_bn, (5, 2, 4, 4), {_BatchNormReLU, _DenseReLU})}


def clone(model):
    twin = nnkern.model.build(nnkern.model.describe(model))
    twin.load_state_dict(model.state_dict())
    return twin.astype(model.dtype)


def run(model, x, dy_seed, steps=3, training=True):
    """Forward/backward ``steps`` times: (outputs and buffers, gradients), each a list."""
    values, grads = [], []
    rng = np.random.default_rng(dy_seed)
    for _ in range(steps):
        y = model.forward(x, training=training)
        dy = rng.standard_normal(y.shape).astype(y.dtype)
        dx = model.backward(dy)
        values.append(y.copy())
        grads += [dx.copy()] + [p.grad.copy() for p in model.parameters()]
    values += [b.copy() for _, b in model.named_buffers()]
    return values, grads


# ----- fused steps give the bits of the unfused layers -----

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_fused_steps_match_the_layers_one_by_one(rng, variant, name, dtype, training):
    """Outputs and running statistics: the same bits (the same elementwise operations);
    gradients: the same up to rounding (the fused passes' vectorised sums may add in another
    order, fastmath reassoc)."""
    make, shape, kinds = MODELS[name]
    fused = make(rng).astype(dtype)
    plain = clone(fused)
    plain.fuse = False
    x = rng.standard_normal(shape).astype(dtype)
    (values, grads), (values_plain, grads_plain) = (run(m, x, 7, training=training)
                                                    for m in (fused, plain))
    # Dense -> BN: the same operations, but its per-feature float64 coefficients may round
    # differently (see nnkern/ops/dense_batch_norm/cpu.py), and with every kernel parallel
    # (forced here at any size) the unfused batch norm sums in chunks
    exact = _DenseBatchNorm not in kinds
    for got, want in zip(values, values_plain):
        if exact:
            np.testing.assert_array_equal(got, want)
        else:
            assert_close(got, want)
    for got, want in zip(grads, grads_plain):
        assert_close(got, want, scale=10)
    assert kinds <= {type(s) for s in fused._steps()}
    assert all(type(s) is _Single for s in plain._steps())
    assert all(s.fused for s in fused._ran if not isinstance(s, _Single))


def test_relu_mask_at_zero_and_nan_matches_the_unfused_layers(rng):
    # channel 0: x = 1, 2, 3 -> mean 2, the middle element normalises to exactly 0 (beta 0),
    # where ReLU's derivative is 0; channel 1 holds a NaN (propagates as in relu_backward)
    x = np.array([[1.0, 0.5], [2.0, np.nan], [3.0, -0.5]], np.float32)
    fused = Sequential(L.BatchNorm1D(2), L.ReLU())
    plain = clone(fused)
    plain.fuse = False
    for model in (fused, plain):
        model.forward(x)  # the first call validates, later ones take the fast path
    y1, y2 = fused.forward(x), plain.forward(x)
    np.testing.assert_array_equal(y1, y2)
    assert y1[1, 0] == 0
    dy = np.ones_like(x)
    np.testing.assert_array_equal(fused.backward(dy), plain.backward(dy))
    np.testing.assert_array_equal(fused[0].gamma.grad, plain[0].gamma.grad)


def test_layers_keep_their_own_state_after_a_fused_forward(rng):
    model = Sequential(L.BatchNorm1D(4), L.ReLU())
    x = rng.standard_normal((6, 4)).astype(np.float32)
    model.forward(x)
    y = model.forward(x)
    assert model._ran[0].fused
    bn, relu = model[0], model[1]
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_array_equal(relu.backward(dy), np.where(y > 0, dy, 0))
    want = nnkern.functional.batch_norm_backward(np.where(y > 0, dy, 0), x, bn.gamma.data,
                                                  bn._mean, bn._inv_std)[0]
    np.testing.assert_array_equal(bn.backward(np.where(y > 0, dy, 0)), want)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_dense_batch_norm_gradients_finite_difference(rng, variant, training):
    """float64: the fused backward against central differences of the fused forward (loss
    sum(y * r); no running statistics in training, so repeated forwards change nothing)."""
    n, i, o = 7, 5, 3
    x, w, b = (rng.standard_normal(s) for s in ((n, i), (o, i), (o,)))
    gamma, beta = rng.uniform(0.5, 1.5, o), rng.standard_normal(o)
    running = (None, None) if training else (rng.standard_normal(o), rng.uniform(0.5, 2, o))
    r = rng.standard_normal((n, o))

    def loss():
        y = dense_bn_cpu.forward(x, w, b, gamma, beta, *running, training, 0.1, 1e-5, False)[1]
        return float((y * r).sum())

    zb, _, mean, inv_std, coef = dense_bn_cpu.forward(x, w, b, gamma, beta, *running, training,
                                                      0.1, 1e-5, False)
    grads = dense_bn_cpu.backward(r, x, w, zb, gamma, mean, inv_std, coef, training, False)
    for got, wrt in zip(grads, (x, w, b, gamma, beta)):
        np.testing.assert_allclose(got, numerical_gradient(loss, wrt), rtol=1e-5, atol=1e-7)


def test_dense_batch_norm_step_leaves_each_layer_its_own_state(rng):
    model = Sequential(L.Dense(5, 4, rng=rng), L.BatchNorm1D(4), L.ReLU())
    x = rng.standard_normal((6, 5)).astype(np.float32)
    model.forward(x)  # validates
    y = model.forward(x)
    assert type(model._ran[0]) is _DenseBatchNorm and model._ran[0].fused
    assert model[1].num_batches_tracked == 2
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = model.backward(dy)
    grads = [p.grad.copy() for p in model.parameters()]
    dense, bn, relu = model  # the layers' own backwards from the state the fused step left
    np.testing.assert_array_equal(dense.backward(bn.backward(relu.backward(dy))), dx)
    for p, g in zip(model.parameters(), grads):
        np.testing.assert_array_equal(p.grad, g)
    model.forward(x)
    with pytest.raises(ValueError, match=r"dy must have shape \(6, 4\)"):
        model.backward(np.ones((6, 3), np.float32))


# ----- the fused kernels against the NumPy references -----

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7, 5), (64, 100), (3, 4, 5, 6), (2, 3, 1, 1), (8, 64, 8, 8),
                                   (6, 12, 2, 2)])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_relu_kernels_match_the_reference(rng, variant, shape, dtype, training):
    c = shape[1]
    x = (0.3 + rng.standard_normal(shape)).astype(dtype)
    gamma, beta = rng.uniform(0.5, 1.5, c).astype(dtype), rng.standard_normal(c).astype(dtype)
    rm, rv = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    rm2, rv2 = rm.copy(), rv.copy()
    y, mean, inv_std, coef = bn_cpu.forward(x, gamma, beta, rm, rv, training, 0.1, 1e-5, True)
    f64 = [a.astype(np.float64) for a in (x, gamma, beta, rm2, rv2)]
    y_ref, mean_ref, inv_ref = bn_ref.batch_norm_forward(*f64, training=training, momentum=0.1)
    assert y.dtype == dtype
    assert_close(y, np.maximum(y_ref, 0))
    assert_close(mean, mean_ref)
    assert_close(inv_std, inv_ref)
    assert_close(rm, f64[3])
    assert_close(rv, f64[4])
    dy = rng.standard_normal(shape).astype(dtype)
    dx, dgamma, dbeta = bn_cpu.backward(dy, x, gamma, mean, inv_std, training, True, coef)
    masked = np.where(y > 0, dy, 0).astype(np.float64)
    want = bn_ref.batch_norm_backward(masked, f64[0], f64[1], mean.astype(np.float64),
                                      inv_std.astype(np.float64), training=training)
    scale = max(1.0, x.size / shape[1] / 100)
    for got, w in zip((dx, dgamma, dbeta), want):
        assert got.dtype == dtype
        assert_close(got, w, scale=scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_relu_kernels_match_the_unfused_ops(rng, variant, dtype, bias):
    x = rng.standard_normal((33, 17)).astype(dtype)
    w = rng.standard_normal((9, 17)).astype(dtype)
    b = rng.standard_normal(9).astype(dtype) if bias else None
    y = dense_cpu.dense_forward(x, w, b, relu=True)
    plain = nnkern.functional.dense_forward(x, w, b)
    np.testing.assert_array_equal(y, nnkern.functional.relu_forward(plain))
    dy = rng.standard_normal(y.shape).astype(dtype)
    for need_dx in (True, False):
        got = dense_cpu.dense_backward(dy, x, w, has_bias=bias, need_dx=need_dx, relu_y=y)
        g = nnkern.functional.relu_backward(dy, plain, y)
        want = nnkern.functional.dense_backward(g, x, w, has_bias=bias, need_dx=need_dx)
        for a, e in zip(got, want):
            if e is None:
                assert a is None
            else:
                np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7, 5, 3), (64, 100, 100), (40, 300, 70)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "norelu"])
def test_dense_batch_norm_kernels_match_the_unfused_ops_and_the_references(
        rng, variant, shape, dtype, training, relu):
    """64x100 -> 100 and up: two blocks of features. Against the unfused ops at the dtype's
    tolerance (the same operations; float64 coefficients may round apart, see the module
    docstring) and against the NumPy references composed, in float64."""
    n, i, o = shape
    bias = o != 100  # the MLP's hidden layers have none before their batch norm
    x = (0.5 + rng.standard_normal((n, i))).astype(dtype)
    w = (rng.standard_normal((o, i)) / np.sqrt(i)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype) if bias else None
    gamma, beta = rng.uniform(0.5, 1.5, o).astype(dtype), rng.standard_normal(o).astype(dtype)
    rm, rv = rng.standard_normal(o).astype(dtype), rng.uniform(0.5, 2, o).astype(dtype)
    running = [rm.copy(), rv.copy()], [rm.copy(), rv.copy()], [rm.astype(np.float64),
                                                              rv.astype(np.float64)]
    zb, y, mean, inv_std, coef = dense_bn_cpu.forward(x, w, b, gamma, beta, *running[0],
                                                      training, 0.1, 1e-5, relu)
    z = dense_bn_cpu.z_from_blocks(zb, n, i, o)
    z_plain = dense_cpu.dense_forward(x, w, b)
    y_plain, *stats_plain, coef_plain = bn_cpu.forward(z_plain, gamma, beta, *running[1],
                                                      training, 0.1, 1e-5, relu)
    f64 = [None if a is None else a.astype(np.float64) for a in (x, w, b, gamma, beta)]
    z_ref = dense_ref.dense_forward(*f64[:3])
    y_ref, mean_ref, inv_ref = bn_ref.batch_norm_forward(z_ref, *f64[3:], *running[2],
                                                         training=training, momentum=0.1)
    y_ref = np.maximum(y_ref, 0) if relu else y_ref
    for got, plain, ref in zip((z, y, mean, inv_std, *running[0]),
                               (z_plain, y_plain, *stats_plain, *running[1]),
                               (z_ref, y_ref, mean_ref, inv_ref, *running[2])):
        assert got.dtype == dtype
        assert_close(got, plain)
        assert_close(got, ref, scale=10)
    dy = rng.standard_normal((n, o)).astype(dtype)
    for need_dx in (True, False):
        got = dense_bn_cpu.backward(dy, x, w, zb, gamma, mean, inv_std, coef, training, relu,
                                    has_bias=bias, need_dx=need_dx)
        dz, dgamma, dbeta = bn_cpu.backward(dy, z_plain, gamma, *stats_plain, training, relu,
                                            coef_plain)
        plain = (*dense_cpu.dense_backward(dz, x, w, has_bias=bias, need_dx=need_dx), dgamma,
                 dbeta)
        g = np.where(y > 0, dy, 0) if relu else dy
        dz_ref, *bn_grads = bn_ref.batch_norm_backward(
            g.astype(np.float64), z.astype(np.float64), f64[3], mean.astype(np.float64),
            inv_std.astype(np.float64), training=training)
        ref = (*dense_ref.dense_backward(dz_ref, *f64[:2], has_bias=bias, need_dx=need_dx),
               *bn_grads)
        for a, p, r in zip(got, plain, ref):
            if r is None:
                assert a is None and p is None
                continue
            assert_close(a, p)
            assert_close(a, r, scale=max(1.0, n * o / 1000))


# ----- fast paths keep the checks -----

def test_fast_paths_still_reject_bad_input(rng):
    model = mlp_bn(rng)
    x = rng.standard_normal((6, 3, 2, 2)).astype(np.float32)
    model.forward(x)
    model.forward(x)  # fast path from here
    with pytest.raises(ValueError, match=r"Dense: expected input with 12 features, got 8"):
        model.forward(x[:, :2])
    with pytest.raises(ValueError, match="empty batch"):
        model.forward(x[:0])
    with pytest.raises(ValueError, match="expected more than 1 value per channel"):
        model.forward(x[:1])
    y = model.forward(x[:4])  # another batch size: fine
    assert y.shape == (4, 3)
    with pytest.raises(ValueError, match=r"dy must have shape \(4, 3\)"):
        model.backward(np.ones((4, 2), np.float32))
    y64 = model.forward(x.astype(np.float64))  # the model follows the input's dtype
    assert y64.dtype == np.float64 and model.dtype == np.float64
    strided = rng.standard_normal((6, 3, 2, 4)).astype(np.float64)[..., ::2]
    np.testing.assert_array_equal(model.forward(strided),
                                  model.forward(np.ascontiguousarray(strided)))
    relu = L.ReLU()
    relu.forward(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="empty batch"):
        relu.forward(np.ones(0, np.float32))
    pool = L.MaxPool2D(2)
    pool.forward(np.ones((1, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match="kernel"):
        pool.forward(np.ones((1, 1, 1, 1), np.float32))


def test_returned_arrays_are_never_overwritten_by_later_calls(rng):
    """Outputs and gradients are fresh arrays: a caller may keep them across steps."""
    model = mlp_bn(rng)
    x1 = rng.standard_normal((6, 3, 2, 2)).astype(np.float32)
    x2 = rng.standard_normal((6, 3, 2, 2)).astype(np.float32)
    kept = []
    for x in (x1, x2, x1, x2):
        y = model.forward(x)
        dx = model.backward(np.ones_like(y))
        kept.append((y, y.copy(), dx, dx.copy()))
    for y, y_copy, dx, dx_copy in kept:
        np.testing.assert_array_equal(y, y_copy)
        np.testing.assert_array_equal(dx, dx_copy)
    assert len({id(k[0]) for k in kept}) == len(kept)


def test_backward_skips_gradients_nobody_needs(rng):
    model = mlp_bn(rng)
    x = rng.standard_normal((6, 3, 2, 2))
    model.forward(x)
    assert model.backward(np.ones((6, 3)), need_input_grad=False) is None
    assert model[1].needs_input_grad is False  # the Dense after Flatten skips its dx
    grads = [p.grad.copy() for p in model.parameters()]
    model.forward(x)
    dx = model.backward(np.ones((6, 3)))
    assert dx.shape == x.shape
    for p, g in zip(model.parameters(), grads):
        np.testing.assert_array_equal(p.grad, g)


def test_step_list_follows_the_layer_list_and_the_fuse_flag(rng):
    model = Sequential(L.Dense(3, 3, rng=rng), L.ReLU())
    assert [type(s) for s in model._steps()] == [_DenseReLU]
    model.append(L.Dense(3, 2, rng=rng))
    assert [type(s) for s in model._steps()] == [_DenseReLU, _Single]
    model.fuse = False
    assert [type(s) for s in model._steps()] == [_Single] * 3
    # a ReLU subclass or another activation is never fused
    class MyReLU(L.ReLU):
        pass
    assert all(type(s) is _Single for s in Sequential(L.Dense(2, 2), MyReLU())._steps())
    assert all(type(s) is _Single for s in Sequential(L.Dense(2, 2), L.Tanh())._steps())


def test_reference_backend_runs_unfused(rng, monkeypatch):
    monkeypatch.setattr(_dispatch, "_CPU_MODULE", "ref")
    monkeypatch.setattr(_dispatch, "_modules", {})
    model = mlp_bn(rng).astype(np.float64)
    twin = clone(model)
    x = rng.standard_normal((6, 3, 2, 2))
    monkeypatch.undo()
    want = run(twin, x, 3)
    monkeypatch.setattr(_dispatch, "_CPU_MODULE", "ref")
    monkeypatch.setattr(_dispatch, "_modules", {})
    got = run(model, x, 3)
    assert not any(getattr(s, "fused", False) for s in model._ran)
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        assert_close(a, b)


# ----- the loss's fast path -----

def test_softmax_cross_entropy_fast_path_matches_and_keeps_the_checks(rng):
    logits = rng.standard_normal((5, 4)).astype(np.float32)
    labels = np.array([0, 3, 1, 1, 2])
    loss = losses.SoftmaxCrossEntropy()
    value = loss.forward(logits, labels)
    grad = loss.backward()
    want, probs = nnkern.functional.softmax_cross_entropy_forward(logits, labels)
    assert value == want
    np.testing.assert_array_equal(grad, nnkern.functional.softmax_cross_entropy_backward(
        probs, labels))
    assert loss.forward(logits, [0, 3, 1, 1, 2]) == value  # lists still work
    assert loss.forward(logits, labels.astype(np.uint8)) == value
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 4\) \(C = 4\), "
                                         "got label 4"):
        loss.forward(logits, np.array([0, 4, 1, 1, 2]))
    with pytest.raises(ValueError, match="labels must be class indices"):
        loss.forward(logits, np.array([0, -1, 1, 1, 2]))
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        loss.forward(logits, labels.astype(np.float32))
    with pytest.raises(ValueError, match="labels has 4 entries but the batch has 5 rows"):
        loss.forward(logits, labels[:4])
    with pytest.raises(RuntimeError, match="called before forward"):
        loss.backward()  # the failed forward left nothing behind
