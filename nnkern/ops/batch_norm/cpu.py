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
from numba.extending import overload

from nnkern import _jit
from nnkern._jit import FASTMATH, cpu_inline, cpu_kernel, cpu_serial
from nnkern.ops._memory import prefetch
from nnkern.ops._reduce import ROW_CHUNKS


@cpu_kernel
def _bn_sums_2d_kernel(u, u_shift, x, x_shift, s1, s2, relu, zcoef):
    # u, x: (N, C, L); u_shift, x_shift: (C,) float64 -> s1, s2: (ROW_CHUNKS, C) float64 partials
    # The array, flattened in memory order, is cut into ROW_CHUNKS equal ranges; chunk k walks
    # its range plane by plane ((n, c) runs along l) and adds each run's sums to s1[k, c],
    # s2[k, c]. Memory-order chunks stream well and balance for any N, C and L (batch of 1).
    # relu (backward of BN followed by ReLU): u = dy is taken as 0 where the forward's output
    # z = (x - zcoef[0]) * zcoef[1] + zcoef[2] (zcoef: the forward's float64 (3, C) rows; z
    # rounded to x's dtype, as the forward stored it) is <= 0, the ReLU's derivative (as
    # relu_backward: NaN passes). z is recomputed from x, which this pass reads anyway,
    # instead of reading the stored output: one stream less.
    n_, c_, l_ = x.shape
    zero = x.dtype.type(0)
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
            if relu:
                zm, zs, zb = zcoef[0, c], zcoef[1, c], zcoef[2, c]
                for l in range(u_run.shape[0]):
                    xv = x_run[l]
                    z = x.dtype.type((xv - zm) * zs + zb)
                    d = (zero if z <= zero else u_run[l]) - us
                    acc1 += d
                    acc2 += d * (xv - xs)
            else:
                for l in range(u_run.shape[0]):
                    d = u_run[l] - us
                    acc1 += d
                    acc2 += d * (x_run[l] - xs)
            s1[k, c] += acc1
            s2[k, c] += acc2
            i += l1 - l0


@cpu_kernel
def _bn_sums_1d_kernel(u, u_shift, x, x_shift, s1, s2, relu, zcoef):
    # u, x: (N, F); u_shift, x_shift: (F,) float64 -> s1, s2: (ROW_CHUNKS, F) float64 partials
    # As in 2d, chunk k takes the k-th of ROW_CHUNKS equal ranges of the flattened array; it
    # walks them row by row, the inner loop along contiguous features. relu, zcoef: as in 2d.
    n_, f_ = x.shape
    zero = x.dtype.type(0)
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
            if relu:
                zm, zs, zb = zcoef[0, f0:f1], zcoef[1, f0:f1], zcoef[2, f0:f1]
                for f in range(u_run.shape[0]):
                    xv = x_run[f]
                    z = x.dtype.type((xv - zm[f]) * zs[f] + zb[f])
                    d = (zero if z <= zero else u_run[f]) - us[f]
                    s1_run[f] += d
                    s2_run[f] += d * (xv - xs[f])
            else:
                for f in range(u_run.shape[0]):
                    d = u_run[f] - us[f]
                    s1_run[f] += d
                    s2_run[f] += d * (x_run[f] - xs[f])
            i += f1 - f0


@cpu_inline
def _train_stats(a1, a2, shift, n, momentum, eps, rm, rv):
    # one channel from its float64 sums a1 = sum(x - shift), a2 = sum((x - shift)^2) over n
    # values -> (mean, inv_std, new running mean, new running var) as float64 scalars.
    # Scalars in and out: arrays passed to an inlined helper inside a loop cost Numba a pair
    # of atomic reference-count updates each, per call (measured 8 µs for 100 channels).
    mean_shifted = a1 / n
    mu = shift + mean_shifted
    var = a2 / n - mean_shifted * mean_shifted  # biased
    if var < 0.0:  # rounding; written as a test (not max()) so that NaN propagates
        var = 0.0
    # PyTorch: the running variance is the unbiased var * n / (n - 1)
    new_rm = momentum * mu + (1.0 - momentum) * rm
    new_rv = momentum * var * (n / (n - 1.0)) + (1.0 - momentum) * rv
    return mu, 1.0 / np.sqrt(var + eps), new_rm, new_rv


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
        mu, inv, new_rm, new_rv = _train_stats(a1, a2, shift[c], n, momentum, eps,
                                               np.float64(running_mean[c]),
                                               np.float64(running_var[c]))
        if update:
            running_mean[c] = new_rm
            running_var[c] = new_rv
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
def _bn_apply_2d_kernel(x, coef, y, relu):
    # x: (N, C, L); coef: (3, C) float64 rows (mean, scale, beta) -> y: (N, C, L)
    # y = (x - mean) * scale + beta, scale = gamma * inv_std; relu: then y = max(y, 0) in x's
    # dtype (NaN kept, as relu_forward)
    n_, c_, l_ = x.shape
    zero = x.dtype.type(0)
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc - n * c_
        m = coef[0, c]
        s = coef[1, c]
        b = coef[2, c]
        x_run = x[n, c]
        y_run = y[n, c]
        if relu:
            for l in range(l_):
                v = x.dtype.type((x_run[l] - m) * s + b)
                y_run[l] = zero if v < zero else v
        else:
            for l in range(l_):
                y_run[l] = (x_run[l] - m) * s + b


@cpu_kernel
def _bn_apply_1d_kernel(x, coef, y, relu):
    # x: (N, F); coef: (3, F) float64 rows (mean, scale, beta) -> y: (N, F)
    # y = (x - mean) * scale + beta; relu: then max(y, 0) (as in 2d)
    n_, f_ = x.shape
    zero = x.dtype.type(0)
    m, s, b = coef[0], coef[1], coef[2]
    for n in prange(n_):
        x_run = x[n]
        y_run = y[n]
        if relu:
            for f in range(f_):
                v = x.dtype.type((x_run[f] - m[f]) * s[f] + b[f])
                y_run[f] = zero if v < zero else v
        else:
            for f in range(f_):
                y_run[f] = (x_run[f] - m[f]) * s[f] + b[f]


@cpu_inline
def _backward_coefs(sum_dy, sum_dy_xc, gamma_c, inv_std_c, n, training):
    # one channel from sum dy and sum dy * (x - mean) -> (dgamma, p, q, r) float64 scalars,
    # dx = p * dy + q * (x - mean) + r (scalars only: see _train_stats)
    inv = np.float64(inv_std_c)
    dg = sum_dy_xc * inv  # sum dy * xhat
    p = gamma_c * inv
    q = -p * inv * dg / n if training else 0.0
    r = -p * sum_dy / n if training else 0.0
    return dg, p, q, r


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
        dg, p, q, r = _backward_coefs(sum_dy, sum_dy_xc, np.float64(gamma[c]), inv_std[c], n,
                                      training)
        dgamma[c] = dg
        dbeta[c] = sum_dy
        coef[0, c] = p
        coef[1, c] = q
        coef[2, c] = r


@cpu_kernel
def _bn_dx_2d_kernel(dy, x, mean, coef, dx, relu, zcoef):
    # dy, x: (N, C, L); mean: (C,) float64; coef: (3, C) float64 rows (p, q, r) -> dx: (N, C, L)
    # dx = p * g + q * (x - mean) + r, g = dy, or with relu g = 0 where the forward's output
    # z (recomputed from x and zcoef, see _bn_sums_2d_kernel) is <= 0
    n_, c_, l_ = x.shape
    zero = x.dtype.type(0)
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc - n * c_
        m = mean[c]
        p = coef[0, c]
        q = coef[1, c]
        r = coef[2, c]
        dy_run = dy[n, c]
        x_run = x[n, c]
        dx_run = dx[n, c]
        if relu:
            zm, zs, zb = zcoef[0, c], zcoef[1, c], zcoef[2, c]
            for l in range(l_):
                xv = x_run[l]
                z = x.dtype.type((xv - zm) * zs + zb)
                g = zero if z <= zero else dy_run[l]
                dx_run[l] = p * g + q * (xv - m) + r
        else:
            for l in range(l_):
                dx_run[l] = p * dy_run[l] + q * (x_run[l] - m) + r


@cpu_kernel
def _bn_dx_1d_kernel(dy, x, mean, coef, dx, relu, zcoef):
    # dy, x: (N, F); mean: (F,) float64; coef: (3, F) float64 rows (p, q, r) -> dx: (N, F)
    # dx = p * g + q * (x - mean) + r, g as in 2d
    n_, f_ = x.shape
    zero = x.dtype.type(0)
    p, q, r = coef[0], coef[1], coef[2]
    zm, zs, zb = zcoef[0], zcoef[1], zcoef[2]
    for n in prange(n_):
        dy_run = dy[n]
        x_run = x[n]
        dx_run = dx[n]
        if relu:
            for f in range(f_):
                xv = x_run[f]
                z = x.dtype.type((xv - zm[f]) * zs[f] + zb[f])
                g = zero if z <= zero else dy_run[f]
                dx_run[f] = p[f] * g + q[f] * (xv - mean[f]) + r[f]
        else:
            for f in range(f_):
                dx_run[f] = p[f] * dy_run[f] + q[f] * (x_run[f] - mean[f]) + r[f]


# ----------------------------------------------------------------------------------------------
# Large (N, C, L) inputs whose channels each fit in L2: one channel at a time. The two passes
# over x (statistics, then y), or over dy and x (sums, then dx), run back to back on the same
# channel, so the second pass reads from L2 and main memory sees each array once: 3 streams
# instead of 4 forward, 4 instead of 6 backward (counting the write's read-for-ownership).
# Channels are independent prange iterations, each summing its planes in order, so the results
# do not depend on the thread count or the variant.

#: the most bytes of one channel (N * L elements; x and dy together backward) run this way
_CHANNEL_BYTES = 1 << 20


#: elements between two prefetches of the next plane: one 64-byte cache line of float32
_LINE = 16


@cpu_inline
def _prefetch_plane(a):
    # the next plane's cache lines, while this one is summed (see nnkern.ops._memory)
    for i in range(0, a.shape[0], _LINE):
        prefetch(a, i)


@cpu_inline
def _plane_sums(u, u_shift, x, x_shift, relu, zm, zs, zb, zero):
    # one (n, c) plane: sum(u - u_shift), sum((u - u_shift) * (x - x_shift)) in float64, u
    # masked by the forward's ReLU when relu (as _bn_sums_2d_kernel)
    acc1 = 0.0
    acc2 = 0.0
    if relu:
        for l in range(x.shape[0]):
            xv = x[l]
            z = x.dtype.type((xv - zm) * zs + zb)
            d = (zero if z <= zero else u[l]) - u_shift
            acc1 += d
            acc2 += d * (xv - x_shift)
    else:
        for l in range(x.shape[0]):
            d = u[l] - u_shift
            acc1 += d
            acc2 += d * (x[l] - x_shift)
    return acc1, acc2


@cpu_kernel
def _bn_forward_channels_kernel(x, gamma, beta, running_mean, running_var, training, update,
                                momentum, eps, relu, y, mean, inv_std, coef):
    # x, y: (N, C, L) -> mean, inv_std: (C,), coef: (3, C) float64; running_* updated when
    # ``update``. Per channel c: statistics over its N planes (shift: the first sample, see
    # _bn_sums_2d_kernel), then y = (x - mean) * gamma * inv_std + beta (ReLU'd when relu).
    n_, c_, l_ = x.shape
    zero = x.dtype.type(0)
    for c in prange(c_):
        if training:
            shift = np.float64(x[0, c, 0])
            a1 = 0.0
            a2 = 0.0
            for n in range(n_):
                if n + 1 < n_:
                    _prefetch_plane(x[n + 1, c])
                acc1, acc2 = _plane_sums(x[n, c], shift, x[n, c], shift, False, 0.0, 0.0, 0.0,
                                         zero)
                a1 += acc1
                a2 += acc2
            mu, inv, new_rm, new_rv = _train_stats(a1, a2, shift, float(n_ * l_), momentum,
                                                   eps, np.float64(running_mean[c]),
                                                   np.float64(running_var[c]))
            if update:
                running_mean[c] = new_rm
                running_var[c] = new_rv
            mean[c] = mu
            inv_std[c] = inv
            coef[0, c] = mu
            coef[1, c] = gamma[c] * inv
            coef[2, c] = beta[c]
        else:
            mu = np.float64(running_mean[c])
            inv = 1.0 / np.sqrt(running_var[c] + eps)
            mean[c] = mu
            inv_std[c] = inv
            coef[0, c] = mu
            coef[1, c] = gamma[c] * inv
            coef[2, c] = beta[c]
        m, sc, b = coef[0, c], coef[1, c], coef[2, c]
        for n in range(n_):
            x_run = x[n, c]
            y_run = y[n, c]
            if relu:
                for l in range(l_):
                    v = x.dtype.type((x_run[l] - m) * sc + b)
                    y_run[l] = zero if v < zero else v
            else:
                for l in range(l_):
                    y_run[l] = (x_run[l] - m) * sc + b


@cpu_kernel
def _bn_backward_channels_kernel(dy, x, gamma, mean, inv_std, training, relu, zcoef, dx, dgamma,
                                 dbeta):
    # dy, x, dx: (N, C, L); zcoef: the forward's (3, C) coefficients (read with relu) ->
    # dgamma, dbeta: (C,). Per channel c: sum g and sum g * (x - mean) over its planes (g = dy,
    # ReLU-masked when relu), then dx = p * g + q * (x - mean) + r (see _bn_backward_finish).
    n_, c_, l_ = x.shape
    zero = x.dtype.type(0)
    for c in prange(c_):
        m = np.float64(mean[c])
        zm, zs, zb = (zcoef[0, c], zcoef[1, c], zcoef[2, c]) if relu else (0.0, 0.0, 0.0)
        sum_dy = 0.0
        sum_dy_xc = 0.0
        for n in range(n_):
            if n + 1 < n_:
                _prefetch_plane(dy[n + 1, c])
                _prefetch_plane(x[n + 1, c])
            acc1, acc2 = _plane_sums(dy[n, c], 0.0, x[n, c], m, relu, zm, zs, zb, zero)
            sum_dy += acc1
            sum_dy_xc += acc2
        dg, p, q, r = _backward_coefs(sum_dy, sum_dy_xc, np.float64(gamma[c]), inv_std[c],
                                      float(n_ * l_), training)
        dgamma[c] = dg
        dbeta[c] = sum_dy
        for n in range(n_):
            dy_run = dy[n, c]
            x_run = x[n, c]
            dx_run = dx[n, c]
            if relu:
                for l in range(l_):
                    xv = x_run[l]
                    z = x.dtype.type((xv - zm) * zs + zb)
                    g = zero if z <= zero else dy_run[l]
                    dx_run[l] = p * g + q * (xv - m) + r
            else:
                for l in range(l_):
                    dx_run[l] = p * dy_run[l] + q * (x_run[l] - m) + r


# ----------------------------------------------------------------------------------------------
# Small inputs (below PARALLEL_MIN_WORK elements, where every pass runs serially): the whole
# forward (or backward) in one jitted call. The passes take a microsecond or two each there,
# so the Python glue between them (6-8 NumPy allocations, 3 kernel dispatches) was most of the
# time (an MLP's (64, 100) batch norm). The sums run over the rows in order into one float64
# partial per channel (no chunks: nothing to split among threads), with the inner loop along
# contiguous memory: the same values as the chunked kernels up to the order of the float64
# additions (the chunk merge), so rounding differences only.

@cpu_inline
def _small_sums_1d(u, u_shift, x, x_shift, s1, s2, relu, zcoef):
    # u, x: (N, F) -> s1, s2: (1, F) float64 sums of (u - u_shift) and (u - u_shift) *
    # (x - x_shift), u masked as in _bn_sums_1d_kernel when relu
    n_, f_ = x.shape
    zero = x.dtype.type(0)
    a1, a2 = s1[0], s2[0]
    for f in range(f_):
        a1[f] = 0.0
        a2[f] = 0.0
    for r in range(n_):
        u_run, x_run = u[r], x[r]
        if relu:
            for f in range(f_):
                xv = x_run[f]
                z = x.dtype.type((xv - zcoef[0, f]) * zcoef[1, f] + zcoef[2, f])
                d = (zero if z <= zero else u_run[f]) - u_shift[f]
                a1[f] += d
                a2[f] += d * (xv - x_shift[f])
        else:
            for f in range(f_):
                d = u_run[f] - u_shift[f]
                a1[f] += d
                a2[f] += d * (x_run[f] - x_shift[f])


@cpu_inline
def _small_sums_2d(u, u_shift, x, x_shift, s1, s2, relu, zcoef):
    # u, x: (N, C, L) -> s1, s2: (1, C) float64, as _small_sums_1d; one plane (n, c) at a time
    n_, c_, l_ = x.shape
    zero = x.dtype.type(0)
    for c in range(c_):
        s1[0, c] = 0.0
        s2[0, c] = 0.0
    for n in range(n_):
        for c in range(c_):
            us, xs = u_shift[c], x_shift[c]
            u_run, x_run = u[n, c], x[n, c]
            acc1 = 0.0
            acc2 = 0.0
            if relu:
                zm, zs, zb = zcoef[0, c], zcoef[1, c], zcoef[2, c]
                for l in range(l_):
                    xv = x_run[l]
                    z = x.dtype.type((xv - zm) * zs + zb)
                    d = (zero if z <= zero else u_run[l]) - us
                    acc1 += d
                    acc2 += d * (xv - xs)
            else:
                for l in range(l_):
                    d = u_run[l] - us
                    acc1 += d
                    acc2 += d * (x_run[l] - xs)
            s1[0, c] += acc1
            s2[0, c] += acc2


_apply_1d = _bn_apply_1d_kernel.serial
_apply_2d = _bn_apply_2d_kernel.serial
_dx_1d = _bn_dx_1d_kernel.serial
_dx_2d = _bn_dx_2d_kernel.serial


# Layout dispatch inside jitted code: each picks the 1d or 2d version when the driver is typed
# (a plain `if x.ndim == 2` would type both branches, and the 2d one fails on 2-D arrays).
def _sums_any(u, u_shift, x, x_shift, s1, s2, relu, zcoef):
    raise NotImplementedError  # only called from jitted code (see the overload)


def _apply_any(x, coef, y, relu):
    raise NotImplementedError


def _dx_any(dy, x, mean, coef, dx, relu, zcoef):
    raise NotImplementedError


def _first_sample(x, shift):
    raise NotImplementedError


_OVERLOAD = dict(jit_options=dict(fastmath=FASTMATH, error_model="numpy"))


@overload(_sums_any, **_OVERLOAD)
def _sums_any_overload(u, u_shift, x, x_shift, s1, s2, relu, zcoef):
    if x.ndim == 2:
        return lambda u, u_shift, x, x_shift, s1, s2, relu, zcoef: _small_sums_1d(
            u, u_shift, x, x_shift, s1, s2, relu, zcoef)
    return lambda u, u_shift, x, x_shift, s1, s2, relu, zcoef: _small_sums_2d(
        u, u_shift, x, x_shift, s1, s2, relu, zcoef)


@overload(_apply_any, **_OVERLOAD)
def _apply_any_overload(x, coef, y, relu):
    if x.ndim == 2:
        return lambda x, coef, y, relu: _apply_1d(x, coef, y, relu)
    return lambda x, coef, y, relu: _apply_2d(x, coef, y, relu)


@overload(_dx_any, **_OVERLOAD)
def _dx_any_overload(dy, x, mean, coef, dx, relu, zcoef):
    if x.ndim == 2:
        return lambda dy, x, mean, coef, dx, relu, zcoef: _dx_1d(dy, x, mean, coef, dx, relu,
                                                                 zcoef)
    return lambda dy, x, mean, coef, dx, relu, zcoef: _dx_2d(dy, x, mean, coef, dx, relu, zcoef)


@overload(_first_sample, **_OVERLOAD)
def _first_sample_overload(x, shift):
    # shift[c] = a sample of channel c: x[0, c] (1d) or x[0, c, 0] (2d)
    if x.ndim == 2:
        def first_1d(x, shift):
            for c in range(x.shape[1]):
                shift[c] = x[0, c]
        return first_1d

    def first_2d(x, shift):
        for c in range(x.shape[1]):
            shift[c] = x[0, c, 0]
    return first_2d


@cpu_serial
def _bn_forward_small(x, gamma, beta, running_mean, running_var, training, update, momentum,
                      eps, relu, y, mean, inv_std, coef):
    # x, y: (N, F) or (N, C, L) (one compile each); mean, inv_std: (C,) x's dtype; coef: (3, C)
    # float64; running_*: (C,) (updated when ``update``; else any (C,) arrays, untouched)
    c_ = x.shape[1]
    if training:
        shift = np.empty(c_, np.float64)
        _first_sample(x, shift)  # a sample of each channel (see _bn_sums_2d_kernel)
        s1 = np.empty((1, c_), np.float64)
        s2 = np.empty((1, c_), np.float64)
        _sums_any(x, shift, x, shift, s1, s2, False, coef)
        _bn_train_finish(s1, s2, shift, float(x.size // c_), momentum, eps, update,
                         running_mean, running_var, gamma, beta, mean, inv_std, coef)
    else:
        _bn_eval_finish(running_mean, running_var, eps, gamma, beta, mean, inv_std, coef)
    _apply_any(x, coef, y, relu)


@cpu_serial
def _bn_backward_small(dy, x, gamma, mean, inv_std, training, relu, zcoef, dx, dgamma, dbeta):
    # dy, x, dx: (N, F) or (N, C, L); gamma, mean, inv_std, dgamma, dbeta: (C,); zcoef: the
    # forward's (3, C) float64 coefficients (read only with relu)
    c_ = x.shape[1]
    mean64 = np.empty(c_, np.float64)
    for c in range(c_):
        mean64[c] = mean[c]
    zeros = np.zeros(c_, np.float64)
    s1 = np.empty((1, c_), np.float64)
    s2 = np.empty((1, c_), np.float64)
    _sums_any(dy, zeros, x, mean64, s1, s2, relu, zcoef)
    coef = np.empty((3, c_), np.float64)
    _bn_backward_finish(s1, s2, gamma, inv_std, float(x.size // c_), training, dgamma, dbeta,
                        coef)
    _dx_any(dy, x, mean64, coef, dx, relu, zcoef)


def _by_channel(xv, arrays):
    """Run channel by channel: an (N, C, L) input with at least 8 channels (work for every
    thread) whose channels, ``arrays`` of them at a time, fit in _CHANNEL_BYTES."""
    return xv.ndim == 3 and xv.shape[1] >= 8 \
        and arrays * xv.shape[0] * xv.shape[2] * xv.itemsize <= _CHANNEL_BYTES


#: (N, C, L) inputs with planes shorter than this run as (N, C * L) rows (``_as_rows``)
_PLANE_MIN = 16


def _as_rows(xv):
    """For (N, C, L) with L < _PLANE_MIN: the (N, C * L) view, and a function spreading
    per-channel values (..., C) over the C * L features (each repeated L times); else xv and
    the identity.

    Tiny planes (VGG's 2x2 maps) cost the plane-by-plane kernels a loop set-up per few
    elements, and the channel-by-channel walk strides by C * L elements, a power of two,
    through one cache set. As rows they take the 1-D kernels' long contiguous loops:
    per-feature sums, folded into channels by ``_fold``. The backward at 64x512x2x2 went
    0.64 -> 0.18 ms; the forward keeps its channel kernel (0.08-0.13 ms there, against 0.14
    ms as rows with a preallocated output and more with a fresh one: the extra temporaries
    made malloc return the 512 KiB output to the OS and page-fault it in again each call)."""
    if xv.ndim == 2 or xv.shape[2] >= _PLANE_MIN:
        return xv, lambda a: a
    n, c, l = xv.shape
    return xv.reshape(n, c * l), lambda a: np.repeat(a, l, axis=-1)


@cpu_serial
def _fold_kernel(s, out):
    # s: (K, C * L) float64 per-feature partials -> out: (K, C), the L features of each
    # channel added in order (NumPy's sum over a short last axis took 60 µs at 16x512x4)
    k_, c_ = out.shape
    l_ = s.shape[1] // c_
    for k in range(k_):
        for c in range(c_):
            acc = 0.0
            for j in range(c * l_, (c + 1) * l_):
                acc += s[k, j]
            out[k, c] = acc


def _fold(sums, c):
    """Per-feature chunk partials (ROW_CHUNKS, C * L) -> per-channel (ROW_CHUNKS, C)."""
    if sums[0].shape[1] == c:
        return sums
    folded = tuple(np.empty((s.shape[0], c), np.float64) for s in sums)
    for s, out in zip(sums, folded):
        _fold_kernel(s, out)
    return folded


def _view(a):
    """(N, F) stays; (N, C, H, W) -> (N, C, H*W) (a view: inputs are C-contiguous)."""
    return a if a.ndim == 2 else a.reshape(a.shape[0], a.shape[1], -1)


def _channel_sums(u, u_shift, x, x_shift, relu=False, zcoef=None):
    """Chunk partials (ROW_CHUNKS, C) of sum(u - u_shift), sum((u - u_shift) * (x - x_shift)),
    u masked by the forward's ReLU when ``relu`` (zcoef: the forward's coefficients)."""
    s1 = np.empty((ROW_CHUNKS, x.shape[1]), np.float64)
    s2 = np.empty((ROW_CHUNKS, x.shape[1]), np.float64)
    kernel = _bn_sums_1d_kernel if x.ndim == 2 else _bn_sums_2d_kernel
    kernel.for_size(x.size)(u, u_shift, x, x_shift, s1, s2, relu, s1 if zcoef is None else zcoef)
    return s1, s2


def forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, relu, out=None):
    """Batch norm, then ReLU when ``relu``. Returns (y, mean, inv_std, coef), coef the (3, C)
    float64 rows (mean, gamma * inv_std, beta) that ``backward`` needs with ``relu``.
    Arguments as validated by ``nnkern.ops.batch_norm`` (running_* both None or both given)."""
    xv = _view(x)
    c = x.shape[1]
    mean = np.empty(c, x.dtype)
    inv_std = np.empty(c, x.dtype)
    coef = np.empty((3, c), np.float64)
    y = np.empty_like(x) if out is None else out
    update = running_mean is not None
    if x.size < _jit.PARALLEL_MIN_WORK:
        _bn_forward_small(xv, gamma, beta, running_mean if update else mean,
                          running_var if update else inv_std, training, update, momentum, eps,
                          relu, _view(y), mean, inv_std, coef)
        return y, mean, inv_std, coef
    if _by_channel(xv, 1):
        _bn_forward_channels_kernel.for_size(x.size)(
            xv, gamma, beta, running_mean if update else mean,
            running_var if update else inv_std, training, update, momentum, eps, relu, _view(y),
            mean, inv_std, coef)
        return y, mean, inv_std, coef
    xr, spread = _as_rows(xv)
    if training:
        n = xv.size // c
        shift = (xv[0] if xv.ndim == 2 else xv[0, :, 0]).astype(np.float64)  # a sample each
        s1, s2 = _fold(_channel_sums(xr, spread(shift), xr, spread(shift)), c)
        _bn_train_finish(s1, s2, shift, float(n), momentum, eps, update,
                         running_mean if update else mean, running_var if update else inv_std,
                         gamma, beta, mean, inv_std, coef)
    else:
        _bn_eval_finish(running_mean, running_var, eps, gamma, beta, mean, inv_std, coef)
    kernel = _bn_apply_1d_kernel if xr.ndim == 2 else _bn_apply_2d_kernel
    kernel.for_size(x.size)(xr, spread(coef), y.reshape(xr.shape), relu)
    return y, mean, inv_std, coef


def backward(dy, x, gamma, mean, inv_std, training, relu, zcoef, out=None):
    """Gradients of ``forward``: dy is the gradient of its output (after the ReLU when
    ``relu``; zcoef is then the coef ``forward`` returned). Returns (dx, dgamma, dbeta)."""
    dx_out, dgamma_out, dbeta_out = (None, None, None) if out is None else out
    c = x.shape[1]
    dgamma = np.empty(c, x.dtype) if dgamma_out is None else dgamma_out
    dbeta = np.empty(c, x.dtype) if dbeta_out is None else dbeta_out
    dx = np.empty_like(x) if dx_out is None else dx_out
    xv, dyv = _view(x), _view(dy)
    if zcoef is None:
        zcoef = _NO_COEF
    if x.size < _jit.PARALLEL_MIN_WORK:
        _bn_backward_small(dyv, xv, gamma, mean, inv_std, training, relu, zcoef, _view(dx),
                           dgamma, dbeta)
        return dx, dgamma, dbeta
    if _by_channel(xv, 2) and xv.shape[2] >= _PLANE_MIN:
        _bn_backward_channels_kernel.for_size(x.size)(dyv, xv, gamma, mean, inv_std, training,
                                                      relu, zcoef, _view(dx), dgamma, dbeta)
        return dx, dgamma, dbeta
    mean64 = mean.astype(np.float64)
    xr, spread = _as_rows(xv)
    dyr = dyv.reshape(xr.shape)
    zr = spread(zcoef) if relu else zcoef
    # One pass over dy and x: sum dy and sum dy * (x - mean), then dbeta, dgamma and dx's p, q, r.
    s1, s2 = _fold(_channel_sums(dyr, np.zeros(xr.shape[1]), xr, spread(mean64), relu, zr), c)
    coef = np.empty((3, c), np.float64)
    _bn_backward_finish(s1, s2, gamma, inv_std, float(xv.size // c), training, dgamma, dbeta,
                        coef)
    kernel = _bn_dx_1d_kernel if xr.ndim == 2 else _bn_dx_2d_kernel
    kernel.for_size(x.size)(dyr, xr, spread(mean64), spread(coef), dx.reshape(xr.shape), relu,
                            zr)
    return dx, dgamma, dbeta


_NO_COEF = np.zeros((3, 0), np.float64)  # zcoef placeholder without relu (never read)


def batch_norm_forward(x, gamma, beta, running_mean=None, running_var=None, *, training=True,
                       momentum=0.1, eps=1e-5, out=None):
    y, mean, inv_std, _ = forward(x, gamma, beta, running_mean, running_var, training, momentum,
                                  eps, False, out)
    return y, mean, inv_std


def batch_norm_backward(dy, x, gamma, mean, inv_std, *, training=True, out=None):
    return backward(dy, x, gamma, mean, inv_std, training, False, None, out)
