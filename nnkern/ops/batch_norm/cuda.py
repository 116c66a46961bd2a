"""CUDA kernels for batch norm (same names, signatures and semantics as ``cpu.py``).

Layouts: (N, C, H, W) is viewed as (N, C, L) with L = H*W ("2d"), (N, F) stays ("1d"; also
used for 2d input with H*W = 1, whose channels are contiguous like features).

Forward (training): three launches.
1. ``_bn_stats_*``: per-block partial statistics. The n = N*L values of each channel are cut
   into K chunks, K a function of the shape only (:func:`_chunks`); block (c, k) reduces chunk
   k of channel c to (mean - shift, M2), M2 the sum of squared deviations and shift the
   channel's first value. Each thread accumulates sums of (v - local) and (v - local)^2 over
   its values (local = its own first value, so that M2 = sum(d^2) - sum(d)^2 / count does not
   cancel when |mean| >> std) and turns them into (count, mean - shift, M2); a shared-memory
   tree merges the threads' triples with Chan's formula, which adds no cancellation. Means
   are kept relative to the channel's shift so that they are of the order of the std, not of
   the mean: their rounding errors then stay relative to the std. Everything in the array's
   dtype: no float64 in float32 kernels.
2. ``_bn_train_finish_kernel`` (one small block per channel): merges the K partials in a
   fixed order (Chan again), then mean, inv_std = 1/sqrt(var + eps) with the biased
   var = M2/n, the running-statistic update (unbiased var * n/(n-1)) and the coefficients of
   step 3.
3. ``_bn_apply_kernel``: y = (x - mean) * scale + bias, elementwise, scale = gamma * inv_std,
   bias = beta - (rounding error of mean) * scale.
Eval: ``_bn_eval_finish_kernel`` (mean, inv_std, scale from the running statistics), then 3.
Backward: ``_bn_sums_*`` (partials of sum dy and sum dy * (x - mean), same chunks),
``_bn_bwd_finish_kernel`` (dgamma, dbeta and the coefficients p, q, r of
dx = p*dy + q*(x - mean) + r), ``_bn_dx_kernel``.
No atomics, fixed merge orders, a chunk count that depends on the shape only: two runs give
the same bits. The reduction loops and the elementwise kernels keep four independent loads in
flight per thread (the latency of HBM needs that many bytes in flight to reach its bandwidth).
"""

import functools
import math

import numpy as np
from numba import cuda

from nnkern.ops._cuda import THREADS, device_array, device_function, empty, grid_1d, kernel

ELEMS_PER_THREAD = 8      #: target values per thread in a 2d statistics block
MAX_CHUNKS = 1024         #: at most this many partial blocks per channel
COLS = 32                 #: 1d statistics block: features per block (a warp's width) ...
ROWS = 8                  #: ... times rows; COLS * ROWS == THREADS
ROWS_PER_THREAD = 16      #: target rows per thread in a 1d statistics block
UNROLL = 4                #: planes per thread and loop trip in the elementwise kernels
MAX_GRID_Y = 65_535


@functools.lru_cache(maxsize=1024)
def _chunks(n, per_block):
    """K partial blocks per channel for n values per channel: a function of the shape only."""
    return max(1, min(MAX_CHUNKS, -(-n // per_block)))


def _pow2_at_least(n):
    return 1 << max(0, int(n) - 1).bit_length()


def _finish_threads(chunks):
    """Threads per block of the finish kernels: a power of two, at most THREADS and K."""
    return min(THREADS, 1 << (int(chunks).bit_length() - 1))


@functools.lru_cache(maxsize=1024)
def _grid_planes(l_, p_):
    """(grid, block) for the elementwise kernels over (P, L): threadIdx.x along L (up to
    THREADS), threadIdx.y along planes; about UNROLL planes per thread."""
    tx = min(THREADS, _pow2_at_least(l_))
    ty = min(THREADS // tx, _pow2_at_least(p_))
    gy = max(1, min(-(-p_ // (ty * UNROLL)), MAX_GRID_Y))
    return (-(-l_ // tx), gy), (tx, ty)


_workspaces = {}


def _workspace(name, shape, dtype):
    """A scratch device array reused across calls (no allocation per call).

    Safe because every kernel runs on the default stream, in launch order: a later call's
    kernels only touch the scratch after the earlier call's kernels are done with it.
    """
    key = (name, tuple(shape), np.dtype(dtype).str)
    a = _workspaces.get(key)
    if a is None:
        if len(_workspaces) >= 64:
            _workspaces.clear()
        a = _workspaces[key] = empty(shape, dtype)
    return a


# ------------------------------------------------------------------------ shared helpers

@device_function
def _advance(n, l, dn, dl, l_):
    # Step a position (n, l) of a channel's values (flat index j = n*L + l) by dn*L + dl,
    # with 0 <= dl < L: no division per step.
    l += dl
    n += dn
    if l >= l_:
        l -= l_
        n += 1
    return n, l


@device_function
def _stats_of_shifted_sums(cnt, offset, s1, s2, zero):
    # (mean - channel shift, M2) of cnt > 0 values v from s1 = sum(v - local),
    # s2 = sum((v - local)^2), offset = local - channel shift.
    q = s1 / cnt
    m2 = s2 - s1 * q
    if m2 < zero:  # rounding; a test (not max) so that NaN propagates
        m2 = zero
    return offset + q, m2


@device_function
def _merge_stats(cnt, mean, m2, a, b):
    # Chan's merge of the triples (count, mean, M2) at index b into index a (shared arrays;
    # integer counts): n = na + nb, mean = ma + delta * nb/n, M2 = M2a + M2b + delta^2 * na*nb/n
    # with delta = mb - ma. An empty b is skipped (0/0); an empty a has mean = M2 = 0, for
    # which the formula returns b exactly.
    nb = cnt[b]
    if nb > 0:
        na = cnt[a]
        w = mean.dtype.type(nb) / mean.dtype.type(na + nb)
        delta = mean[b] - mean[a]
        mean[a] += delta * w
        m2[a] += m2[b] + delta * delta * mean.dtype.type(na) * w
        cnt[a] = na + nb


@device_function
def _tree_merge_stats(cnt, mean, m2, t, size):
    # Merge the triples of a block's threads 0 .. size-1 (a power of two) into index 0, pairwise.
    # Every thread of the block calls this (it synchronises).
    s = size // 2
    while s > 0:
        if t < s:
            _merge_stats(cnt, mean, m2, t, t + s)
        cuda.syncthreads()  # this tree level is complete before the next one reads it
        s //= 2


@device_function
def _tree_sum2(s1, s2, t, size):
    # s1[0], s2[0] = sums of s1[0 .. size-1], s2[...] (shared arrays), pairwise. Every thread
    # of the block calls this (it synchronises).
    s = size // 2
    while s > 0:
        if t < s:
            s1[t] += s1[t + s]
            s2[t] += s2[t + s]
        cuda.syncthreads()  # this tree level is complete before the next one reads it
        s //= 2


@device_function
def _wrap(c, c_):
    # c mod C for 0 <= c < 2C
    return c - c_ if c >= c_ else c


# -------------------------------------------------------------------- forward statistics

@kernel
def _bn_stats_2d_kernel(x, part):
    # x: (N, C, L) -> part: (2, K, C), part[:, k, c] = (mean - x[0, c, 0], M2) of chunk k of
    # channel c, its values j in [k*n/K, (k+1)*n/K) (flat j = n*L + l, n = N*L values).
    # grid (C, K), block THREADS: thread t takes j = start + t, start + t + THREADS, ...,
    # consecutive threads on consecutive addresses.
    cnt_buf = cuda.shared.array(THREADS, np.int64)
    mean_buf = cuda.shared.array(THREADS, x.dtype)
    m2_buf = cuda.shared.array(THREADS, x.dtype)
    c = cuda.blockIdx.x
    k = cuda.blockIdx.y
    t = cuda.threadIdx.x
    n_, c_, l_ = x.shape
    chunks = part.shape[1]
    total = n_ * l_
    start = k * total // chunks
    end = (k + 1) * total // chunks
    zero = x.dtype.type(0)
    cnt = 0
    local = zero
    s1 = zero
    s2 = zero
    j = start + t
    if j < end:
        n = j // l_
        l = j - n * l_
        dn = THREADS // l_
        dl = THREADS - dn * l_
        local = x[n, c, l]
        while j + 3 * THREADS < end:  # four independent loads in flight
            n1, l1 = _advance(n, l, dn, dl, l_)
            n2, l2 = _advance(n1, l1, dn, dl, l_)
            n3, l3 = _advance(n2, l2, dn, dl, l_)
            d0 = x[n, c, l] - local
            d1 = x[n1, c, l1] - local
            d2 = x[n2, c, l2] - local
            d3 = x[n3, c, l3] - local
            s1 += (d0 + d1) + (d2 + d3)
            s2 += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
            cnt += 4
            n, l = _advance(n3, l3, dn, dl, l_)
            j += 4 * THREADS
        while j < end:
            d = x[n, c, l] - local
            s1 += d
            s2 += d * d
            cnt += 1
            n, l = _advance(n, l, dn, dl, l_)
            j += THREADS
    mean = zero
    m2 = zero
    if cnt > 0:
        mean, m2 = _stats_of_shifted_sums(x.dtype.type(cnt), local - x[0, c, 0], s1, s2, zero)
    cnt_buf[t] = cnt
    mean_buf[t] = mean
    m2_buf[t] = m2
    cuda.syncthreads()  # every thread's (count, mean, M2) is in shared memory
    _tree_merge_stats(cnt_buf, mean_buf, m2_buf, t, THREADS)
    if t == 0:
        part[0, k, c] = mean_buf[0]
        part[1, k, c] = m2_buf[0]


@kernel
def _bn_stats_1d_kernel(x, part):
    # x: (N, F) -> part: (2, K, F), part[:, k, f] = (mean - x[0, f], M2) of feature f over the rows
    # [k*N/K, (k+1)*N/K). grid (ceil(F / COLS), K), block (COLS, ROWS): threadIdx.x along the
    # contiguous features (a warp reads 32 consecutive values), threadIdx.y strides the rows.
    cnt_buf = cuda.shared.array((ROWS, COLS), np.int64)
    mean_buf = cuda.shared.array((ROWS, COLS), x.dtype)
    m2_buf = cuda.shared.array((ROWS, COLS), x.dtype)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    f = cuda.blockIdx.x * COLS + tx
    k = cuda.blockIdx.y
    n_, f_ = x.shape
    chunks = part.shape[1]
    start = k * n_ // chunks
    end = (k + 1) * n_ // chunks
    zero = x.dtype.type(0)
    cnt = 0
    local = zero
    s1 = zero
    s2 = zero
    r = start + ty
    if f < f_ and r < end:
        local = x[r, f]
        while r + 3 * ROWS < end:  # four independent loads in flight
            d0 = x[r, f] - local
            d1 = x[r + ROWS, f] - local
            d2 = x[r + 2 * ROWS, f] - local
            d3 = x[r + 3 * ROWS, f] - local
            s1 += (d0 + d1) + (d2 + d3)
            s2 += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
            cnt += 4
            r += 4 * ROWS
        while r < end:
            d = x[r, f] - local
            s1 += d
            s2 += d * d
            cnt += 1
            r += ROWS
    mean = zero
    m2 = zero
    if cnt > 0:
        mean, m2 = _stats_of_shifted_sums(x.dtype.type(cnt), local - x[0, f], s1, s2, zero)
    cnt_buf[ty, tx] = cnt
    mean_buf[ty, tx] = mean
    m2_buf[ty, tx] = m2
    cuda.syncthreads()  # every thread's (count, mean, M2) is in shared memory
    s = ROWS // 2
    while s > 0:
        if ty < s:
            _merge_stats(cnt_buf, mean_buf, m2_buf, (ty, tx), (ty + s, tx))
        cuda.syncthreads()  # this tree level is complete before the next one reads it
        s //= 2
    if ty == 0 and f < f_:
        part[0, k, f] = mean_buf[0, tx]
        part[1, k, f] = m2_buf[0, tx]


@kernel
def _bn_train_finish_kernel(part, x, l_, total, gamma, beta, update, running_mean, running_var,
                            momentum, keep, unbias, eps, mean, inv_std, coef):
    # part: (2, K, C) chunk (mean - shift, M2), shift = x.flat[c * L], the channel's first
    # value; total = n values per channel -> mean, inv_std: (C,); coef: (2, C) rows
    # (scale, bias) of y = (x - mean) * scale + bias; running_mean, running_var: (C,) updated in
    # place when ``update``: running = keep * running + momentum * batch (keep = 1 - momentum),
    # with the unbiased var * unbias (unbias = n / (n - 1)) for running_var.
    # One block per channel, B = blockDim.x <= THREADS threads (a power of two <= K): thread t
    # merges chunks t, t + B, ... (Chan, in order), then a shared-memory tree merges the
    # threads: no chain of K dependent loads, and a fixed order.
    cnt_buf = cuda.shared.array(THREADS, np.int64)
    mean_buf = cuda.shared.array(THREADS, part.dtype)
    m2_buf = cuda.shared.array(THREADS, part.dtype)
    c = cuda.blockIdx.x
    t = cuda.threadIdx.x
    size = cuda.blockDim.x
    chunks = part.shape[1]
    dt = part.dtype.type
    mu = dt(0)  # mean - shift
    m2 = dt(0)
    n_acc = 0
    for k in range(t, chunks, size):
        nb = (k + 1) * total // chunks - k * total // chunks  # chunk k's count (>= 1)
        w = dt(nb) / dt(n_acc + nb)
        delta = part[0, k, c] - mu
        mu += delta * w
        m2 += part[1, k, c] + delta * delta * dt(n_acc) * w
        n_acc += nb
    cnt_buf[t] = n_acc
    mean_buf[t] = mu
    m2_buf[t] = m2
    cuda.syncthreads()  # every thread's (count, mean, M2) is in shared memory
    _tree_merge_stats(cnt_buf, mean_buf, m2_buf, t, size)
    if t != 0:
        return
    mu = mean_buf[0]
    var = m2_buf[0] / dt(total)  # biased
    shift = x[c * l_]
    hi = shift + mu  # the mean, rounded to the dtype ...
    lo = (shift - hi) + mu  # ... and its rounding error (shift - hi is exact)
    if update:
        running_mean[c] = keep * running_mean[c] + momentum * hi
        running_var[c] = keep * running_var[c] + momentum * (var * unbias)
    inv = dt(1) / math.sqrt(var + eps)
    scale = gamma[c] * inv
    mean[c] = hi
    inv_std[c] = inv
    coef[0, c] = scale
    # y = (x - hi - lo) * scale + beta: where |mean| >> std, folding lo in keeps y accurate to
    # the dtype's precision beyond the rounding of the mean
    coef[1, c] = beta[c] - lo * scale


@kernel
def _bn_eval_finish_kernel(running_mean, running_var, gamma, beta, eps, mean, inv_std, coef):
    # running_mean, running_var, gamma, beta: (C,) -> mean = running_mean,
    # inv_std = 1 / sqrt(running_var + eps): (C,); coef: (2, C) rows (gamma * inv_std, beta)
    c = cuda.grid(1)
    if c >= mean.shape[0]:
        return
    inv = mean.dtype.type(1) / math.sqrt(running_var[c] + eps)
    mean[c] = running_mean[c]
    inv_std[c] = inv
    coef[0, c] = gamma[c] * inv
    coef[1, c] = beta[c]


@kernel
def _bn_apply_kernel(x, mean, coef, y, per_column):
    # x: (P, L) -> y: (P, L), y = (x - mean[c]) * coef[0, c] + coef[1, c] for the channel c of
    # (p, l): 2d: P = N*C planes of L = H*W, c = p % C; 1d (per_column): P = N rows of L = F
    # features, c = l. threadIdx.x along L, (blockIdx.y, threadIdx.y) along planes, UNROLL
    # planes per loop trip. (x - mean) first: where |mean| >> std, x * scale - mean * scale
    # would cancel.
    l = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    p_, l_ = x.shape
    c_ = mean.shape[0]
    if l >= l_:
        return
    p = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    step = cuda.gridDim.y * cuda.blockDim.y
    c = l if per_column else p % c_
    dc = 0 if per_column else step % c_  # channel step per plane step: no % in the loop
    while p + 3 * step < p_:  # four independent loads in flight
        c1 = _wrap(c + dc, c_)
        c2 = _wrap(c1 + dc, c_)
        c3 = _wrap(c2 + dc, c_)
        v0 = x[p, l]
        v1 = x[p + step, l]
        v2 = x[p + 2 * step, l]
        v3 = x[p + 3 * step, l]
        y[p, l] = (v0 - mean[c]) * coef[0, c] + coef[1, c]
        y[p + step, l] = (v1 - mean[c1]) * coef[0, c1] + coef[1, c1]
        y[p + 2 * step, l] = (v2 - mean[c2]) * coef[0, c2] + coef[1, c2]
        y[p + 3 * step, l] = (v3 - mean[c3]) * coef[0, c3] + coef[1, c3]
        p += 4 * step
        c = _wrap(c3 + dc, c_)
    while p < p_:
        y[p, l] = (x[p, l] - mean[c]) * coef[0, c] + coef[1, c]
        p += step
        c = _wrap(c + dc, c_)


# -------------------------------------------------------------------------------- backward

@kernel
def _bn_sums_2d_kernel(dy, x, mean, part):
    # dy, x: (N, C, L); mean: (C,) -> part: (2, K, C) chunk sums of dy and dy * (x - mean[c]),
    # chunks and threads as in _bn_stats_2d_kernel; plain sums (no cancellation to guard).
    s1_buf = cuda.shared.array(THREADS, x.dtype)
    s2_buf = cuda.shared.array(THREADS, x.dtype)
    c = cuda.blockIdx.x
    k = cuda.blockIdx.y
    t = cuda.threadIdx.x
    n_, c_, l_ = x.shape
    chunks = part.shape[1]
    total = n_ * l_
    start = k * total // chunks
    end = (k + 1) * total // chunks
    m = mean[c]
    s1 = x.dtype.type(0)
    s2 = x.dtype.type(0)
    j = start + t
    if j < end:
        n = j // l_
        l = j - n * l_
        dn = THREADS // l_
        dl = THREADS - dn * l_
        while j + 3 * THREADS < end:  # eight independent loads in flight
            n1, l1 = _advance(n, l, dn, dl, l_)
            n2, l2 = _advance(n1, l1, dn, dl, l_)
            n3, l3 = _advance(n2, l2, dn, dl, l_)
            g0 = dy[n, c, l]
            g1 = dy[n1, c, l1]
            g2 = dy[n2, c, l2]
            g3 = dy[n3, c, l3]
            e0 = x[n, c, l] - m
            e1 = x[n1, c, l1] - m
            e2 = x[n2, c, l2] - m
            e3 = x[n3, c, l3] - m
            s1 += (g0 + g1) + (g2 + g3)
            s2 += (g0 * e0 + g1 * e1) + (g2 * e2 + g3 * e3)
            n, l = _advance(n3, l3, dn, dl, l_)
            j += 4 * THREADS
        while j < end:
            g = dy[n, c, l]
            s1 += g
            s2 += g * (x[n, c, l] - m)
            n, l = _advance(n, l, dn, dl, l_)
            j += THREADS
    s1_buf[t] = s1
    s2_buf[t] = s2
    cuda.syncthreads()  # every thread's sums are in shared memory
    _tree_sum2(s1_buf, s2_buf, t, THREADS)
    if t == 0:
        part[0, k, c] = s1_buf[0]
        part[1, k, c] = s2_buf[0]


@kernel
def _bn_sums_1d_kernel(dy, x, mean, part):
    # dy, x: (N, F); mean: (F,) -> part: (2, K, F) chunk sums of dy and dy * (x - mean[f]),
    # blocks as in _bn_stats_1d_kernel.
    s1_buf = cuda.shared.array((ROWS, COLS), x.dtype)
    s2_buf = cuda.shared.array((ROWS, COLS), x.dtype)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    f = cuda.blockIdx.x * COLS + tx
    k = cuda.blockIdx.y
    n_, f_ = x.shape
    chunks = part.shape[1]
    start = k * n_ // chunks
    end = (k + 1) * n_ // chunks
    s1 = x.dtype.type(0)
    s2 = x.dtype.type(0)
    r = start + ty
    if f < f_ and r < end:
        m = mean[f]
        while r + 3 * ROWS < end:  # eight independent loads in flight
            g0 = dy[r, f]
            g1 = dy[r + ROWS, f]
            g2 = dy[r + 2 * ROWS, f]
            g3 = dy[r + 3 * ROWS, f]
            e0 = x[r, f] - m
            e1 = x[r + ROWS, f] - m
            e2 = x[r + 2 * ROWS, f] - m
            e3 = x[r + 3 * ROWS, f] - m
            s1 += (g0 + g1) + (g2 + g3)
            s2 += (g0 * e0 + g1 * e1) + (g2 * e2 + g3 * e3)
            r += 4 * ROWS
        while r < end:
            g = dy[r, f]
            s1 += g
            s2 += g * (x[r, f] - m)
            r += ROWS
    s1_buf[ty, tx] = s1
    s2_buf[ty, tx] = s2
    cuda.syncthreads()  # every thread's sums are in shared memory
    s = ROWS // 2
    while s > 0:
        if ty < s:
            s1_buf[ty, tx] += s1_buf[ty + s, tx]
            s2_buf[ty, tx] += s2_buf[ty + s, tx]
        cuda.syncthreads()  # this tree level is complete before the next one reads it
        s //= 2
    if ty == 0 and f < f_:
        part[0, k, f] = s1_buf[0, tx]
        part[1, k, f] = s2_buf[0, tx]


@kernel
def _bn_bwd_finish_kernel(part, gamma, inv_std, n, training, dgamma, dbeta, coef):
    # part: (2, K, C) chunk sums of dy and dy * (x - mean); n = values per channel (dtype) ->
    # dbeta = sum dy, dgamma = sum dy * xhat = inv_std * sum dy * (x - mean): (C,);
    # coef: (3, C) rows (p, q, r) of dx = p*dy + q*(x - mean) + r:
    #   training: dx = gamma*inv_std/n * (n*dy - dbeta - xhat*dgamma), so p = gamma*inv_std,
    #             q = -p*inv_std*dgamma/n, r = -p*dbeta/n;
    #   eval:     dx = gamma*inv_std*dy (mean and inv_std are constants): q = r = 0.
    # One block per channel, threads and fixed order as in _bn_train_finish_kernel.
    s1_buf = cuda.shared.array(THREADS, part.dtype)
    s2_buf = cuda.shared.array(THREADS, part.dtype)
    c = cuda.blockIdx.x
    t = cuda.threadIdx.x
    size = cuda.blockDim.x
    zero = part.dtype.type(0)
    s1 = zero
    s2 = zero
    for k in range(t, part.shape[1], size):
        s1 += part[0, k, c]
        s2 += part[1, k, c]
    s1_buf[t] = s1
    s2_buf[t] = s2
    cuda.syncthreads()  # every thread's sums are in shared memory
    _tree_sum2(s1_buf, s2_buf, t, size)
    if t != 0:
        return
    sum_dy = s1_buf[0]
    inv = inv_std[c]
    dg = s2_buf[0] * inv
    p = gamma[c] * inv
    dgamma[c] = dg
    dbeta[c] = sum_dy
    coef[0, c] = p
    coef[1, c] = -p * inv * dg / n if training else zero
    coef[2, c] = -p * sum_dy / n if training else zero


@kernel
def _bn_dx_kernel(dy, x, mean, coef, dx, per_column, training):
    # dy, x: (P, L) -> dx: (P, L), dx = p*dy + q*(x - mean[c]) + r with (p, q, r) = coef[:, c];
    # channels, launch and unrolling as in _bn_apply_kernel. In eval (q = r = 0) x is not
    # read: a third less traffic. All loads of a trip come before its stores (dx may alias dy).
    l = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    p_, l_ = x.shape
    c_ = mean.shape[0]
    if l >= l_:
        return
    p = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    step = cuda.gridDim.y * cuda.blockDim.y
    c = l if per_column else p % c_
    dc = 0 if per_column else step % c_
    if training:
        while p + 3 * step < p_:  # eight independent loads in flight
            c1 = _wrap(c + dc, c_)
            c2 = _wrap(c1 + dc, c_)
            c3 = _wrap(c2 + dc, c_)
            g0 = dy[p, l]
            g1 = dy[p + step, l]
            g2 = dy[p + 2 * step, l]
            g3 = dy[p + 3 * step, l]
            v0 = x[p, l]
            v1 = x[p + step, l]
            v2 = x[p + 2 * step, l]
            v3 = x[p + 3 * step, l]
            dx[p, l] = coef[0, c] * g0 + coef[1, c] * (v0 - mean[c]) + coef[2, c]
            dx[p + step, l] = coef[0, c1] * g1 + coef[1, c1] * (v1 - mean[c1]) + coef[2, c1]
            dx[p + 2 * step, l] = (coef[0, c2] * g2 + coef[1, c2] * (v2 - mean[c2])
                                   + coef[2, c2])
            dx[p + 3 * step, l] = (coef[0, c3] * g3 + coef[1, c3] * (v3 - mean[c3])
                                   + coef[2, c3])
            p += 4 * step
            c = _wrap(c3 + dc, c_)
        while p < p_:
            dx[p, l] = coef[0, c] * dy[p, l] + coef[1, c] * (x[p, l] - mean[c]) + coef[2, c]
            p += step
            c = _wrap(c + dc, c_)
    else:
        while p + 3 * step < p_:  # four independent loads in flight
            c1 = _wrap(c + dc, c_)
            c2 = _wrap(c1 + dc, c_)
            c3 = _wrap(c2 + dc, c_)
            g0 = dy[p, l]
            g1 = dy[p + step, l]
            g2 = dy[p + 2 * step, l]
            g3 = dy[p + 3 * step, l]
            dx[p, l] = coef[0, c] * g0
            dx[p + step, l] = coef[0, c1] * g1
            dx[p + 2 * step, l] = coef[0, c2] * g2
            dx[p + 3 * step, l] = coef[0, c3] * g3
            p += 4 * step
            c = _wrap(c3 + dc, c_)
        while p < p_:
            dx[p, l] = coef[0, c] * dy[p, l]
            p += step
            c = _wrap(c + dc, c_)


# -------------------------------------------------------------------------------- wrappers

def _layout(x):
    """(stats view, elementwise (P, L) view, per_column, values per channel) of a device array.

    1d (N, F), and 2d with H*W = 1: features/channels contiguous -> (N, F) views, per column.
    2d: (N, C, H*W) for the statistics, (N*C, H*W) planes for the elementwise passes.
    """
    n_, c_ = x.shape[0], x.shape[1]
    l_ = x.size // (n_ * c_)
    if l_ == 1:
        v = x.reshape(n_, c_)
        return v, v, True, n_
    return x.reshape(n_, c_, l_), x.reshape(n_ * c_, l_), False, n_ * l_


def _partials(kind, stats_view, dtype):
    """Launch shape of the statistics/sums kernels and their (2, K, C) partial buffer."""
    c_ = stats_view.shape[1]
    if stats_view.ndim == 2:  # 1d: K chunks of rows
        k = _chunks(stats_view.shape[0], ROWS * ROWS_PER_THREAD)
        launch = ((-(-c_ // COLS), k), (COLS, ROWS))
    else:
        k = _chunks(stats_view.shape[0] * stats_view.shape[2], THREADS * ELEMS_PER_THREAD)
        launch = ((c_, k), THREADS)
    return launch, _workspace(kind, (2, k, c_), dtype)


def batch_norm_forward(x, gamma, beta, running_mean=None, running_var=None, *, training=True,
                       momentum=0.1, eps=1e-5, out=None):
    dt = np.dtype(x.dtype).type
    xd = device_array(x)
    c_ = x.shape[1]
    mean = empty((c_,), x.dtype)
    inv_std = empty((c_,), x.dtype)
    coef = _workspace("coef_fwd", (2, c_), x.dtype)
    stats, planes, per_column, n = _layout(xd)
    gamma_d, beta_d = device_array(gamma), device_array(beta)
    if training:
        launch, part = _partials("stats", stats, x.dtype)
        kern = _bn_stats_1d_kernel if stats.ndim == 2 else _bn_stats_2d_kernel
        kern[launch](stats, part)
        update = running_mean is not None
        rm = device_array(running_mean) if update else mean  # placeholders, not written
        rv = device_array(running_var) if update else inv_std
        _bn_train_finish_kernel[c_, _finish_threads(part.shape[1])](
            part, xd.reshape(x.size), x.size // (x.shape[0] * c_), n, gamma_d, beta_d, update,
            rm, rv, dt(momentum), dt(1.0 - momentum), dt(n / (n - 1.0)), dt(eps), mean,
            inv_std, coef)
    else:
        _bn_eval_finish_kernel[grid_1d(c_)](device_array(running_mean),
                                            device_array(running_var), gamma_d, beta_d, dt(eps),
                                            mean, inv_std, coef)
    y = empty(x.shape, x.dtype) if out is None else out
    _, y_planes, _, _ = _layout(device_array(y))
    _bn_apply_kernel[_grid_planes(planes.shape[1], planes.shape[0])](planes, mean, coef,
                                                                      y_planes, per_column)
    return y, mean, inv_std


def batch_norm_backward(dy, x, gamma, mean, inv_std, *, training=True, out=None):
    dx_out, dgamma_out, dbeta_out = (None, None, None) if out is None else out
    dt = np.dtype(x.dtype).type
    c_ = x.shape[1]
    stats, planes, per_column, n = _layout(device_array(x))
    dy_stats, dy_planes, _, _ = _layout(device_array(dy))
    mean_d = device_array(mean)
    launch, part = _partials("sums", stats, x.dtype)
    kern = _bn_sums_1d_kernel if stats.ndim == 2 else _bn_sums_2d_kernel
    kern[launch](dy_stats, stats, mean_d, part)
    dgamma = empty((c_,), x.dtype) if dgamma_out is None else dgamma_out
    dbeta = empty((c_,), x.dtype) if dbeta_out is None else dbeta_out
    coef = _workspace("coef", (3, c_), x.dtype)
    _bn_bwd_finish_kernel[c_, _finish_threads(part.shape[1])](
        part, device_array(gamma), device_array(inv_std), dt(n), bool(training),
        device_array(dgamma), device_array(dbeta), coef)
    dx = empty(x.shape, x.dtype) if dx_out is None else dx_out
    _, dx_planes, _, _ = _layout(device_array(dx))
    _bn_dx_kernel[_grid_planes(planes.shape[1], planes.shape[0])](
        dy_planes, planes, mean_d, coef, dx_planes, per_column, bool(training))
    return dx, dgamma, dbeta
