import numba
import numpy as np
import pytest

import nnkern._jit as jit
import nnkern.functional as F
from nnkern.ops.batch_norm import ref
from nnkern.testing import assert_close, check_gradients, upstream

# (N, F) and (N, C, H, W); odd sizes, batch of 1 with H*W > 1 (valid in training), fewer values
# per channel than reduction chunks, and chunks that end in the middle of an (n, c) plane.
SHAPES = [(2, 3), (7, 13), (64, 100), (33, 1),
          (1, 3, 2, 3), (2, 3, 4, 5), (5, 1, 1, 2), (3, 17, 9, 11), (4, 2, 1, 1),
          (6, 12, 2, 2)]  # many channels of tiny planes: run as (N, C * L) rows


def make(rng, shape, dtype, loc=0.5, scale=2.0):
    c = shape[1]
    x = (loc + scale * rng.standard_normal(shape)).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, c).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    running_mean = rng.standard_normal(c).astype(dtype)
    running_var = rng.uniform(0.5, 2.0, c).astype(dtype)
    return x, gamma, beta, running_mean, running_var


def f64(*arrays):
    return [a.astype(np.float64) for a in arrays]


def channels_last(a):
    """(N, C, ...) -> (N * ..., C): one column per channel."""
    return np.moveaxis(a.reshape(a.shape[0], a.shape[1], -1), 1, 2).reshape(-1, a.shape[1])


# ----- the reference against hand-computed values and independent formulas -----

def test_reference_matches_hand_computed():
    x = np.array([[1.0, 2.0], [3.0, 6.0]])  # mean (2, 4), biased var (1, 4)
    gamma, beta = np.array([2.0, 1.0]), np.array([0.0, 1.0])
    rm, rv = np.zeros(2), np.ones(2)
    y, mean, inv_std = ref.batch_norm_forward(x, gamma, beta, rm, rv, momentum=0.5, eps=0.0)
    np.testing.assert_array_equal(mean, [2.0, 4.0])
    np.testing.assert_array_equal(inv_std, [1.0, 0.5])
    np.testing.assert_array_equal(y, [[-2.0, 0.0], [2.0, 2.0]])
    np.testing.assert_array_equal(rm, [1.0, 2.0])  # 0.5 * 0 + 0.5 * mean
    np.testing.assert_array_equal(rv, [1.5, 4.5])  # 0.5 * 1 + 0.5 * var * 2 / 1 (unbiased)
    dy = np.array([[1.0, 0.0], [0.0, 2.0]])
    dx, dgamma, dbeta = ref.batch_norm_backward(dy, x, gamma, mean, inv_std)
    np.testing.assert_array_equal(dbeta, [1.0, 2.0])
    np.testing.assert_array_equal(dgamma, [-1.0, 2.0])  # xhat = [[-1, -1], [1, 1]]
    np.testing.assert_array_equal(dx, np.zeros((2, 2)))  # with n = 2, y is constant (+-gamma)
    y, mean, inv_std = ref.batch_norm_forward(x, gamma, beta, rm, rv, training=False, eps=0.0)
    np.testing.assert_array_equal(mean, [1.0, 2.0])
    np.testing.assert_allclose(inv_std, [1 / np.sqrt(1.5), 1 / np.sqrt(4.5)])
    dx, _, _ = ref.batch_norm_backward(dy, x, gamma, mean, inv_std, training=False)
    np.testing.assert_allclose(dx, dy * gamma * inv_std)


@pytest.mark.parametrize("shape", [(6, 4), (3, 2, 4, 5)])
def test_reference_matches_step_by_step_formula(rng, shape):
    x, gamma, beta, _, _ = make(rng, shape, np.float64)
    dy = rng.standard_normal(shape)
    eps = 1e-3
    y, mean, inv_std = ref.batch_norm_forward(x, gamma, beta, eps=eps)
    # Columns per channel; np.var and the chain rule of the seed (S1 eq 10.12) written out.
    xc, dyc = channels_last(x), channels_last(dy)
    n = xc.shape[0]
    mu, var = xc.mean(axis=0), xc.var(axis=0)
    assert_close(mean, mu)
    assert_close(inv_std, 1 / np.sqrt(var + eps))
    assert_close(channels_last(y), gamma * (xc - mu) / np.sqrt(var + eps) + beta)
    dxhat = dyc * gamma
    dvar = np.sum(dxhat * (xc - mu), axis=0) * -0.5 * (var + eps) ** -1.5
    dmu = -np.sum(dxhat, axis=0) / np.sqrt(var + eps) + dvar * np.mean(-2 * (xc - mu), axis=0)
    dxc = dxhat / np.sqrt(var + eps) + dvar * 2 * (xc - mu) / n + dmu / n
    dx, dgamma, dbeta = ref.batch_norm_backward(dy, x, gamma, mean, inv_std)
    assert_close(channels_last(dx), dxc)
    assert_close(dgamma, np.sum(dyc * (xc - mu) / np.sqrt(var + eps), axis=0))
    assert_close(dbeta, dyc.sum(axis=0))


@pytest.mark.parametrize("module", [ref, F], ids=["ref", "cpu"])
@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 2, 2)])
def test_running_statistics_over_several_steps(rng, module, shape):
    c = shape[1]
    rm, rv = np.zeros(c), np.ones(c)
    want_mean, want_var = np.zeros(c), np.ones(c)
    gamma, beta = np.ones(c), np.zeros(c)
    for step, momentum in enumerate([0.1, 0.1, 0.5, 1.0, 0.0, 1 / 3]):
        x = rng.standard_normal(shape) * (step + 1) + step
        module.batch_norm_forward(x, gamma, beta, rm, rv, momentum=momentum)
        cols = channels_last(x)
        want_mean = (1 - momentum) * want_mean + momentum * cols.mean(axis=0)
        want_var = (1 - momentum) * want_var + momentum * cols.var(axis=0, ddof=1)
        assert_close(rm, want_mean)
        assert_close(rv, want_var)
    # eval uses them and updates nothing
    x = rng.standard_normal(shape)
    y, mean, inv_std = module.batch_norm_forward(x, gamma, beta, rm, rv, training=False, eps=0.1)
    assert_close(rm, want_mean)
    assert_close(rv, want_var)
    assert mean is not rm
    assert_close(inv_std, 1 / np.sqrt(want_var + 0.1))
    assert_close(channels_last(y), (channels_last(x) - want_mean) / np.sqrt(want_var + 0.1))


# ----- the CPU kernels against the reference -----

@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_matches_reference(rng, variant, shape, dtype, training):
    x, gamma, beta, rm, rv = make(rng, shape, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    x64, gamma64, beta64, rm64, rv64, dy64 = f64(x, gamma, beta, rm, rv, dy)
    kw = dict(training=training, momentum=0.3, eps=1e-3)
    y, mean, inv_std = F.batch_norm_forward(x, gamma, beta, rm, rv, **kw)
    y_ref, mean_ref, inv_std_ref = ref.batch_norm_forward(x64, gamma64, beta64, rm64, rv64, **kw)
    for got, want in ((y, y_ref), (mean, mean_ref), (inv_std, inv_std_ref), (rm, rm64),
                      (rv, rv64)):
        assert got.dtype == dtype
        assert_close(got, want)
    # backward from the same (rounded) mean and inv_std, so it checks the backward kernel alone
    grads = F.batch_norm_backward(dy, x, gamma, mean, inv_std, training=training)
    grads_ref = ref.batch_norm_backward(dy64, x64, gamma64, *f64(mean, inv_std), training=training)
    n = x.size // x.shape[1]
    for got, want in zip(grads, grads_ref):
        assert got.dtype == dtype
        assert_close(got, want, scale=1 + n / 100)


def test_batch_of_one_is_valid_in_eval_1d(rng):
    x, gamma, beta, rm, rv = make(rng, (1, 5), np.float64)
    y, mean, inv_std = F.batch_norm_forward(x, gamma, beta, rm, rv, training=False)
    assert_close(y, ref.batch_norm_forward(x, gamma, beta, rm, rv, training=False)[0])


@pytest.mark.parametrize("shape", [(64, 37), (4, 3, 16, 16)])
def test_large_mean_float32(rng, variant, shape):
    # |mean| / std = 1e6: an unshifted one-pass variance is off by percents even in float64
    # (float32 loses every digit), and so is y = x * scale + shift evaluated in float32.
    x, gamma, beta, rm, rv = make(rng, shape, np.float32, loc=1000.0, scale=1e-3)
    x64, gamma64, beta64, rm64, rv64 = f64(x, gamma, beta, rm, rv)
    y, mean, inv_std = F.batch_norm_forward(x, gamma, beta, rm, rv, eps=1e-9)
    y_ref, mean_ref, inv_std_ref = ref.batch_norm_forward(x64, gamma64, beta64, rm64, rv64,
                                                          eps=1e-9)
    for got, want in ((y, y_ref), (mean, mean_ref), (inv_std, inv_std_ref), (rm, rm64),
                      (rv, rv64)):
        assert_close(got, want)
    # the test data is what it claims: y is normalised (std gamma), so eps barely matters
    np.testing.assert_allclose(channels_last(y_ref).std(axis=0), gamma64, rtol=1e-3)
    # backward, with the returned float32 mean and inv_std on both sides
    dy = rng.standard_normal(shape).astype(np.float32)
    grads = F.batch_norm_backward(dy, x, gamma, mean, inv_std)
    grads_ref = ref.batch_norm_backward(*f64(dy, x, gamma, mean, inv_std))
    n = x.size // x.shape[1]
    for got, want in zip(grads, grads_ref):
        assert_close(got, want, scale=1 + n / 100)


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 2, 2)])
def test_nan_propagates_to_its_channel_only(rng, shape):
    x, gamma, beta, rm, rv = make(rng, shape, np.float64)
    x[(1, 0) + (1,) * (x.ndim - 2)] = np.nan
    y, mean, inv_std = F.batch_norm_forward(x, gamma, beta, rm, rv)
    for a in (mean, inv_std, rm, rv):
        assert np.isnan(a[0]) and np.isfinite(a[1:]).all()
    assert np.isnan(y[:, 0]).all() and np.isfinite(y[:, 1:]).all()


# ----- gradients by central finite differences (float64) -----

@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 3)])
@pytest.mark.parametrize("module", [ref, F], ids=["ref", "cpu"])
def test_gradients_finite_difference(rng, module, shape, training):
    x, gamma, beta, rm, rv = make(rng, shape, np.float64)
    stats = (rm, rv) if not training else (None, None)  # training: no running-stat updates
    r = upstream(shape, rng)

    def loss():
        y, _, _ = module.batch_norm_forward(x, gamma, beta, *stats, training=training, eps=1e-3)
        return float(np.sum(y * r))

    _, mean, inv_std = module.batch_norm_forward(x, gamma, beta, *stats, training=training,
                                                 eps=1e-3)
    dx, dgamma, dbeta = module.batch_norm_backward(r, x, gamma, mean, inv_std, training=training)
    check_gradients(loss, {"x": x, "gamma": gamma, "beta": beta},
                    {"x": dx, "gamma": dgamma, "beta": dbeta})


# ----- determinism: serial and parallel kernels, any thread count -----

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(301, 37), (8, 6, 17, 19)])
def test_bit_identical_for_any_thread_count(rng, monkeypatch, shape, dtype):
    """Fixed chunks: the parallel kernels give the same bits on 1 or 2 threads. The serial
    variant is a separately compiled function that may vectorise its sums in another order
    (fastmath reassoc), so it agrees to rounding only."""
    x, gamma, beta, rm0, rv0 = make(rng, shape, dtype, loc=3.0)
    dy = rng.standard_normal(shape).astype(dtype)

    def run(min_work, threads=None):
        monkeypatch.setattr(jit, "PARALLEL_MIN_WORK", min_work)
        before = numba.get_num_threads()
        numba.set_num_threads(threads or before)
        try:
            rm, rv = rm0.copy(), rv0.copy()
            y, mean, inv_std = F.batch_norm_forward(x, gamma, beta, rm, rv)
            return (y, mean, inv_std, rm, rv,
                    *F.batch_norm_backward(dy, x, gamma, mean, inv_std),
                    *F.batch_norm_backward(dy, x, gamma, mean, inv_std, training=False))
        finally:
            numba.set_num_threads(before)

    serial, parallel, one_thread = run(1 << 62), run(0), run(0, threads=1)
    for s, p, p1 in zip(serial, parallel, one_thread):
        np.testing.assert_array_equal(p, p1)
        assert_close(s, p)


# ----- out= buffers -----

@pytest.mark.parametrize("shape", [(6, 4), (2, 4, 3, 3)])
def test_writes_into_out_buffers(rng, shape):
    x, gamma, beta, rm, rv = make(rng, shape, np.float32)
    y_buf = np.empty_like(x)
    y, mean, inv_std = F.batch_norm_forward(x, gamma, beta, rm, rv, out=y_buf)
    assert y is y_buf
    assert_close(y, ref.batch_norm_forward(*f64(x, gamma, beta))[0])
    dy = rng.standard_normal(shape).astype(np.float32)
    bufs = (np.empty_like(x), None, np.empty_like(beta))
    dx, dgamma, dbeta = F.batch_norm_backward(dy, x, gamma, mean, inv_std, out=bufs)
    assert dx is bufs[0] and dbeta is bufs[2] and dgamma.dtype == np.float32
    want = ref.batch_norm_backward(*f64(dy, x, gamma, mean, inv_std))
    for got, w in zip((dx, dgamma, dbeta), want):
        assert_close(got, w)
    # in place: y may be x itself, dx may be dy itself (elementwise after the reductions)
    x2 = x.copy()
    F.batch_norm_forward(x2, gamma, beta, out=x2)
    assert_close(x2, y)
    dy2 = dy.copy()
    F.batch_norm_backward(dy2, x, gamma, mean, inv_std, out=(dy2, None, None))
    assert_close(dy2, dx)


# ----- bad input -----

def test_bad_input_is_rejected_with_a_clear_message(rng):
    x, gamma, beta, rm, rv = make(rng, (4, 3, 2, 2), np.float32)
    fwd, bwd = F.batch_norm_forward, F.batch_norm_backward
    with pytest.raises(ValueError, match=r"x must be 2-D \(N, features\) or 4-D \(N, C, H, W\), "
                                         r"got shape \(4, 3, 4\)"):
        fwd(x.reshape(4, 3, 4), gamma, beta)
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\) \(one per channel of x\), "
                                         r"got \(4,\)"):
        fwd(x, np.ones(4, np.float32), beta)
    with pytest.raises(ValueError, match=r"beta must be 1-D"):
        fwd(x, gamma, beta.reshape(3, 1))
    with pytest.raises(ValueError, match=r"running_var must have shape \(3,\)"):
        fwd(x, gamma, beta, rm, np.ones(2, np.float32))
    with pytest.raises(TypeError, match="beta has dtype float64 but the other arguments are "
                                        "float32"):
        fwd(x, gamma, beta.astype(np.float64))
    with pytest.raises(TypeError, match="running_mean has dtype float64"):
        fwd(x, gamma, beta, rm.astype(np.float64), rv)
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got int64"):
        fwd(np.ones((4, 3), np.int64), gamma, beta)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        fwd(np.ones((4, 6), np.float32)[:, ::2], gamma, beta)
    with pytest.raises(ValueError, match="gamma must be C-contiguous"):
        fwd(np.ones((4, 3), np.float32), np.ones(6, np.float32)[::2], beta)
    with pytest.raises(ValueError, match=r"x has empty batch: shape \(0, 3, 2, 2\)"):
        fwd(np.ones((0, 3, 2, 2), np.float32), gamma, beta)
    with pytest.raises(ValueError, match=r"eval mode \(training=False\) needs running_mean and "
                                         "running_var"):
        fwd(x, gamma, beta, training=False)
    with pytest.raises(ValueError, match="running_mean and running_var must be given together"):
        fwd(x, gamma, beta, rm)
    with pytest.raises(ValueError, match=r"momentum must be in \[0.0, 1.0\], got 1.5"):
        fwd(x, gamma, beta, rm, rv, momentum=1.5)
    with pytest.raises(ValueError, match=r"momentum must be in \[0.0, 1.0\], got -0.1"):
        fwd(x, gamma, beta, rm, rv, momentum=-0.1)
    with pytest.raises(TypeError, match="momentum must be a number, got NoneType"):
        fwd(x, gamma, beta, rm, rv, momentum=None)
    with pytest.raises(ValueError, match=r"eps must be in \[0.0, inf\), got -1e-05"):
        fwd(x, gamma, beta, eps=-1e-5)
    with pytest.raises(TypeError, match="training must be True or False, got str"):
        fwd(x, gamma, beta, training="yes")
    for one_per_channel in ((1, 3), (1, 3, 1, 1)):
        with pytest.raises(ValueError, match="expected more than 1 value per channel when "
                                             r"training, got x of shape \(1, 3"):
            fwd(np.ones(one_per_channel, np.float32), gamma, beta)
    with pytest.raises(ValueError, match=r"out must have shape \(4, 3, 2, 2\)"):
        fwd(x, gamma, beta, out=np.empty((4, 3, 4), np.float32))
    with pytest.raises(TypeError, match="gamma must be an array, got list"):
        fwd(x, [1.0, 1.0, 1.0], beta)
    _, mean, inv_std = fwd(x, gamma, beta)
    with pytest.raises(ValueError, match=r"dy must have shape \(4, 3, 2, 2\) \(the shape of x\), "
                                         r"got \(4, 3, 2, 1\)"):
        bwd(np.ones((4, 3, 2, 1), np.float32), x, gamma, mean, inv_std)
    with pytest.raises(TypeError, match="dy has dtype float64 but the other arguments are float32"):
        bwd(x.astype(np.float64), x, gamma, mean, inv_std)
    with pytest.raises(TypeError, match="mean has dtype float64"):
        bwd(x, x, gamma, mean.astype(np.float64), inv_std)
    with pytest.raises(ValueError, match=r"inv_std must have shape \(3,\)"):
        bwd(x, x, gamma, mean, np.ones(5, np.float32))
    with pytest.raises(ValueError, match=r"out must be a tuple \(dx, dgamma, dbeta\)"):
        bwd(x, x, gamma, mean, inv_std, out=(None, None))
    with pytest.raises(ValueError, match=r"out dgamma must have shape \(3,\)"):
        bwd(x, x, gamma, mean, inv_std, out=(None, np.empty(4, np.float32), None))
    with pytest.raises(TypeError, match="training must be True or False, got int"):
        bwd(x, x, gamma, mean, inv_std, training=1)
