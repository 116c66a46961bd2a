"""Numba CPU kernels for batch norm, NCHW (viewed as (N, C, L), L = H*W) and (N, F) layouts.

Forward: one reduction pass (statistics), one elementwise pass (y). Backward: one reduction
pass (sum dy, sum dy * xhat), one elementwise pass (dx). The passes, each in a 2d (N, C, L) and
a 1d (N, F) version:

* ``_bn_sums_*``: per-channel sum(u - u_shift) and sum((u - u_shift) * (x - x_shift)) in
  float64. Forward: u = x and both shifts = a sample of the channel, so these are the shifted
  sum and sum of squares; shifting by a value of the channel keeps the one-pass variance
  s2/n - (s1/n)^2 accurate when |mean| >> std (the cancellation is then relative to the
  spread, not to the mean). Backward: u = dy, u_shift = 0, x_shift = mean.
  Parallel over a fixed number (ROW_CHUNKS) of chunks of the array in memory order, not over
  channels (NUMBA_NOTES §2.3, §5.6): each chunk writes its own float64 partials, merged in
  chunk order by the serial ``_bn_*_finish``, so results are bit-identical for the serial and
  parallel variants and any thread count.
* ``_bn_*_finish`` (serial, O(C)): merge the partials and turn them into mean, inv_std, the
  running-statistic update, dgamma, dbeta and the per-channel coefficients of the elementwise
  pass. One jitted call instead of ~20 small NumPy operations: at small sizes the glue costs
  more than the data passes.
* ``_bn_apply_*``: y = (x - mean) * scale + beta, scale = gamma * inv_std.
* ``_bn_dx_*``: dx = p * dy + q * (x - mean) + r.
The elementwise passes compute in float64 from float64 coefficients (memory-bound, so it is
free): with a large mean, x * scale - mean * scale in float32 would cancel catastrophically.
"""

import numpy as np
from numba import prange

from nnkern._jit import cpu_kernel, cpu_serial
from nnkern.ops._reduce import ROW_CHUNKS


@cpu_kernel
def _bn_sums_2d_kernel(u, u_shift, x, x_shift, s1, s2):
    # u, x: (N, C, L); u_shift, x_shift: (C,) float64 -> s1, s2: (ROW_CHUNKS, C) float64 partials
    # The array, flattened in memory order, is cut into ROW_CHUNKS equal ranges; chunk k walks
    # its range plane by plane ((n, c) runs along l) and adds each run's sums to s1[k, c],
    # s2[k, c]. Memory-order chunks stream well and balance for any N, C and L (batch of 1).
    n_, c_, l_ = x.shape
    chunks = s1.shape[0]
    total = n_ * c_ * l_
    for k in prange(chunks):
        for c in range(c_):
            s1[k, c] = 0.0
            s2[k, c] = 0.0
        i = k * total // chunks
        end = (k + 1) * total // chunks
        while i < end:
            plane = i // l_  # = n * C + c
            n = plane // c_
            c = plane - n * c_
            l0 = i - plane * l_
            l1 = min(l_, l0 + (end - i))
            us = u_shift[c]
            xs = x_shift[c]
            # Slices, then indices from 0: LLVM can prove them non-negative, so it drops the
            # wraparound select and vectorises with plain loads (a range(l0, l1) loop gathers).
            u_run = u[n, c, l0:l1]
            x_run = x[n, c, l0:l1]
            acc1 = 0.0
            acc2 = 0.0
            for l in range(u_run.shape[0]):
                d = u_run[l] - us
                acc1 += d
                acc2 += d * (x_run[l] - xs)
            s1[k, c] += acc1
            s2[k, c] += acc2
            i += l1 - l0


@cpu_kernel
def _bn_sums_1d_kernel(u, u_shift, x, x_shift, s1, s2):
    # u, x: (N, F); u_shift, x_shift: (F,) float64 -> s1, s2: (ROW_CHUNKS, F) float64 partials
    # As in 2d, chunk k takes the k-th of ROW_CHUNKS equal ranges of the flattened array; it
    # walks them row by row, the inner loop along contiguous features.
    n_, f_ = x.shape
    chunks = s1.shape[0]
    total = n_ * f_
    for k in prange(chunks):
        for f in range(f_):
            s1[k, f] = 0.0
            s2[k, f] = 0.0
        i = k * total // chunks
        end = (k + 1) * total // chunks
        while i < end:
            r = i // f_
            f0 = i - r * f_
            f1 = min(f_, f0 + (end - i))
            # Slices indexed from 0 vectorise with plain loads (see _bn_sums_2d_kernel).
            u_run, us = u[r, f0:f1], u_shift[f0:f1]
            x_run, xs = x[r, f0:f1], x_shift[f0:f1]
            s1_run, s2_run = s1[k, f0:f1], s2[k, f0:f1]
            for f in range(u_run.shape[0]):
                d = u_run[f] - us[f]
                s1_run[f] += d
                s2_run[f] += d * (x_run[f] - xs[f])
            i += f1 - f0


@cpu_serial
def _bn_train_finish(s1, s2, shift, n, momentum, eps, update, running_mean, running_var, gamma,
                     beta, mean, inv_std, coef):
    # s1, s2: (ROW_CHUNKS, C) float64 partials of sum(x - shift), sum((x - shift)^2) ->
    # mean, inv_std: (C,) x's dtype; coef: (3, C) float64 rows (mean, gamma * inv_std, beta) for
    # _bn_apply_*; running_mean, running_var: (C,) updated in place when ``update``.
    chunks, c_ = s1.shape
    for c in range(c_):
        a1 = 0.0
        a2 = 0.0
        for k in range(chunks):  # merge the chunks in a fixed order (any variant, any threads)
            a1 += s1[k, c]
            a2 += s2[k, c]
        mean_shifted = a1 / n
        mu = shift[c] + mean_shifted
        var = a2 / n - mean_shifted * mean_shifted  # biased
        if var < 0.0:  # rounding; written as a test (not max()) so that NaN propagates
            var = 0.0
        if update:  # PyTorch: the running variance is the unbiased var * n / (n - 1)
            running_mean[c] = momentum * mu + (1.0 - momentum) * running_mean[c]
            running_var[c] = momentum * var * (n / (n - 1.0)) + (1.0 - momentum) * running_var[c]
        inv = 1.0 / np.sqrt(var + eps)
        mean[c] = mu
        inv_std[c] = inv
        coef[0, c] = mu
        coef[1, c] = gamma[c] * inv
        coef[2, c] = beta[c]


@cpu_serial
def _bn_eval_finish(running_mean, running_var, eps, gamma, beta, mean, inv_std, coef):
    # running_mean, running_var: (C,) -> mean, inv_std: (C,) x's dtype; coef: (3, C) float64
    # rows (mean, gamma * inv_std, beta) for _bn_apply_*
    for c in range(running_mean.shape[0]):
        mu = np.float64(running_mean[c])
        inv = 1.0 / np.sqrt(running_var[c] + eps)
        mean[c] = mu
        inv_std[c] = inv
        coef[0, c] = mu
        coef[1, c] = gamma[c] * inv
        coef[2, c] = beta[c]


@cpu_kernel
def _bn_apply_2d_kernel(x, coef, y):
    # x: (N, C, L); coef: (3, C) float64 rows (mean, scale, beta) -> y: (N, C, L)
    # y = (x - mean) * scale + beta, scale = gamma * inv_std
    n_, c_, l_ = x.shape
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc - n * c_
        m = coef[0, c]
        s = coef[1, c]
        b = coef[2, c]
        for l in range(l_):
            y[n, c, l] = (x[n, c, l] - m) * s + b


@cpu_kernel
def _bn_apply_1d_kernel(x, coef, y):
    # x: (N, F); coef: (3, F) float64 rows (mean, scale, beta) -> y: (N, F)
    # y = (x - mean) * scale + beta
    n_, f_ = x.shape
    m, s, b = coef[0], coef[1], coef[2]
    for n in prange(n_):
        for f in range(f_):
            y[n, f] = (x[n, f] - m[f]) * s[f] + b[f]


@cpu_serial
def _bn_backward_finish(s1, s2, gamma, inv_std, n, training, dgamma, dbeta, coef):
    # s1, s2: (ROW_CHUNKS, C) float64 partials of sum dy, sum dy * (x - mean) ->
    # dgamma, dbeta: (C,) x's dtype; coef: (3, C) float64 rows (p, q, r) for _bn_dx_*:
    # dx = gamma*inv_std/n * (n*dy - dbeta - xhat*dgamma) = p*dy + q*(x - mean) + r (training);
    # dx = gamma*inv_std*dy in eval (mean and inv_std are constants there).
    chunks, c_ = s1.shape
    for c in range(c_):
        sum_dy = 0.0
        sum_dy_xc = 0.0
        for k in range(chunks):  # fixed merge order
            sum_dy += s1[k, c]
            sum_dy_xc += s2[k, c]
        inv = np.float64(inv_std[c])
        dg = sum_dy_xc * inv  # sum dy * xhat
        p = gamma[c] * inv
        dgamma[c] = dg
        dbeta[c] = sum_dy
        coef[0, c] = p
        coef[1, c] = -p * inv * dg / n if training else 0.0
        coef[2, c] = -p * sum_dy / n if training else 0.0


@cpu_kernel
def _bn_dx_2d_kernel(dy, x, mean, coef, dx):
    # dy, x: (N, C, L); mean: (C,) float64; coef: (3, C) float64 rows (p, q, r) -> dx: (N, C, L)
    # dx = p * dy + q * (x - mean) + r
    n_, c_, l_ = x.shape
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc - n * c_
        m = mean[c]
        p = coef[0, c]
        q = coef[1, c]
        r = coef[2, c]
        for l in range(l_):
            dx[n, c, l] = p * dy[n, c, l] + q * (x[n, c, l] - m) + r


@cpu_kernel
def _bn_dx_1d_kernel(dy, x, mean, coef, dx):
    # dy, x: (N, F); mean: (F,) float64; coef: (3, F) float64 rows (p, q, r) -> dx: (N, F)
    # dx = p * dy + q * (x - mean) + r
    n_, f_ = x.shape
    p, q, r = coef[0], coef[1], coef[2]
    for n in prange(n_):
        for f in range(f_):
            dx[n, f] = p[f] * dy[n, f] + q[f] * (x[n, f] - mean[f]) + r[f]


def _view(a):
    """(N, F) stays; (N, C, H, W) -> (N, C, H*W) (a view: inputs are C-contiguous)."""
    return a if a.ndim == 2 else a.reshape(a.shape[0], a.shape[1], -1)


def _channel_sums(u, u_shift, x, x_shift):
    """Chunk partials (ROW_CHUNKS, C) of sum(u - u_shift), sum((u - u_shift) * (x - x_shift))."""
    s1 = np.empty((ROW_CHUNKS, x.shape[1]), np.float64)
    s2 = np.empty((ROW_CHUNKS, x.shape[1]), np.float64)
    kernel = _bn_sums_1d_kernel if x.ndim == 2 else _bn_sums_2d_kernel
    kernel.for_size(x.size)(u, u_shift, x, x_shift, s1, s2)
    return s1, s2


def batch_norm_forward(x, gamma, beta, running_mean=None, running_var=None, *, training=True,
                       momentum=0.1, eps=1e-5, out=None):
    # The Python glue is kept to a few calls: small layers are dominated by it.
    xv = _view(x)
    c = x.shape[1]
    mean = np.empty(c, x.dtype)
    inv_std = np.empty(c, x.dtype)
    coef = np.empty((3, c), np.float64)
    if training:
        n = xv.size // c
        shift = (xv[0] if xv.ndim == 2 else xv[0, :, 0]).astype(np.float64)  # a sample each
        s1, s2 = _channel_sums(xv, shift, xv, shift)
        update = running_mean is not None
        _bn_train_finish(s1, s2, shift, float(n), momentum, eps, update,
                         running_mean if update else mean, running_var if update else inv_std,
                         gamma, beta, mean, inv_std, coef)
    else:
        _bn_eval_finish(running_mean, running_var, eps, gamma, beta, mean, inv_std, coef)
    y = np.empty_like(x) if out is None else out
    kernel = _bn_apply_1d_kernel if xv.ndim == 2 else _bn_apply_2d_kernel
    kernel.for_size(x.size)(xv, coef, _view(y))
    return y, mean, inv_std


def batch_norm_backward(dy, x, gamma, mean, inv_std, *, training=True, out=None):
    dx_out, dgamma_out, dbeta_out = (None, None, None) if out is None else out
    xv, dyv = _view(x), _view(dy)
    c = x.shape[1]
    mean64 = mean.astype(np.float64)
    # One pass over dy and x: sum dy and sum dy * (x - mean), then dbeta, dgamma and dx's p, q, r.
    s1, s2 = _channel_sums(dyv, np.zeros(c), xv, mean64)
    dgamma = np.empty(c, x.dtype) if dgamma_out is None else dgamma_out
    dbeta = np.empty(c, x.dtype) if dbeta_out is None else dbeta_out
    coef = np.empty((3, c), np.float64)
    _bn_backward_finish(s1, s2, gamma, inv_std, float(xv.size // c), training, dgamma, dbeta,
                        coef)
    dx = np.empty_like(x) if dx_out is None else dx_out
    kernel = _bn_dx_1d_kernel if xv.ndim == 2 else _bn_dx_2d_kernel
    kernel.for_size(x.size)(dyv, xv, mean64, coef, _view(dx))
    return dx, dgamma, dbeta
