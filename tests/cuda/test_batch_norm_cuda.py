"""CUDA batch-norm kernels against the NumPy reference (simulator in CI, a real GPU when present).

Shapes are small for the simulator but chosen to reach every path: 1d (N, F) with one and with
several row chunks, 2d with H*W = 1 (routed to the 1d kernels), 2d planes shorter than a block
(threads step across samples), and more values per channel than one block takes (several
partial blocks merged by the finish kernel).
"""

import numpy as np
import pytest

import nnkern
import nnkern.functional as F
from nnkern.backend import device_of, to_host
from nnkern.ops.batch_norm import ref
from nnkern.testing import assert_close

pytestmark = pytest.mark.cuda

SHAPES = [
    (7, 13),          # 1d, one chunk
    (300, 5),         # 1d, 3 row chunks, rows not a multiple of the block's 8
    (1, 3, 2, 3),     # batch of 1
    (40, 3, 3, 7),    # L = 21: each thread's values span several samples; C = 3 does
                      # not divide the elementwise kernels' plane step (32)
    (2, 1, 50, 51),   # 5100 values per channel: 2 partial blocks
    (3, 4, 1, 1),     # H*W = 1: the 1d kernels
]


def dev(a):
    return nnkern.to_device(a, "cuda")


def make(rng, shape, dtype, loc=0.5, scale=2.0):
    c = shape[1]
    x = (loc + scale * rng.standard_normal(shape)).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, c).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    running_mean = rng.standard_normal(c).astype(dtype)
    running_var = rng.uniform(0.5, 2.0, c).astype(dtype)
    return x, gamma, beta, running_mean, running_var


def f64(*arrays):
    return [np.asarray(a, np.float64) for a in arrays]


def channels_last(a):
    """(N, C, ...) -> (N * ..., C): one column per channel."""
    return np.moveaxis(a.reshape(a.shape[0], a.shape[1], -1), 1, 2).reshape(-1, a.shape[1])


# ----- cuda vs reference -----

@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(rng, shape, dtype, training):
    x, gamma, beta, rm, rv = make(rng, shape, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    x64, gamma64, beta64, rm64, rv64, dy64 = f64(x, gamma, beta, rm, rv, dy)
    kw = dict(training=training, momentum=0.3, eps=1e-3)
    rm_d, rv_d = dev(rm), dev(rv)
    y, mean, inv_std = F.batch_norm_forward(dev(x), dev(gamma), dev(beta), rm_d, rv_d, **kw)
    y_ref, mean_ref, inv_std_ref = ref.batch_norm_forward(x64, gamma64, beta64, rm64, rv64, **kw)
    for got, want in ((y, y_ref), (mean, mean_ref), (inv_std, inv_std_ref), (rm_d, rm64),
                      (rv_d, rv64)):
        assert device_of(got) == "cuda" and got.dtype == dtype and got.shape == want.shape
        assert_close(to_host(got), want)
    # backward from the same (rounded) mean and inv_std, so it checks the backward kernels alone
    grads = F.batch_norm_backward(dev(dy), dev(x), dev(gamma), mean, inv_std, training=training)
    grads_ref = ref.batch_norm_backward(dy64, x64, gamma64, *f64(to_host(mean), to_host(inv_std)),
                                        training=training)
    n = x.size // x.shape[1]
    for got, want in zip(grads, grads_ref):
        assert device_of(got) == "cuda" and got.dtype == dtype and got.shape == want.shape
        assert_close(to_host(got), want, scale=1 + n / 100)


def test_training_without_running_statistics(rng):
    x, gamma, beta, _, _ = make(rng, (5, 3, 2, 2), np.float32)
    y, mean, inv_std = F.batch_norm_forward(dev(x), dev(gamma), dev(beta))
    y_ref, mean_ref, inv_std_ref = ref.batch_norm_forward(*f64(x, gamma, beta))
    for got, want in ((y, y_ref), (mean, mean_ref), (inv_std, inv_std_ref)):
        assert_close(to_host(got), want)


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 2, 2)])
def test_running_statistics_over_several_steps(rng, shape):
    c = shape[1]
    rm, rv = dev(np.zeros(c)), dev(np.ones(c))
    want_mean, want_var = np.zeros(c), np.ones(c)
    gamma, beta = dev(np.ones(c)), dev(np.zeros(c))
    for step, momentum in enumerate([0.1, 0.5, 1.0, 0.0, 1 / 3]):
        x = rng.standard_normal(shape) * (step + 1) + step
        F.batch_norm_forward(dev(x), gamma, beta, rm, rv, momentum=momentum)
        cols = channels_last(x)
        want_mean = (1 - momentum) * want_mean + momentum * cols.mean(axis=0)
        want_var = (1 - momentum) * want_var + momentum * cols.var(axis=0, ddof=1)
        assert_close(to_host(rm), want_mean)
        assert_close(to_host(rv), want_var)
    # eval uses them and updates nothing
    x = rng.standard_normal(shape)
    y, mean, inv_std = F.batch_norm_forward(dev(x), gamma, beta, rm, rv, training=False, eps=0.1)
    assert_close(to_host(rm), want_mean)
    assert_close(to_host(rv), want_var)
    assert mean is not rm
    assert_close(to_host(mean), want_mean)
    assert_close(to_host(inv_std), 1 / np.sqrt(want_var + 0.1))
    assert_close(channels_last(to_host(y)),
                 (channels_last(x) - want_mean) / np.sqrt(want_var + 0.1))


@pytest.mark.parametrize("shape", [(200, 3), (4, 2, 25, 26)])
def test_large_mean_float32(rng, shape):
    """|mean| / std = 1e6 in float32 (x = 1000 + 1e-3 noise), at the default float32
    tolerance against the float64 reference of the same float32 data. A one-pass
    sum / sum-of-squares variance in float32 loses every digit here; means kept relative to a
    sample of the channel, per-thread shifted sums and Chan merges keep the variance to a few
    ulps, and y folds the rounding error of the float32 mean back in."""
    x, gamma, beta, rm, rv = make(rng, shape, np.float32, loc=1000.0, scale=1e-3)
    x64, gamma64, beta64, rm64, rv64 = f64(x, gamma, beta, rm, rv)
    rm_d, rv_d = dev(rm), dev(rv)
    y, mean, inv_std = F.batch_norm_forward(dev(x), dev(gamma), dev(beta), rm_d, rv_d, eps=1e-9)
    y_ref, mean_ref, inv_std_ref = ref.batch_norm_forward(x64, gamma64, beta64, rm64, rv64,
                                                          eps=1e-9)
    for got, want in ((y, y_ref), (mean, mean_ref), (inv_std, inv_std_ref), (rm_d, rm64),
                      (rv_d, rv64)):
        assert_close(to_host(got), want)
    # the test data is what it claims: y is normalised (std gamma), so eps barely matters
    np.testing.assert_allclose(channels_last(y_ref).std(axis=0), gamma64, rtol=1e-3)
    dy = rng.standard_normal(shape).astype(np.float32)
    grads = F.batch_norm_backward(dev(dy), dev(x), dev(gamma), mean, inv_std)
    grads_ref = ref.batch_norm_backward(*f64(dy, x, gamma, to_host(mean), to_host(inv_std)))
    n = x.size // x.shape[1]
    for got, want in zip(grads, grads_ref):
        assert_close(to_host(got), want, scale=1 + n / 100)


def test_nan_propagates_to_its_channel_only(rng):
    x, gamma, beta, rm, rv = make(rng, (5, 3, 2, 2), np.float32)
    x[1, 0, 1, 0] = np.nan
    rm_d, rv_d = dev(rm), dev(rv)
    y, mean, inv_std = F.batch_norm_forward(dev(x), dev(gamma), dev(beta), rm_d, rv_d)
    for a in (mean, inv_std, rm_d, rv_d):
        a = to_host(a)
        assert np.isnan(a[0]) and np.isfinite(a[1:]).all()
    y = to_host(y)
    assert np.isnan(y[:, 0]).all() and np.isfinite(y[:, 1:]).all()


@pytest.mark.parametrize("shape", [(300, 5), (40, 3, 3, 7)])
def test_grid_stride_loops_over_planes(rng, monkeypatch, shape):
    """With the elementwise launches capped at one block along the planes (CUDA's cap is
    65535), every thread loops over many planes: unrolled trips, the tail, the channel
    stepping of the 2d layout."""
    from nnkern.ops.batch_norm import cuda as bn_cuda  # imports numba.cuda: only in cuda runs
    monkeypatch.setattr(bn_cuda, "MAX_GRID_Y", 1)
    bn_cuda._grid_planes.cache_clear()
    try:
        x, gamma, beta, rm, rv = make(rng, shape, np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        for training in (True, False):
            y, mean, inv_std = F.batch_norm_forward(dev(x), dev(gamma), dev(beta), dev(rm),
                                                    dev(rv), training=training)
            want = ref.batch_norm_forward(*f64(x, gamma, beta, rm, rv), training=training)
            for got, w in zip((y, mean, inv_std), want):
                assert_close(to_host(got), w)
            grads = F.batch_norm_backward(dev(dy), dev(x), dev(gamma), mean, inv_std,
                                          training=training)
            want = ref.batch_norm_backward(*f64(dy, x, gamma, to_host(mean), to_host(inv_std)),
                                           training=training)
            for got, w in zip(grads, want):
                assert_close(to_host(got), w, scale=4)
    finally:
        bn_cuda._grid_planes.cache_clear()


# ----- determinism, out= -----

@pytest.mark.parametrize("shape", [(300, 5), (2, 1, 50, 51)])
def test_two_runs_give_identical_bits(rng, shape):
    x, gamma, beta, rm0, rv0 = make(rng, shape, np.float32, loc=3.0)
    dy = rng.standard_normal(shape).astype(np.float32)

    def run():
        rm, rv = dev(rm0), dev(rv0)
        y, mean, inv_std = F.batch_norm_forward(dev(x), dev(gamma), dev(beta), rm, rv)
        out = [y, mean, inv_std, rm, rv,
               *F.batch_norm_backward(dev(dy), dev(x), dev(gamma), mean, inv_std)]
        return [to_host(a) for a in out]

    for a, b in zip(run(), run()):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("shape", [(6, 4), (2, 4, 3, 3)])
def test_writes_into_out_buffers(rng, shape):
    x, gamma, beta, rm, rv = make(rng, shape, np.float32)
    x_d, gamma_d, beta_d = dev(x), dev(gamma), dev(beta)
    y_buf = dev(np.full(shape, 7.0, np.float32))
    y, mean, inv_std = F.batch_norm_forward(x_d, gamma_d, beta_d, out=y_buf)
    assert y is y_buf
    assert_close(to_host(y), ref.batch_norm_forward(*f64(x, gamma, beta))[0])
    dy = rng.standard_normal(shape).astype(np.float32)
    bufs = (dev(np.empty_like(x)), None, dev(np.empty_like(beta)))
    dx, dgamma, dbeta = F.batch_norm_backward(dev(dy), x_d, gamma_d, mean, inv_std, out=bufs)
    assert dx is bufs[0] and dbeta is bufs[2] and dgamma.dtype == np.float32
    want = ref.batch_norm_backward(*f64(dy, x, gamma, to_host(mean), to_host(inv_std)))
    for got, w in zip((dx, dgamma, dbeta), want):
        assert_close(to_host(got), w, scale=2)
    # in place: y may be x itself, dx may be dy itself (elementwise after the reductions)
    x2 = dev(x)
    F.batch_norm_forward(x2, gamma_d, beta_d, out=x2)
    np.testing.assert_array_equal(to_host(x2), to_host(y))
    dy2 = dev(dy)
    F.batch_norm_backward(dy2, x_d, gamma_d, mean, inv_std, out=(dy2, None, None))
    np.testing.assert_array_equal(to_host(dy2), to_host(dx))


# ----- bad input -----

def test_bad_input_on_the_device_is_rejected(rng):
    x, gamma, beta, rm, rv = make(rng, (4, 3, 2, 2), np.float32)
    x_d, gamma_d, beta_d = dev(x), dev(gamma), dev(beta)
    with pytest.raises(ValueError, match=r"x, gamma, beta, running_var on cuda; "
                                         r"running_mean on cpu"):
        F.batch_norm_forward(x_d, gamma_d, beta_d, rm, dev(rv))
    with pytest.raises(ValueError, match=r"out on cpu"):
        F.batch_norm_forward(x_d, gamma_d, beta_d, out=np.empty_like(x))
    _, mean, inv_std = F.batch_norm_forward(x_d, gamma_d, beta_d)
    with pytest.raises(ValueError, match=r"dy on cpu"):
        F.batch_norm_backward(x, x_d, gamma_d, mean, inv_std)
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\)"):
        F.batch_norm_forward(x_d, dev(np.ones(4, np.float32)), beta_d)
    with pytest.raises(TypeError, match="beta has dtype float64 but the other arguments are "
                                        "float32"):
        F.batch_norm_forward(x_d, gamma_d, dev(beta.astype(np.float64)))
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got int32"):
        F.batch_norm_forward(dev(np.ones((4, 3), np.int32)), gamma_d, beta_d)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        F.batch_norm_forward(dev(np.ones((4, 6), np.float32))[:, ::2], gamma_d, beta_d)
    with pytest.raises(ValueError, match="expected more than 1 value per channel"):
        F.batch_norm_forward(dev(np.ones((1, 3), np.float32)), gamma_d, beta_d)
    with pytest.raises(ValueError, match=r"eval mode \(training=False\) needs running_mean"):
        F.batch_norm_forward(x_d, gamma_d, beta_d, training=False)
