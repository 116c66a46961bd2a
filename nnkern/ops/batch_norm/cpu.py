"""Numba CPU kernels for batch norm, NCHW (viewed as (N, C, L), L = H*W) and (N, F) layouts.

Three kinds of kernel, each in a 2d (N, C, L) and a 1d (N, F) version:

* ``_bn_sums_*``: per-channel s1 = sum(u - u_shift), s2 = sum((u - u_shift) * (x - x_shift))
  in float64. The forward statistics are u = x with both shifts = a sample of the channel
  (s1, s2 = shifted sum and sum of squares); the backward sums are u = dy, u_shift = 0,
  x_shift = mean (s1 = sum dy, s2 = sum dy * (x - mean)). One pass over the data.
  Shifting by a value of the channel keeps the one-pass variance s2/n - (s1/n)^2 accurate
  when |mean| >> std (the cancellation is relative to the spread, not to the mean).
  Parallel over a fixed number (ROW_CHUNKS) of row chunks, not only over channels
  (NUMBA_NOTES §2.3, §5.6): each chunk writes its own float64 partial, and the partials are
  merged in chunk order, so the result is bit-identical for the serial and parallel variants
  and any thread count.
* ``_bn_apply_*``: y = (x - mean) * scale + beta, scale = gamma * inv_std.
* ``_bn_dx_*``: dx = p * dy + q * (x - mean) + r, with per-channel p, q, r from the sums.
The elementwise kernels get float64 coefficients and compute in float64 (memory-bound, so it is
free): with a large mean, float32 x * scale - mean * scale would cancel catastrophically.
"""

import numpy as np
from numba import prange

from nnkern._jit import cpu_kernel
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


@cpu_kernel
def _bn_apply_2d_kernel(x, mean, scale, beta, y):
    # x: (N, C, L); mean, scale, beta: (C,) float64 -> y: (N, C, L)
    # y = (x - mean) * scale + beta, scale = gamma * inv_std
    n_, c_, l_ = x.shape
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc - n * c_
        m = mean[c]
        s = scale[c]
        b = beta[c]
        for l in range(l_):
            y[n, c, l] = (x[n, c, l] - m) * s + b


@cpu_kernel
def _bn_apply_1d_kernel(x, mean, scale, beta, y):
    # x: (N, F); mean, scale, beta: (F,) float64 -> y: (N, F); y = (x - mean) * scale + beta
    n_, f_ = x.shape
    for n in prange(n_):
        for f in range(f_):
            y[n, f] = (x[n, f] - mean[f]) * scale[f] + beta[f]


@cpu_kernel
def _bn_dx_2d_kernel(dy, x, mean, p, q, r, dx):
    # dy, x: (N, C, L); mean, p, q, r: (C,) float64 -> dx: (N, C, L)
    # dx = p * dy + q * (x - mean) + r (coefficients: see _dx_coefficients)
    n_, c_, l_ = x.shape
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc - n * c_
        m = mean[c]
        pc = p[c]
        qc = q[c]
        rc = r[c]
        for l in range(l_):
            dx[n, c, l] = pc * dy[n, c, l] + qc * (x[n, c, l] - m) + rc


@cpu_kernel
def _bn_dx_1d_kernel(dy, x, mean, p, q, r, dx):
    # dy, x: (N, F); mean, p, q, r: (F,) float64 -> dx: (N, F); dx = p * dy + q * (x - mean) + r
    n_, f_ = x.shape
    for n in prange(n_):
        for f in range(f_):
            dx[n, f] = p[f] * dy[n, f] + q[f] * (x[n, f] - mean[f]) + r[f]


def _view(a):
    """(N, F) stays; (N, C, H, W) -> (N, C, H*W) (a view: inputs are C-contiguous)."""
    return a if a.ndim == 2 else a.reshape(a.shape[0], a.shape[1], -1)


def _channel_sums(u, u_shift, x, x_shift):
    """Per-channel float64 (sum(u - u_shift), sum((u - u_shift) * (x - x_shift)))."""
    kernel = _bn_sums_1d_kernel if x.ndim == 2 else _bn_sums_2d_kernel
    s1 = np.empty((ROW_CHUNKS, x.shape[1]), np.float64)
    s2 = np.empty_like(s1)
    kernel.for_size(x.size)(u, u_shift, x, x_shift, s1, s2)
    # Merge the chunk partials in chunk order (numpy adds the rows of axis 0 one after another).
    return s1.sum(axis=0), s2.sum(axis=0)


def _values_per_channel(x):
    return x.shape[0] * (x.shape[2] if x.ndim == 3 else 1)


def batch_norm_forward(x, gamma, beta, running_mean=None, running_var=None, *, training=True,
                       momentum=0.1, eps=1e-5, out=None):
    xv = _view(x)
    if training:
        n = _values_per_channel(xv)
        shift = (xv[0, :, 0] if xv.ndim == 3 else xv[0]).astype(np.float64)  # one sample each
        s1, s2 = _channel_sums(xv, shift, xv, shift)
        mean_shifted = s1 / n
        mean = shift + mean_shifted
        var = np.maximum(s2 / n - mean_shifted * mean_shifted, 0.0)  # biased
        if running_mean is not None:
            running_mean[...] = (momentum * mean
                                 + (1.0 - momentum) * running_mean.astype(np.float64))
            running_var[...] = (momentum * var * (n / (n - 1))
                                + (1.0 - momentum) * running_var.astype(np.float64))
    else:
        mean = running_mean.astype(np.float64)
        var = running_var.astype(np.float64)
    inv_std = 1.0 / np.sqrt(var + eps)
    y = np.empty_like(x) if out is None else out
    kernel = _bn_apply_1d_kernel if xv.ndim == 2 else _bn_apply_2d_kernel
    kernel.for_size(x.size)(xv, mean, gamma.astype(np.float64) * inv_std,
                            beta.astype(np.float64), _view(y))
    return y, mean.astype(x.dtype), inv_std.astype(x.dtype)


def batch_norm_backward(dy, x, gamma, mean, inv_std, *, training=True, out=None):
    dx_out, dgamma_out, dbeta_out = (None, None, None) if out is None else out
    xv, dyv = _view(x), _view(dy)
    mean64, inv_std64 = mean.astype(np.float64), inv_std.astype(np.float64)
    # One pass: dbeta = sum dy, dgamma = inv_std * sum dy * (x - mean)
    dbeta, dy_xc = _channel_sums(dyv, np.zeros_like(mean64), xv, mean64)
    dgamma = dy_xc * inv_std64
    # dx = gamma*inv_std/n * (n*dy - dbeta - xhat*dgamma) = p*dy + q*(x - mean) + r (training);
    # dx = gamma*inv_std*dy in eval (mean and inv_std are constants there).
    p = gamma.astype(np.float64) * inv_std64
    if training:
        n = _values_per_channel(xv)
        q = -p * inv_std64 * dgamma / n
        r = -p * dbeta / n
    else:
        q = r = np.zeros_like(p)
    dx = np.empty_like(x) if dx_out is None else dx_out
    kernel = _bn_dx_1d_kernel if xv.ndim == 2 else _bn_dx_2d_kernel
    kernel.for_size(x.size)(dyv, xv, mean64, p, q, r, _view(dx))
    return dx, _into(dgamma_out, dgamma, x.dtype), _into(dbeta_out, dbeta, x.dtype)


def _into(out, value, dtype):
    if out is None:
        return value.astype(dtype)
    out[...] = value
    return out
