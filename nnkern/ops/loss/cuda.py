"""CUDA kernels for the losses (formulas and PyTorch conventions: ``nnkern/ops/loss/__init__``).

Forward: one kernel writes per-row (cross-entropy, hinge) or per-block (MSE, BCE) partial sums
in the input dtype; the wrapper copies them to the host once and adds them with ``math.fsum``
(exactly rounded, so order-independent) and divides by the count: the loss is a Python float
and the copy is the op's one host synchronisation. Per-block partials come from a grid-stride
loop with a fixed launch shape (a function of the size only) and a pairwise tree in shared
memory, so two runs give identical bits. Sums accumulate in the input dtype (no float64 in
float32 kernels): float32 losses agree with the float64 CPU ones to float32 rounding, float64
ones to ~1e-15.

Range checks on device data (what ``nnkern.ops.loss`` checks on the host for numpy input):
* forward: the kernel that computes the loss also counts, per row or per block, labels outside
  [0, C) (cross-entropy, hinge) or values outside [0, 1] (BCE's target, and the probabilities
  unless from_logits; NaN counts too). The counts travel in the same array as the partial
  sums, so the check costs no extra transfer. A bad label is never used as an index.
* backward (no host value otherwise): cross-entropy and hinge copy the (small, N-entry) label
  vector to the host and check it before the launch; BCE's backward kernel counts bad values
  per block and the wrapper reads the counts back (B small values).
On a violation the offending arrays are copied to the host and checked by the same code as
numpy input, so the ValueError and its message are exactly the CPU backend's. (A backward
that raises may have written ``out`` already.)

Labels: int32 and int64 device arrays are read directly; other integer dtypes are first
converted to int64 by a small kernel.
"""

import functools
import math

import numpy as np
from numba import cuda

from nnkern.ops._cuda import (
    THREADS,
    device_array,
    device_function,
    empty,
    empty_like,
    grid_1d,
    kernel,
)
from nnkern.ops.activation.cuda import group_plan

_LOG_MIN = -100.0   # torch clamps BCE's logs at -100, so p = 0 or 1 gives a finite loss
_EPS = float(np.float32(1e-12))  # torch's floor on p (1 - p) in the BCE gradient
_ITEMS = 4            # elements per thread at least in the block reductions
_MAX_PARTIALS = 1024  # blocks of a reduction at most (a full H100 at 256 threads each)
_MSE, _BCE, _BCE_LOGITS = 0, 1, 2


def _pow2_ceil(n):
    return 1 << max(0, int(n) - 1).bit_length()


def _grid(n):
    """grid_1d(n), with blocks of fewer threads (a warp at least) for arrays smaller than a
    block: no idle threads in tiny launches (and much faster under the simulator)."""
    return grid_1d(n, min(THREADS, max(32, _pow2_ceil(n))))


@functools.lru_cache(maxsize=1024)
def _reduce_plan(n):
    """(blocks, threads) of a grid-stride block reduction over n elements (shape-only)."""
    threads = min(THREADS, max(32, _pow2_ceil(n)))
    return max(1, min(-(-n // (threads * _ITEMS)), _MAX_PARTIALS)), threads


def _fsum(values):
    return math.fsum(values.tolist())


# ---------------------------------------------------------------- validation on the host


def _raise_bad_labels(op, labels, n, c):
    """Copy the labels to the host and raise the CPU backend's ValueError."""
    from nnkern.ops.loss import _check_labels
    _check_labels(op, labels.copy_to_host(), n, c)
    raise ValueError(f"{op}: labels must be class indices in [0, {c}) (C = {c})")


def _check_labels_on_host(op, labels, n, c):
    host = labels.copy_to_host()
    if host.min() < 0 or host.max() >= c:
        from nnkern.ops.loss import _check_labels
        _check_labels(op, host, n, c)


def _raise_bad_bce(op, pred, target, from_logits):
    from nnkern.ops.loss import _check_bce
    _check_bce(op, pred.copy_to_host(), target.copy_to_host(), from_logits)
    raise ValueError(f"{op}: pred and target must lie in [0, 1]")


@kernel
def _labels_to_int64_kernel(labels, out):
    # labels: (N,) any integer dtype -> out: (N,) int64 (values >= 2^63 wrap negative: caught
    # by the range check)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, labels.shape[0], step):
        out[i] = labels[i]


def _labels(labels):
    if np.dtype(labels.dtype) in (np.dtype(np.int32), np.dtype(np.int64)):
        return labels
    out = empty(labels.shape, np.int64)
    _labels_to_int64_kernel[_grid(labels.size)](labels, out)
    return out


# ---------------------------------------------------------------- group reductions (rows)


@device_function
def _row_members(g):
    # (t, j, q, lead) for groups of g consecutive threads per row (see activation.cuda): this
    # thread, its member index, its row slot in the block, member 0's thread index
    t = cuda.threadIdx.x
    j = t % g
    return t, j, t // g, t - j


@device_function
def _row_reduce(sh, t, j, g, use_max):
    # pairwise tree over the g members of t's group (values stored and synchronised by the
    # caller); returns the group's max or sum. Every thread of the block must call it.
    s = g // 2
    while s > 0:
        if j < s:
            a = sh[t]
            b = sh[t + s]
            if use_max:
                sh[t] = b if b > a else a
            else:
                sh[t] = a + b
        cuda.syncthreads()  # this level is complete before the next one (or the caller) reads
        s //= 2
    return sh[t - j]


@device_function
def _block_sum(sh, t):
    # pairwise tree over the block (blockDim a power of two; values stored and synchronised by
    # the caller); the sum ends in sh[0]
    s = cuda.blockDim.x // 2
    while s > 0:
        if t < s:
            sh[t] += sh[t + s]
        cuda.syncthreads()  # this level is complete before the next one reads it
        s //= 2


# ---------------------------------------------------------------- softmax cross-entropy


@kernel
def _softmax_ce_fwd_kernel(x, labels, g, probs, stats):
    # x: (N, C), labels: (N,) -> probs: (N, C) = softmax(x), stats: (2, N) with
    # stats[0, n] = logsumexp(x[n]) - x[n, y_n] (m + log(s), m = max: no overflow for any
    # finite logits) and stats[1, n] = 1 where y_n is outside [0, C) (its loss is then 0).
    # A group of g threads per row (group_plan), max and sum by pairwise trees.
    sh_max = cuda.shared.array(THREADS, x.dtype)
    sh_sum = cuda.shared.array(THREADS, x.dtype)
    n_, c_ = x.shape
    t, j, q, lead = _row_members(g)
    p = cuda.blockDim.x // g
    zero = x.dtype.type(0)
    one = x.dtype.type(1)
    for base in range(cuda.blockIdx.x * p, n_, cuda.gridDim.x * p):
        n = base + q
        active = n < n_
        m = x.dtype.type(-math.inf)
        if active:
            for c in range(j, c_, g):
                v = x[n, c]
                m = v if v > m else m
        sh_max[t] = m
        cuda.syncthreads()  # all members' maxima are stored before the tree reads them
        m = _row_reduce(sh_max, t, j, g, True)
        s = zero
        if active:
            for c in range(j, c_, g):
                s += math.exp(x[n, c] - m)
        sh_sum[t] = s
        cuda.syncthreads()  # all members' sums are stored before the tree reads them
        s = _row_reduce(sh_sum, t, j, g, False)
        if active:
            inv = one / s
            for c in range(j, c_, g):
                probs[n, c] = math.exp(x[n, c] - m) * inv
            if j == 0:
                y = labels[n]
                if y < 0 or y >= c_:
                    stats[0, n] = zero
                    stats[1, n] = one
                else:
                    stats[0, n] = (m + math.log(s)) - x[n, y]
                    stats[1, n] = zero
        cuda.syncthreads()  # group results are read before the next iteration overwrites them


@kernel
def _softmax_ce_bwd_kernel(probs, labels, inv_n, dx):
    # probs: (N, C), labels: (N,) (checked) -> dx: (N, C) = (probs - onehot(labels)) / N;
    # inv_n = 1/N in the dtype; one thread per element (flat index i = n*C + j)
    c_ = probs.shape[1]
    one = probs.dtype.type(1)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, probs.size, step):
        n = i // c_
        j = i - n * c_
        pv = probs[n, j]
        dx[n, j] = (pv - one) * inv_n if j == labels[n] else pv * inv_n  # p - 1 exact near 1


def softmax_cross_entropy_forward(logits, labels):
    x, labels = device_array(logits), device_array(labels)
    n, c = x.shape
    probs = empty_like(x)
    stats = empty((2, n), x.dtype)
    blocks, threads, g, _ = group_plan(n, c, 1)
    _softmax_ce_fwd_kernel[blocks, threads](x, _labels(labels), g, probs, stats)
    host = stats.copy_to_host()
    if host[1].any():
        _raise_bad_labels("softmax_cross_entropy_forward", labels, n, c)
    return _fsum(host[0]) / n, probs


def softmax_cross_entropy_backward(probs, labels, *, out=None):
    probs, labels = device_array(probs), device_array(labels)
    n, c = probs.shape
    _check_labels_on_host("softmax_cross_entropy_backward", labels, n, c)
    dx = empty_like(probs) if out is None else device_array(out)
    _softmax_ce_bwd_kernel[_grid(probs.size)](probs, _labels(labels),
                                                probs.dtype.type(1.0 / n), dx)
    return dx


# ---------------------------------------------------------------- MSE, BCE


@device_function
def _outside_unit(v, zero, one):
    # v outside [0, 1], NaN included
    return not (v >= zero and v <= one)


@device_function
def _pair_term(kind, pv, tv, check_p, zero, one, log_min):
    # (loss term, 1 if the pair is out of range else 0) for MSE (p - t)², BCE on
    # probabilities -(t log p + (1 - t) log(1 - p)) with each log clamped at -100 (no log of
    # 0 is taken), or BCE on logits max(x, 0) - x t + log1p(exp(-|x|)) (never overflows).
    # Out-of-range pairs contribute 0 (the wrapper raises).
    if kind == _MSE:
        d = pv - tv
        return d * d, zero
    if _outside_unit(tv, zero, one) or (check_p and _outside_unit(pv, zero, one)):
        return zero, one
    if kind == _BCE:
        log_p = log_min if pv <= zero else max(math.log(pv), log_min)
        log_1mp = log_min if pv >= one else max(math.log1p(-pv), log_min)
        return -(tv * log_p + (one - tv) * log_1mp), zero
    return max(pv, zero) - pv * tv + math.log1p(math.exp(-abs(pv))), zero


@kernel
def _pair_loss_fwd_kernel(p, t, kind, partial):
    # p, t: (M,) flat -> partial: (2, B): partial[0, b] = sum of block b's loss terms,
    # partial[1, b] = its count of out-of-range pairs (BCE); grid-stride, then block trees
    sh_loss = cuda.shared.array(THREADS, p.dtype)
    sh_bad = cuda.shared.array(THREADS, p.dtype)
    zero = p.dtype.type(0)
    one = p.dtype.type(1)
    log_min = p.dtype.type(_LOG_MIN)
    check_p = kind == _BCE
    tid = cuda.threadIdx.x
    acc = zero
    bad = zero
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, p.shape[0], step):
        term, b = _pair_term(kind, p[i], t[i], check_p, zero, one, log_min)
        acc += term
        bad += b
    sh_loss[tid] = acc
    sh_bad[tid] = bad
    cuda.syncthreads()  # every thread's partials are stored before the trees
    _block_sum(sh_loss, tid)
    _block_sum(sh_bad, tid)
    if tid == 0:
        partial[0, cuda.blockIdx.x] = sh_loss[0]
        partial[1, cuda.blockIdx.x] = sh_bad[0]


@kernel
def _mse_bwd_kernel(p, t, scale, dp):
    # p, t: (M,) -> dp: (M,) = (p - t) * scale, scale = 2 / numel in the dtype
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, p.shape[0], step):
        dp[i] = (p[i] - t[i]) * scale


@kernel
def _bce_bwd_kernel(p, t, from_logits, inv_numel, dp, bad_partial):
    # p, t: (M,) -> dp: (M,) and bad_partial: (B,) counts of out-of-range values per block;
    # probabilities: dp = (p - t) / max(p (1 - p), 1e-12) / numel (torch's floor);
    # logits: dp = (sigmoid(x) - t) / numel with the two-branch sigmoid from exp(-|x|)
    sh_bad = cuda.shared.array(THREADS, p.dtype)
    zero = p.dtype.type(0)
    one = p.dtype.type(1)
    eps = p.dtype.type(_EPS)
    tid = cuda.threadIdx.x
    bad = zero
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, p.shape[0], step):
        pv = p[i]
        tv = t[i]
        if _outside_unit(tv, zero, one) or (not from_logits and _outside_unit(pv, zero, one)):
            bad += one
        if from_logits:
            e = math.exp(-abs(pv))
            sig = one / (one + e) if pv >= zero else e / (one + e)
            dp[i] = (sig - tv) * inv_numel
        else:
            dp[i] = (pv - tv) / max((one - pv) * pv, eps) * inv_numel
    sh_bad[tid] = bad
    cuda.syncthreads()  # every thread's count is stored before the tree
    _block_sum(sh_bad, tid)
    if tid == 0:
        bad_partial[cuda.blockIdx.x] = sh_bad[0]


def _pair_loss(op, pred, target, kind, from_logits=False):
    p, t = device_array(pred), device_array(target)
    blocks, threads = _reduce_plan(p.size)
    partial = empty((2, blocks), p.dtype)
    _pair_loss_fwd_kernel[blocks, threads](p.reshape(p.size), t.reshape(t.size), kind, partial)
    host = partial.copy_to_host()
    if host[1].any():
        _raise_bad_bce(op, p, t, from_logits)
    return _fsum(host[0]) / p.size


def mse_forward(pred, target):
    return _pair_loss("mse_forward", pred, target, _MSE)


def mse_backward(pred, target, *, out=None):
    p, t = device_array(pred), device_array(target)
    dp = empty_like(p) if out is None else device_array(out)
    _mse_bwd_kernel[_grid(p.size)](p.reshape(p.size), t.reshape(t.size),
                                     p.dtype.type(2.0 / p.size), dp.reshape(dp.size))
    return dp


def binary_cross_entropy_forward(pred, target, *, from_logits=False):
    return _pair_loss("binary_cross_entropy_forward", pred, target,
                      _BCE_LOGITS if from_logits else _BCE, from_logits)


def binary_cross_entropy_backward(pred, target, *, from_logits=False, out=None):
    op = "binary_cross_entropy_backward"
    p, t = device_array(pred), device_array(target)
    dp = empty_like(p) if out is None else device_array(out)
    blocks, threads = _reduce_plan(p.size)
    bad = empty((blocks,), p.dtype)
    _bce_bwd_kernel[blocks, threads](p.reshape(p.size), t.reshape(t.size), from_logits,
                                     p.dtype.type(1.0 / p.size), dp.reshape(dp.size), bad)
    if bad.copy_to_host().any():
        _raise_bad_bce(op, p, t, from_logits)
    return dp


# ---------------------------------------------------------------- multiclass hinge


@kernel
def _hinge_fwd_kernel(s, labels, margin, g, stats):
    # s: (N, C), labels: (N,) -> stats: (2, N), stats[0, n] = sum_{j != y} max(0, margin -
    # s[n, y] + s[n, j]) / C (torch MultiMarginLoss), stats[1, n] = 1 where y is outside
    # [0, C) (loss 0). A group of g threads per row sums its terms by a pairwise tree.
    sh_sum = cuda.shared.array(THREADS, s.dtype)
    n_, c_ = s.shape
    t, j, q, lead = _row_members(g)
    p = cuda.blockDim.x // g
    zero = s.dtype.type(0)
    one = s.dtype.type(1)
    for base in range(cuda.blockIdx.x * p, n_, cuda.gridDim.x * p):
        n = base + q
        active = n < n_
        acc = zero
        ok = False
        if active:
            y = labels[n]
            ok = y >= 0 and y < c_
            if ok:
                margin_y = margin - s[n, y]
                for c in range(j, c_, g):
                    z = margin_y + s[n, c]
                    if c != y and z > zero:
                        acc += z
        sh_sum[t] = acc
        cuda.syncthreads()  # all members' sums are stored before the tree reads them
        acc = _row_reduce(sh_sum, t, j, g, False)
        if active and j == 0:
            stats[0, n] = acc / s.dtype.type(c_)
            stats[1, n] = zero if ok else one
        cuda.syncthreads()  # group results are read before the next iteration overwrites them


@kernel
def _hinge_bwd_kernel(s, labels, margin, grad, g, ds):
    # s: (N, C), labels: (N,) (checked) -> ds: (N, C); grad = 1/(N C) in the dtype. Each
    # active term (z = margin - s[n, y] + s[n, j] > 0, j != y; none at the kink z = 0, as
    # torch) gives ds[n, j] = grad; ds[n, y] = -(number of active terms) * grad. z is formed
    # exactly as in the forward, so both agree on which terms are active.
    sh_cnt = cuda.shared.array(THREADS, s.dtype)
    n_, c_ = s.shape
    t, j, q, lead = _row_members(g)
    p = cuda.blockDim.x // g
    zero = s.dtype.type(0)
    one = s.dtype.type(1)
    for base in range(cuda.blockIdx.x * p, n_, cuda.gridDim.x * p):
        n = base + q
        active = n < n_
        count = zero
        y = 0
        if active:
            y = labels[n]
            margin_y = margin - s[n, y]
            for c in range(j, c_, g):
                z = margin_y + s[n, c]
                if c != y and z > zero:
                    ds[n, c] = grad
                    count += one
                else:
                    ds[n, c] = zero
        sh_cnt[t] = count
        cuda.syncthreads()  # all members' counts (and their ds writes) are done
        count = _row_reduce(sh_cnt, t, j, g, False)
        if active and j == 0:
            ds[n, y] = -(count * grad)  # after the sync: overwrites the member's 0
        cuda.syncthreads()  # group results are read before the next iteration overwrites them


def hinge_forward(scores, labels, *, margin=1.0):
    s, labels = device_array(scores), device_array(labels)
    n, c = s.shape
    stats = empty((2, n), s.dtype)
    blocks, threads, g, _ = group_plan(n, c, 1)
    _hinge_fwd_kernel[blocks, threads](s, _labels(labels), s.dtype.type(margin), g, stats)
    host = stats.copy_to_host()
    if host[1].any():
        _raise_bad_labels("hinge_forward", labels, n, c)
    return _fsum(host[0]) / n


def hinge_backward(scores, labels, *, margin=1.0, out=None):
    s, labels = device_array(scores), device_array(labels)
    n, c = s.shape
    _check_labels_on_host("hinge_backward", labels, n, c)
    ds = empty_like(s) if out is None else device_array(out)
    blocks, threads, g, _ = group_plan(n, c, 1)
    _hinge_bwd_kernel[blocks, threads](s, _labels(labels), s.dtype.type(margin),
                                       s.dtype.type(1.0 / (n * c)), g, ds)
    return ds
