"""Numba CPU kernels for the update rules (formulas: ``nnkern.ops.update``; PyTorch's order).

Every rule is one pass over flat views of the parameter, its gradient and its state: read g
and p, apply the coupled regularizers, update the state, write p. That is 3-5 reads and 2-4
writes per element where PyTorch's op-by-op code streams the arrays 6-15 times, and one kernel
call per parameter instead of 3-12 dispatches. Elementwise, so prange needs no reduction and
the serial and parallel variants give the same bits (the SGD kernels only because they are
compiled without FMA contraction, ``cpu_kernel(contract=False)``: LLVM contracted
``mu * buf + (1 - dampening) * d`` differently in the two variants).

dtype: hyperparameters arrive as Python floats (float64) and are cast once, before the loop,
with ``p.dtype.type(...)``: Numba does not follow NEP 50, and ``x * lr`` with a float64 ``lr``
would compute in float64 and round differently from PyTorch's float32 arithmetic. Scalar
factors PyTorch computes in Python (1 - dampening, lr / (1 - beta1^step), ...) are computed
here in float64 and then cast, as PyTorch does.

Backends trust their arguments (validated by ``nnkern.ops.update`` or by the optimizer when it
allocates the state): unused state arrays are passed as None and replaced by an empty array of
the right dtype, so each kernel compiles once per dtype and variant.
"""

import math

import numba
import numpy as np
from numba import carray, prange, types
from numba.extending import intrinsic

from nnkern import _jit
from nnkern._jit import cpu_inline, cpu_kernel

#: fixed chunk count of sum_squares: the float64 partial sums merge in a fixed order
SUM_CHUNKS = 16

_EMPTY = {np.dtype(np.float32): np.empty(0, np.float32),
          np.dtype(np.float64): np.empty(0, np.float64)}


def _flat(a):
    return a if a.ndim == 1 else a.reshape(-1)


def _state(a, dtype):
    return _EMPTY[dtype] if a is None else _flat(a)


@cpu_inline
def _lerp(start, end, w, one_minus_w, small):
    # torch.lerp's two-sided formula (accurate at both ends; w cast to the dtype beforehand)
    if small:
        return start + w * (end - start)
    return end - (end - start) * one_minus_w


# ---- SGD ------------------------------------------------------------------------------------
#: Elements per prange iteration of the one-tensor SGD kernel. Fixed (the split does not depend
#: on the thread count; elementwise, so it does not change any value either: the multi-tensor
#: kernel runs the same _sgd_run over other runs and gives the same bits, tested).
MULTI_BLOCK = 16384


@cpu_inline
def _sgd_run(p, g, buf, lr_, wd, l1_, mu, keep, use_wd, use_l1, use_mom, nesterov, first):
    # one contiguous run of one tensor: _sgd_kernel's body, the same operations in the same order
    for i in range(p.shape[0]):
        pi = p[i]
        d = g[i]
        if use_wd:
            d = d + wd * pi
        if use_l1:
            d = d + l1_ * np.sign(pi)
        if use_mom:
            b = d if first else mu * buf[i] + keep * d
            buf[i] = b
            d = d + mu * b if nesterov else b
        p[i] = pi - lr_ * d


@cpu_kernel(contract=False)
def _sgd_kernel(p, g, buf, lr, momentum, dampening, nesterov, weight_decay, l1, first):
    # p, g, buf: (n,) flat; buf is (0,) when momentum == 0
    # d = g + wd p + l1 sign(p); buf = d (first) | mu buf + (1 - damp) d; d = buf | d + mu buf
    lr_ = p.dtype.type(lr)
    wd = p.dtype.type(weight_decay)
    l1_ = p.dtype.type(l1)
    mu = p.dtype.type(momentum)
    keep = p.dtype.type(1.0 - dampening)
    use_wd = weight_decay != 0.0
    use_l1 = l1 != 0.0
    use_mom = momentum != 0.0
    for blk in prange((p.size + MULTI_BLOCK - 1) // MULTI_BLOCK):
        a = blk * MULTI_BLOCK
        b = min(p.size, a + MULTI_BLOCK)
        _sgd_run(p[a:b], g[a:b], buf[a:b] if use_mom else buf, lr_, wd, l1_, mu, keep, use_wd,
                 use_l1, use_mom, nesterov, first)


def _sgd_variant(kernel, size):
    """Parallel from 8 x PARALLEL_MIN_WORK elements: an update streams five arrays at cache
    speed, and below that a parallel region costs more than it saves whenever the other core
    is busy (measured: 78 400 parameters took 16 µs serially and 0.36 ms in parallel on a
    loaded 2-core machine). The multi-tensor kernel, which the seed models' SGD steps take,
    goes parallel earlier, for cache locality (see _sgd_multi_kernel)."""
    return kernel.parallel if size >= 8 * _jit.PARALLEL_MIN_WORK else kernel.serial


def sgd_update(p, g, buf=None, *, lr, momentum=0.0, dampening=0.0, nesterov=False,
               weight_decay=0.0, l1=0.0, first=False):
    p = _flat(p)
    _sgd_variant(_sgd_kernel, p.size)(p, _flat(g), _state(buf, p.dtype), lr, momentum,
                                      dampening, nesterov, weight_decay, l1, first)


# ---- SGD over many tensors at once -----------------------------------------------------------
class TensorTable:
    """Several columns of T flat C-contiguous arrays of one float dtype (e.g. the parameters,
    gradients and momentum buffers of an optimizer group), handed to a multi-tensor kernel as
    one int64 table of their addresses: one compiled signature for any number of tensors and
    microseconds per call (a ``numba.typed.List`` costs ~0.9 s of compilation per process and
    dtype at first use; a tuple, one compilation per tensor count). The table keeps a reference
    to every array, so the addresses stay valid while it lives. A column may be None (an
    unused state array: address 0, never read)."""

    def __init__(self, *columns):
        first = list(columns[0])
        self.columns = [None if c is None else list(c) for c in columns]
        self.dtype = first[0].dtype
        self.addresses = np.zeros((len(columns), len(first)), np.int64)
        for i, column in enumerate(self.columns):
            if column is None:
                continue
            for t, a in enumerate(column):
                if a.dtype != self.dtype or a.size != first[t].size or not a.flags.c_contiguous:
                    raise ValueError("TensorTable: every array must be C-contiguous, of the "
                                     "dtype of the first and the size of its column-0 peer")
                self.addresses[i, t] = a.__array_interface__["data"][0]
        self.sizes = np.array([a.size for a in first], np.int64)
        self.size = int(self.sizes.sum())
        self.proto = np.empty(0, self.dtype)  # types the kernel's views

    def holds(self, *columns):
        """True when the table was built from exactly these arrays (identity, in order)."""
        if len(columns) != len(self.columns):
            return False
        for mine, theirs in zip(self.columns, columns):
            if mine is None or theirs is None:
                if mine is not theirs:
                    return False
            elif len(mine) != len(theirs) or any(a is not b for a, b in zip(mine, theirs)):
                return False
        return True


@intrinsic
def _pointer(typingctx, address, like):
    # int64 address -> pointer to like's dtype (the view is made with numba.carray)
    sig = types.CPointer(like.dtype)(address, like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
    return sig, codegen


@cpu_inline
def _column(addresses, row, t, start, stop, n, proto):
    # elements [start, stop) of tensor t of column row, as an array view (no reference count:
    # the TensorTable keeps the memory alive)
    return carray(_pointer(addresses[row, t], proto), n)[start:stop]


@cpu_inline
def _slot_edge(s, slots, n):
    # start of slot s of `slots` over n elements, on a multiple of 16 (the last ends at n)
    return n if s >= slots else (s * n // slots) // 16 * 16


@cpu_kernel(contract=False)
def _sgd_multi_kernel(addresses, sizes, proto, slots, lr, momentum, dampening, nesterov,
                      weight_decay, l1, first):
    # addresses: (3, T) int64, rows p, g, buf of T flat tensors (buf row unused when
    # momentum == 0); sizes: (T,) int64; proto: an empty array of their dtype. Each tensor is
    # cut into `slots` equal runs, one prange iteration per slot running its run of every
    # tensor: with one slot per thread, each thread updates the same part of each tensor every
    # step, the part that the dense layers' split GEMMs write on that thread (the first rows of
    # a weight on the first thread, ...), so gradients and weights stay in that core's cache.
    lr_ = proto.dtype.type(lr)
    wd = proto.dtype.type(weight_decay)
    l1_ = proto.dtype.type(l1)
    mu = proto.dtype.type(momentum)
    keep = proto.dtype.type(1.0 - dampening)
    use_wd = weight_decay != 0.0
    use_l1 = l1 != 0.0
    use_mom = momentum != 0.0
    for s in prange(slots):
        for t in range(sizes.shape[0]):
            n = sizes[t]
            a, b = _slot_edge(s, slots, n), _slot_edge(s + 1, slots, n)
            if a < b:
                p = _column(addresses, 0, t, a, b, n, proto)
                g = _column(addresses, 1, t, a, b, n, proto)
                buf = _column(addresses, 2, t, a, b, n, proto) if use_mom else proto
                _sgd_run(p, g, buf, lr_, wd, l1_, mu, keep, use_wd, use_l1, use_mom, nesterov,
                         first)


def sgd_update_multi(table, *, lr, momentum=0.0, dampening=0.0, nesterov=False,
                     weight_decay=0.0, l1=0.0, first=False):
    """``sgd_update`` of every tensor of ``table`` (a TensorTable with columns p, g, buf; buf
    None when momentum == 0) in one call, the same bits (elementwise: any split gives them).
    Parallel from PARALLEL_MIN_WORK elements, one slot per thread (see _sgd_multi_kernel)."""
    if table.size >= _jit.PARALLEL_MIN_WORK:
        kernel, slots = _sgd_multi_kernel.parallel, numba.get_num_threads()
    else:
        kernel, slots = _sgd_multi_kernel.serial, 1
    kernel(table.addresses, table.sizes, table.proto, slots, lr, momentum, dampening, nesterov,
           weight_decay, l1, first)


# ---- AdaGrad --------------------------------------------------------------------------------
@cpu_kernel
def _adagrad_kernel(p, g, state_sum, clr, eps, weight_decay, l1):
    # p, g, state_sum: (n,); state_sum += d²; p -= clr d / (sqrt(state_sum) + eps)
    clr_ = p.dtype.type(clr)
    eps_ = p.dtype.type(eps)
    wd = p.dtype.type(weight_decay)
    l1_ = p.dtype.type(l1)
    use_wd = weight_decay != 0.0
    use_l1 = l1 != 0.0
    for i in prange(p.size):
        pi = p[i]
        d = g[i]
        if use_wd:
            d = d + wd * pi
        if use_l1:
            d = d + l1_ * np.sign(pi)
        s = state_sum[i] + d * d
        state_sum[i] = s
        p[i] = pi - clr_ * (d / (np.sqrt(s) + eps_))


def adagrad_update(p, g, state_sum, *, clr, eps=1e-10, weight_decay=0.0, l1=0.0):
    p = _flat(p)
    _adagrad_kernel.for_size(p.size)(p, _flat(g), _flat(state_sum), clr, eps, weight_decay, l1)


# ---- RMSProp --------------------------------------------------------------------------------
@cpu_kernel
def _rmsprop_kernel(p, g, square_avg, grad_avg, buf, lr, alpha, eps, weight_decay, l1, momentum,
                    centered):
    # p, g, square_avg: (n,); grad_avg: (n,) if centered else (0,); buf: (n,) if momentum else (0,)
    # v = alpha v + (1 - alpha) d²; avg = sqrt(v - m²) + eps (centered, m = EMA of d) or
    # sqrt(v) + eps; buf = mu buf + d / avg, p -= lr buf (momentum) or p -= lr d / avg
    lr_ = p.dtype.type(lr)
    a = p.dtype.type(alpha)
    w = p.dtype.type(1.0 - alpha)
    one_minus_w = p.dtype.type(1.0) - w
    small = abs(w) < 0.5
    eps_ = p.dtype.type(eps)
    wd = p.dtype.type(weight_decay)
    l1_ = p.dtype.type(l1)
    mu = p.dtype.type(momentum)
    use_wd = weight_decay != 0.0
    use_l1 = l1 != 0.0
    use_mom = momentum > 0.0
    for i in prange(p.size):
        pi = p[i]
        d = g[i]
        if use_wd:
            d = d + wd * pi
        if use_l1:
            d = d + l1_ * np.sign(pi)
        v = square_avg[i] * a + w * d * d
        square_avg[i] = v
        if centered:
            m = _lerp(grad_avg[i], d, w, one_minus_w, small)
            grad_avg[i] = m
            avg = np.sqrt(v - m * m) + eps_
        else:
            avg = np.sqrt(v) + eps_
        if use_mom:
            b = buf[i] * mu + d / avg
            buf[i] = b
            p[i] = pi - lr_ * b
        else:
            p[i] = pi - lr_ * (d / avg)


def rmsprop_update(p, g, square_avg, grad_avg=None, buf=None, *, lr, alpha=0.99, eps=1e-8,
                   weight_decay=0.0, l1=0.0, momentum=0.0, centered=False):
    p = _flat(p)
    _rmsprop_kernel.for_size(p.size)(p, _flat(g), _flat(square_avg), _state(grad_avg, p.dtype),
                                     _state(buf, p.dtype), lr, alpha, eps, weight_decay, l1,
                                     momentum, centered)


# ---- Adadelta -------------------------------------------------------------------------------
@cpu_kernel
def _adadelta_kernel(p, g, square_avg, acc_delta, lr, rho, eps, weight_decay, l1):
    # p, g, square_avg, acc_delta: (n,)
    # v = rho v + (1 - rho) d²; delta = sqrt(u + eps) / sqrt(v + eps) d;
    # u = rho u + (1 - rho) delta²; p -= lr delta
    lr_ = p.dtype.type(lr)
    r = p.dtype.type(rho)
    w = p.dtype.type(1.0 - rho)
    eps_ = p.dtype.type(eps)
    wd = p.dtype.type(weight_decay)
    l1_ = p.dtype.type(l1)
    use_wd = weight_decay != 0.0
    use_l1 = l1 != 0.0
    for i in prange(p.size):
        pi = p[i]
        d = g[i]
        if use_wd:
            d = d + wd * pi
        if use_l1:
            d = d + l1_ * np.sign(pi)
        v = square_avg[i] * r + w * d * d
        square_avg[i] = v
        delta = np.sqrt(acc_delta[i] + eps_) / np.sqrt(v + eps_) * d
        acc_delta[i] = acc_delta[i] * r + w * delta * delta
        p[i] = pi - lr_ * delta


def adadelta_update(p, g, square_avg, acc_delta, *, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0,
                    l1=0.0):
    p = _flat(p)
    _adadelta_kernel.for_size(p.size)(p, _flat(g), _flat(square_avg), _flat(acc_delta), lr, rho,
                                      eps, weight_decay, l1)


# ---- Adam / AdamW ---------------------------------------------------------------------------
@cpu_kernel
def _adam_kernel(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, beta1, beta2, eps, step_size,
                 bias_correction2_sqrt, decay, weight_decay, l1, amsgrad):
    # p, g, exp_avg, exp_avg_sq: (n,); max_exp_avg_sq: (n,) if amsgrad else (0,)
    # p *= decay (AdamW: 1 - lr wd, else 1); m = lerp(m, d, 1 - b1); v = b2 v + (1 - b2) d²;
    # p -= step_size m / (sqrt(v) / sqrt(1 - b2^t) + eps), step_size = lr / (1 - b1^t)
    w1 = p.dtype.type(1.0 - beta1)
    one_minus_w1 = p.dtype.type(1.0) - w1
    small = abs(w1) < 0.5
    b2 = p.dtype.type(beta2)
    w2 = p.dtype.type(1.0 - beta2)
    eps_ = p.dtype.type(eps)
    ss = p.dtype.type(step_size)
    bc2 = p.dtype.type(bias_correction2_sqrt)
    dec = p.dtype.type(decay)
    wd = p.dtype.type(weight_decay)
    l1_ = p.dtype.type(l1)
    use_decay = decay != 1.0
    use_wd = weight_decay != 0.0
    use_l1 = l1 != 0.0
    for i in prange(p.size):
        pi = p[i]
        if use_decay:
            pi = pi * dec
        d = g[i]
        if use_wd:
            d = d + wd * pi
        if use_l1:
            d = d + l1_ * np.sign(pi)
        m = _lerp(exp_avg[i], d, w1, one_minus_w1, small)
        exp_avg[i] = m
        v = exp_avg_sq[i] * b2 + w2 * d * d
        exp_avg_sq[i] = v
        if amsgrad:
            v = max(max_exp_avg_sq[i], v)
            max_exp_avg_sq[i] = v
        p[i] = pi - ss * (m / (np.sqrt(v) / bc2 + eps_))


def adam_update(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, lr, beta1=0.9, beta2=0.999,
                eps=1e-8, step, weight_decay=0.0, l1=0.0, amsgrad=False, decoupled=False):
    p = _flat(p)
    # bias corrections in Python float64, as torch.optim computes them
    step_size = lr / (1 - beta1 ** step)
    bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
    decay = 1 - lr * weight_decay if decoupled else 1.0
    _adam_kernel.for_size(p.size)(p, _flat(g), _flat(exp_avg), _flat(exp_avg_sq),
                                  _state(max_exp_avg_sq, p.dtype), beta1, beta2, eps, step_size,
                                  bias_correction2_sqrt, decay,
                                  0.0 if decoupled else weight_decay, l1, amsgrad)


# ---- Rprop ----------------------------------------------------------------------------------
@cpu_kernel
def _rprop_kernel(p, g, prev, step_size, etaminus, etaplus, step_size_min, step_size_max,
                  weight_decay, l1):
    # p, g, prev, step_size: (n,)
    # s = sign(d prev); step_size = clamp(step_size * (eta+ | eta- | 1), min, max);
    # d = 0 where s < 0; p -= sign(d) step_size; prev = d
    em = p.dtype.type(etaminus)
    ep = p.dtype.type(etaplus)
    lo = p.dtype.type(step_size_min)
    hi = p.dtype.type(step_size_max)
    zero = p.dtype.type(0.0)
    wd = p.dtype.type(weight_decay)
    l1_ = p.dtype.type(l1)
    use_wd = weight_decay != 0.0
    use_l1 = l1 != 0.0
    for i in prange(p.size):
        pi = p[i]
        d = g[i]
        if use_wd:
            d = d + wd * pi
        if use_l1:
            d = d + l1_ * np.sign(pi)
        s = d * prev[i]
        st = step_size[i]
        if s > 0:
            st = st * ep
        elif s < 0:
            st = st * em
            d = zero  # no step after a sign change, and prev = 0
        st = min(max(st, lo), hi)
        step_size[i] = st
        p[i] = pi - np.sign(d) * st
        prev[i] = d


def rprop_update(p, g, prev, step_size, *, etaminus=0.5, etaplus=1.2, step_size_min=1e-6,
                 step_size_max=50.0, weight_decay=0.0, l1=0.0):
    p = _flat(p)
    _rprop_kernel.for_size(p.size)(p, _flat(g), _flat(prev), _flat(step_size), etaminus,
                                   etaplus, step_size_min, step_size_max, weight_decay, l1)


# ---- max-norm constraint and gradient-norm clipping -----------------------------------------
@cpu_kernel
def _max_norm_kernel(w, max_norm):
    # w: (O, K), row o = output unit o's incoming weights; rows with norm > max_norm are scaled
    # by max_norm / (norm + 1e-7) (torch.renorm); the norm accumulates in float64
    rows, cols = w.shape
    for o in prange(rows):
        acc = 0.0
        for k in range(cols):
            x = np.float64(w[o, k])
            acc += x * x
        norm = math.sqrt(acc)
        if norm > max_norm:
            scale = w.dtype.type(max_norm / (norm + 1e-7))
            for k in range(cols):
                w[o, k] *= scale


def max_norm_update(w, max_norm):
    w2 = w.reshape(w.shape[0], -1)
    _max_norm_kernel.for_size(w2.size)(w2, max_norm)


@cpu_kernel
def _sum_squares_kernel(x, partial):
    # x: (n,) -> partial: (SUM_CHUNKS,) float64, partial[k] = sum of x² over the k-th chunk
    n = x.size
    chunks = partial.size
    for k in prange(chunks):
        acc = 0.0
        for i in range(k * n // chunks, (k + 1) * n // chunks):
            v = np.float64(x[i])
            acc += v * v
        partial[k] = acc


def sum_squares(x):
    x = _flat(x)
    partial = np.empty(SUM_CHUNKS, np.float64)
    _sum_squares_kernel.for_size(x.size)(x, partial)
    return float(partial.sum())  # 16 values, fixed (pairwise) order


@cpu_kernel
def _scale_kernel(x, factor):
    # x: (n,) *= factor (cast to x's dtype)
    f = x.dtype.type(factor)
    for i in prange(x.size):
        x[i] *= f


def scale_inplace(x, factor):
    x = _flat(x)
    _scale_kernel.for_size(x.size)(x, factor)
