"""CUDA kernels for the update rules (formulas: ``nnkern.ops.update``; PyTorch's order).

Every rule is one fused grid-stride kernel per parameter per step over flat views of the
parameter, its gradient and its state: read g and p, apply the coupled regularizers, update the
state, write p (one launch where torch.optim's single-tensor path launches 3-12 element-wise
kernels). The arithmetic is the CPU kernels', operation for operation.

dtype: every hyperparameter is converted to the arrays' dtype on the host (``p.dtype.type``)
before the launch, so float32 stays float32 (no float64 argument or instruction in a float32
kernel); factors PyTorch computes in Python (1 - dampening, lr / (1 - beta1^step), the Adam
bias corrections from the host-side step counter) are computed in float64 on the host and then
converted, as on the CPU. Boolean options are passed as bools (uniform branches).

Unused state arrays are replaced by a cached one-element dummy of the dtype, so each kernel
compiles once per dtype. Backends trust their arguments (validated by ``nnkern.ops.update`` or
by the optimizer when it allocates the state).

``sum_squares`` (gradient clipping) is a deterministic reduction: fixed launch shape per size,
per-thread sums in a fixed order, a pairwise tree per block, per-block partials added on the
host with ``math.fsum``. ``max_norm_update`` runs one block per output unit (a row of the
(out, ...) weight): a tree for the row's squared norm, then the same block rescales the row.
"""

import functools
import math

import numpy as np
from numba import cuda

from nnkern.ops._cuda import (
    MAX_BLOCKS,
    THREADS,
    device_array,
    device_function,
    empty,
    grid_1d,
    kernel,
)

_ITEMS = 4            # elements per thread at least in sum_squares
_MAX_PARTIALS = 1024  # blocks of sum_squares at most (per-block partials copied to the host)

_DUMMY = {}


def _flat(a):
    a = device_array(a)
    return a if len(a.shape) == 1 else a.reshape(a.size)


def _state(a, dtype):
    """The flat state array, or a one-element dummy of ``dtype`` for an unused one."""
    if a is not None:
        return _flat(a)
    dtype = np.dtype(dtype)
    dummy = _DUMMY.get(dtype)
    if dummy is None:
        dummy = _DUMMY[dtype] = empty((1,), dtype)
    return dummy


def _pow2_ceil(n):
    return 1 << max(0, int(n) - 1).bit_length()


def _grid(n):
    """grid_1d(n), with blocks of fewer threads (a warp at least) for arrays smaller than a
    block: no idle threads in tiny launches (and much faster under the simulator)."""
    return grid_1d(n, min(THREADS, max(32, _pow2_ceil(n))))


@device_function
def _sign(v, zero, one):
    # np.sign: -1, 0 or 1, NaN for NaN (returned as is, like a zero)
    if v > zero:
        return one
    if v < zero:
        return -one
    return v


@device_function
def _regularized(d, pv, wd, l1, use_wd, use_l1, zero, one):
    # d + weight_decay * p + l1 * sign(p), each term only when its coefficient is nonzero
    if use_wd:
        d = d + wd * pv
    if use_l1:
        d = d + l1 * _sign(pv, zero, one)
    return d


@device_function
def _lerp(start, end, w, one_minus_w, small):
    # torch.lerp's two-sided formula (accurate at both ends; w cast to the dtype beforehand)
    if small:
        return start + w * (end - start)
    return end - (end - start) * one_minus_w


# ---- SGD ------------------------------------------------------------------------------------
@kernel
def _sgd_kernel(p, g, buf, lr, mu, keep, wd, l1, use_wd, use_l1, use_mom, nesterov, first):
    # p, g, buf: (n,) flat; buf is a dummy when momentum == 0
    # d = g + wd p + l1 sign(p); buf = d (first) | mu buf + (1 - damp) d; d = buf | d + mu buf
    zero = p.dtype.type(0)
    one = p.dtype.type(1)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, p.shape[0], step):
        pv = p[i]
        d = _regularized(g[i], pv, wd, l1, use_wd, use_l1, zero, one)
        if use_mom:
            b = d if first else mu * buf[i] + keep * d
            buf[i] = b
            d = d + mu * b if nesterov else b
        p[i] = pv - lr * d


def sgd_update(p, g, buf=None, *, lr, momentum=0.0, dampening=0.0, nesterov=False,
               weight_decay=0.0, l1=0.0, first=False):
    p = _flat(p)
    t = p.dtype.type
    _sgd_kernel[_grid(p.size)](p, _flat(g), _state(buf, p.dtype), t(lr), t(momentum),
                                 t(1.0 - dampening), t(weight_decay), t(l1),
                                 weight_decay != 0.0, l1 != 0.0, momentum != 0.0, bool(nesterov),
                                 bool(first))


# ---- AdaGrad --------------------------------------------------------------------------------
@kernel
def _adagrad_kernel(p, g, state_sum, clr, eps, wd, l1, use_wd, use_l1):
    # p, g, state_sum: (n,); state_sum += d²; p -= clr d / (sqrt(state_sum) + eps)
    zero = p.dtype.type(0)
    one = p.dtype.type(1)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, p.shape[0], step):
        pv = p[i]
        d = _regularized(g[i], pv, wd, l1, use_wd, use_l1, zero, one)
        s = state_sum[i] + d * d
        state_sum[i] = s
        p[i] = pv - clr * (d / (math.sqrt(s) + eps))


def adagrad_update(p, g, state_sum, *, clr, eps=1e-10, weight_decay=0.0, l1=0.0):
    p = _flat(p)
    t = p.dtype.type
    _adagrad_kernel[_grid(p.size)](p, _flat(g), _flat(state_sum), t(clr), t(eps),
                                     t(weight_decay), t(l1), weight_decay != 0.0, l1 != 0.0)


# ---- RMSProp --------------------------------------------------------------------------------
@kernel
def _rmsprop_kernel(p, g, square_avg, grad_avg, buf, lr, alpha, w, one_minus_w, small, eps, wd,
                    l1, mu, use_wd, use_l1, use_mom, centered):
    # p, g, square_avg: (n,); grad_avg: (n,) if centered, buf: (n,) if momentum, else dummies
    # v = alpha v + (1 - alpha) d²; avg = sqrt(v - m²) + eps (centered, m = lerp(m, d,
    # 1 - alpha)) or sqrt(v) + eps; buf = mu buf + d / avg, p -= lr buf (momentum) or
    # p -= lr d / avg
    zero = p.dtype.type(0)
    one = p.dtype.type(1)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, p.shape[0], step):
        pv = p[i]
        d = _regularized(g[i], pv, wd, l1, use_wd, use_l1, zero, one)
        v = square_avg[i] * alpha + w * d * d
        square_avg[i] = v
        if centered:
            m = _lerp(grad_avg[i], d, w, one_minus_w, small)
            grad_avg[i] = m
            avg = math.sqrt(v - m * m) + eps
        else:
            avg = math.sqrt(v) + eps
        if use_mom:
            b = buf[i] * mu + d / avg
            buf[i] = b
            p[i] = pv - lr * b
        else:
            p[i] = pv - lr * (d / avg)


def rmsprop_update(p, g, square_avg, grad_avg=None, buf=None, *, lr, alpha=0.99, eps=1e-8,
                   weight_decay=0.0, l1=0.0, momentum=0.0, centered=False):
    p = _flat(p)
    t = p.dtype.type
    w = t(1.0 - alpha)
    _rmsprop_kernel[_grid(p.size)](p, _flat(g), _flat(square_avg), _state(grad_avg, p.dtype),
                                     _state(buf, p.dtype), t(lr), t(alpha), w, t(1) - w,
                                     bool(abs(w) < 0.5), t(eps), t(weight_decay), t(l1),
                                     t(momentum), weight_decay != 0.0, l1 != 0.0, momentum > 0.0,
                                     bool(centered))


# ---- Adadelta -------------------------------------------------------------------------------
@kernel
def _adadelta_kernel(p, g, square_avg, acc_delta, lr, rho, w, eps, wd, l1, use_wd, use_l1):
    # p, g, square_avg, acc_delta: (n,)
    # v = rho v + (1 - rho) d²; delta = sqrt(u + eps) / sqrt(v + eps) d;
    # u = rho u + (1 - rho) delta²; p -= lr delta
    zero = p.dtype.type(0)
    one = p.dtype.type(1)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, p.shape[0], step):
        pv = p[i]
        d = _regularized(g[i], pv, wd, l1, use_wd, use_l1, zero, one)
        v = square_avg[i] * rho + w * d * d
        square_avg[i] = v
        u = acc_delta[i]
        delta = math.sqrt(u + eps) / math.sqrt(v + eps) * d
        acc_delta[i] = u * rho + w * delta * delta
        p[i] = pv - lr * delta


def adadelta_update(p, g, square_avg, acc_delta, *, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0,
                    l1=0.0):
    p = _flat(p)
    t = p.dtype.type
    _adadelta_kernel[_grid(p.size)](p, _flat(g), _flat(square_avg), _flat(acc_delta), t(lr),
                                      t(rho), t(1.0 - rho), t(eps), t(weight_decay), t(l1),
                                      weight_decay != 0.0, l1 != 0.0)


# ---- Adam / AdamW ---------------------------------------------------------------------------
@kernel
def _adam_kernel(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, w1, one_minus_w1, small, b2, w2,
                 eps, step_size, bc2, decay, wd, l1, use_decay, use_wd, use_l1, amsgrad):
    # p, g, exp_avg, exp_avg_sq: (n,); max_exp_avg_sq: (n,) if amsgrad else a dummy
    # p *= decay (AdamW: 1 - lr wd); m = lerp(m, d, 1 - b1); v = b2 v + (1 - b2) d²;
    # v = max(vmax, v) (amsgrad); p -= step_size m / (sqrt(v) / bc2 + eps), with
    # step_size = lr / (1 - b1^t), bc2 = sqrt(1 - b2^t) from the host's step counter t
    zero = p.dtype.type(0)
    one = p.dtype.type(1)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, p.shape[0], step):
        pv = p[i]
        if use_decay:
            pv = pv * decay
        d = _regularized(g[i], pv, wd, l1, use_wd, use_l1, zero, one)
        m = _lerp(exp_avg[i], d, w1, one_minus_w1, small)
        exp_avg[i] = m
        v = exp_avg_sq[i] * b2 + w2 * d * d
        exp_avg_sq[i] = v
        if amsgrad:
            v = max(max_exp_avg_sq[i], v)
            max_exp_avg_sq[i] = v
        p[i] = pv - step_size * (m / (math.sqrt(v) / bc2 + eps))


def adam_update(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, lr, beta1=0.9, beta2=0.999,
                eps=1e-8, step, weight_decay=0.0, l1=0.0, amsgrad=False, decoupled=False):
    p = _flat(p)
    t = p.dtype.type
    # bias corrections in Python float64 from the host-side step counter, as torch.optim
    step_size = lr / (1 - beta1 ** step)
    bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
    decay = 1 - lr * weight_decay if decoupled else 1.0
    coupled_wd = 0.0 if decoupled else weight_decay
    w1 = t(1.0 - beta1)
    _adam_kernel[_grid(p.size)](p, _flat(g), _flat(exp_avg), _flat(exp_avg_sq),
                                  _state(max_exp_avg_sq, p.dtype), w1, t(1) - w1,
                                  bool(abs(w1) < 0.5), t(beta2), t(1.0 - beta2), t(eps),
                                  t(step_size), t(bias_correction2_sqrt), t(decay), t(coupled_wd),
                                  t(l1), decay != 1.0, coupled_wd != 0.0, l1 != 0.0,
                                  bool(amsgrad))


# ---- Rprop ----------------------------------------------------------------------------------
@kernel
def _rprop_kernel(p, g, prev, step_size, etaminus, etaplus, lo, hi, wd, l1, use_wd, use_l1):
    # p, g, prev, step_size: (n,)
    # s = sign(d prev); step_size = clamp(step_size * (eta+ | eta- | 1), min, max);
    # d = 0 where s < 0; p -= sign(d) step_size; prev = d
    zero = p.dtype.type(0)
    one = p.dtype.type(1)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, p.shape[0], step):
        pv = p[i]
        d = _regularized(g[i], pv, wd, l1, use_wd, use_l1, zero, one)
        s = d * prev[i]
        st = step_size[i]
        if s > zero:
            st = st * etaplus
        elif s < zero:
            st = st * etaminus
            d = zero  # no step after a sign change, and prev = 0
        st = min(max(st, lo), hi)
        step_size[i] = st
        p[i] = pv - _sign(d, zero, one) * st
        prev[i] = d


def rprop_update(p, g, prev, step_size, *, etaminus=0.5, etaplus=1.2, step_size_min=1e-6,
                 step_size_max=50.0, weight_decay=0.0, l1=0.0):
    p = _flat(p)
    t = p.dtype.type
    _rprop_kernel[_grid(p.size)](p, _flat(g), _flat(prev), _flat(step_size), t(etaminus),
                                   t(etaplus), t(step_size_min), t(step_size_max),
                                   t(weight_decay), t(l1), weight_decay != 0.0, l1 != 0.0)


# ---- max-norm constraint and gradient-norm clipping -----------------------------------------
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


@kernel
def _max_norm_kernel(w, max_norm, tiny):
    # w: (O, K), row o = output unit o's incoming weights; a block per row: its squared norm by
    # a pairwise tree, then rows with norm > max_norm are scaled by max_norm / (norm + 1e-7)
    # (torch.renorm); tiny = 1e-7 in the dtype
    sh = cuda.shared.array(THREADS, w.dtype)
    rows, cols = w.shape
    t = cuda.threadIdx.x
    threads = cuda.blockDim.x
    for o in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
        acc = w.dtype.type(0)
        for k in range(t, cols, threads):
            v = w[o, k]
            acc += v * v
        sh[t] = acc
        cuda.syncthreads()  # every thread's partial is stored before the tree
        _block_sum(sh, t)
        norm = math.sqrt(sh[0])
        if norm > max_norm:
            scale = max_norm / (norm + tiny)
            for k in range(t, cols, threads):
                w[o, k] *= scale
        cuda.syncthreads()  # sh[0] is read by every thread before the next row overwrites it


@functools.lru_cache(maxsize=1024)
def _row_plan(rows, cols):
    return min(rows, MAX_BLOCKS), min(THREADS, max(32, _pow2_ceil(cols)))


def max_norm_update(w, max_norm):
    w = device_array(w)
    w2 = w.reshape(w.shape[0], w.size // w.shape[0])
    blocks, threads = _row_plan(*w2.shape)
    t = w.dtype.type
    _max_norm_kernel[blocks, threads](w2, t(max_norm), t(1e-7))


@kernel
def _sum_squares_kernel(x, partial):
    # x: (n,) -> partial: (B,), partial[b] = sum of x² over block b's grid-stride elements
    # (sequential per thread, then a pairwise tree)
    sh = cuda.shared.array(THREADS, x.dtype)
    t = cuda.threadIdx.x
    acc = x.dtype.type(0)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.shape[0], step):
        v = x[i]
        acc += v * v
    sh[t] = acc
    cuda.syncthreads()  # every thread's partial is stored before the tree
    _block_sum(sh, t)
    if t == 0:
        partial[cuda.blockIdx.x] = sh[0]


@functools.lru_cache(maxsize=1024)
def _reduce_plan(n):
    """(blocks, threads) of sum_squares over n elements (a function of n only)."""
    threads = min(THREADS, max(32, _pow2_ceil(n)))
    return max(1, min(-(-n // (threads * _ITEMS)), _MAX_PARTIALS)), threads


def _sum_squares_into(x, partial):
    blocks, threads = _reduce_plan(x.size)
    _sum_squares_kernel[blocks, threads](x, partial)


def sum_squares(x):
    x = _flat(x)
    partial = empty((_reduce_plan(x.size)[0],), x.dtype)
    _sum_squares_into(x, partial)
    return math.fsum(partial.copy_to_host().tolist())


def sum_squares_many(arrays):
    """sum(x²) over all device ``arrays`` (of one or more dtypes) as a Python float: one
    launch per array into one partials buffer per dtype, one host copy per dtype (for
    gradient clipping: one synchronisation instead of one per parameter). The same value as
    the sum of ``sum_squares`` over the arrays up to the final exactly rounded addition."""
    groups = {}
    for a in arrays:
        a = _flat(a)
        groups.setdefault(np.dtype(a.dtype), []).append(a)
    total = []
    for dtype, group in groups.items():
        counts = [_reduce_plan(a.size)[0] for a in group]
        partial = empty((sum(counts),), dtype)
        offset = 0
        for a, count in zip(group, counts):
            _sum_squares_into(a, partial[offset:offset + count])
            offset += count
        total.extend(partial.copy_to_host().tolist())
    return math.fsum(total)


@kernel
def _scale_kernel(x, factor):
    # x: (n,) *= factor (in x's dtype)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.shape[0], step):
        x[i] *= factor


def scale_inplace(x, factor):
    x = _flat(x)
    _scale_kernel[_grid(x.size)](x, x.dtype.type(factor))
