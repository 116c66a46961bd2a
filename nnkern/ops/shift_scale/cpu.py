"""Numba CPU kernels for shift (y = x + b) and scale (y = w * x).

A parameter p broadcasts over x in one of three modes (validated in ``__init__``):
  element  p: x.shape[1:]  x viewed as (N, F), p as (F,):   y[n, f] = x[n, f] op p[f]
  channel  p: (C,)         x viewed as (N, C, L):           y[n, c, l] = x[n, c, l] op p[c]
  layer    p: (1,)         x viewed flat (M,):              y[i] = x[i] op p[0]
(channel on a 2-D x is element: L = 1 would leave a 1-long inner loop, so it takes the
element path, which gives the same numbers.)

Parameter gradients are sums over the broadcast dims (``param_grad_sums``, also used by
PReLU's weight gradient). They are deterministic: every partial sum is accumulated serially
in float64 in a fixed order over a fixed, shape-only split of the work, and the partials are
merged in a fixed order, so serial and parallel runs, and any thread count, give bit-identical
results.
"""

import numpy as np
from numba import prange

from nnkern._jit import cpu_kernel

#: What ``param_grad_sums`` adds up (the per-element term t): dy (shift's db), x * dy
#: (scale's dw) or x * dy where x <= 0, else 0 (PReLU's dweight).
SUM_DY, SUM_X_DY, SUM_X_DY_NONPOS = 0, 1, 2

_FBLOCK = 2048         # columns per task in the element-mode kernels
_ROW_CHUNKS = 16       # row chunks for element-mode sums when there are few columns
_FLAT_CHUNK = 8192     # elements per partial sum in layer mode


# ---------------------------------------------------------------- apply: y = x op p


@cpu_kernel
def _apply_rows_kernel(x, p, y, mul):
    # x: (N, F), p: (F,) -> y: (N, F); y = x * p if mul else x + p (p broadcast over rows).
    # Task = (row n, block of _FBLOCK columns): parallel even for N = 1. The block is taken
    # as contiguous slices: indexing x[n, f0 + j] instead keeps LLVM from vectorising (it
    # cannot prove the index non-negative, so negative-index wraparound stays in the loop).
    n_, f_ = x.shape
    nb = (f_ + _FBLOCK - 1) // _FBLOCK
    for t in prange(n_ * nb):
        n = t // nb
        f0 = (t - n * nb) * _FBLOCK
        f1 = min(f0 + _FBLOCK, f_)
        xr = x[n, f0:f1]
        pr = p[f0:f1]
        yr = y[n, f0:f1]
        if mul:
            for j in range(f1 - f0):
                yr[j] = xr[j] * pr[j]
        else:
            for j in range(f1 - f0):
                yr[j] = xr[j] + pr[j]


@cpu_kernel
def _apply_channels_kernel(x, p, y, mul):
    # x: (N, C, L), p: (C,) -> y: (N, C, L); y = x * p[c] if mul else x + p[c]
    n_, c_, l_ = x.shape
    for r in prange(n_ * c_):
        n = r // c_
        c = r - n * c_
        a = p[c]
        if mul:
            for l in range(l_):
                y[n, c, l] = x[n, c, l] * a
        else:
            for l in range(l_):
                y[n, c, l] = x[n, c, l] + a


@cpu_kernel
def _apply_scalar_kernel(x, p, y, mul):
    # x: (M,), p: (1,) -> y: (M,); y = x * p[0] if mul else x + p[0]
    a = p[0]
    if mul:
        for i in prange(x.shape[0]):
            y[i] = x[i] * a
    else:
        for i in prange(x.shape[0]):
            y[i] = x[i] + a


def _apply(x, p, mode, y, mul):
    if mode == "layer":
        _apply_scalar_kernel.for_size(x.size)(x.reshape(-1), p, y.reshape(-1), mul)
    elif mode == "channel" and x.ndim > 2:
        shape = (x.shape[0], x.shape[1], -1)
        _apply_channels_kernel.for_size(x.size)(x.reshape(shape), p, y.reshape(shape), mul)
    else:  # element, or channel on (N, F)
        shape = (x.shape[0], -1)
        _apply_rows_kernel.for_size(x.size)(x.reshape(shape), p.reshape(-1), y.reshape(shape),
                                            mul)
    return y


# ---------------------------------------------------------------- parameter-gradient sums


@cpu_kernel
def _sum_rows_kernel(x, dy, partial, what):
    # x, dy: (N, F) -> partial: (K, F) float64; partial[k, f] = sum of t(x, dy)[n, f] over the
    # k-th of K fixed row chunks. Task = (chunk k, block of _FBLOCK columns); contiguous
    # slices as in _apply_rows_kernel.
    n_, f_ = dy.shape
    k_ = partial.shape[0]
    nb = (f_ + _FBLOCK - 1) // _FBLOCK
    for t in prange(k_ * nb):
        k = t // nb
        f0 = (t - k * nb) * _FBLOCK
        f1 = min(f0 + _FBLOCK, f_)
        w = f1 - f0
        acc = partial[k, f0:f1]
        for j in range(w):
            acc[j] = 0.0
        for n in range(k * n_ // k_, (k + 1) * n_ // k_):
            xr = x[n, f0:f1]
            gr = dy[n, f0:f1]
            if what == SUM_DY:
                for j in range(w):
                    acc[j] += gr[j]
            elif what == SUM_X_DY:
                for j in range(w):
                    acc[j] += np.float64(xr[j]) * gr[j]
            else:
                for j in range(w):
                    v = np.float64(xr[j])
                    acc[j] += v * gr[j] if v <= 0.0 else 0.0


@cpu_kernel
def _sum_channels_kernel(x, dy, partial, what):
    # x, dy: (N, C, L) -> partial: (N, C) float64; partial[n, c] = sum_l t(x, dy)[n, c, l]
    n_, c_, l_ = dy.shape
    for r in prange(n_ * c_):
        n = r // c_
        c = r - n * c_
        acc = 0.0
        if what == SUM_DY:
            for l in range(l_):
                acc += dy[n, c, l]
        elif what == SUM_X_DY:
            for l in range(l_):
                acc += np.float64(x[n, c, l]) * dy[n, c, l]
        else:
            for l in range(l_):
                v = np.float64(x[n, c, l])
                acc += v * dy[n, c, l] if v <= 0.0 else 0.0
        partial[n, c] = acc


@cpu_kernel
def _sum_flat_kernel(x, dy, partial, what):
    # x, dy: (M,) -> partial: (K,) float64; partial[k] = sum of t(x, dy) over the k-th
    # chunk of _FLAT_CHUNK elements (contiguous slices as in _apply_rows_kernel)
    m_ = dy.shape[0]
    for k in prange(partial.shape[0]):
        i0 = k * _FLAT_CHUNK
        i1 = min(i0 + _FLAT_CHUNK, m_)
        xr = x[i0:i1]
        gr = dy[i0:i1]
        acc = 0.0
        if what == SUM_DY:
            for j in range(i1 - i0):
                acc += gr[j]
        elif what == SUM_X_DY:
            for j in range(i1 - i0):
                acc += np.float64(xr[j]) * gr[j]
        else:
            for j in range(i1 - i0):
                v = np.float64(xr[j])
                acc += v * gr[j] if v <= 0.0 else 0.0
        partial[k] = acc


def param_grad_sums(x, dy, mode, what, out):
    """out = sum of the term ``what`` (SUM_DY, SUM_X_DY, SUM_X_DY_NONPOS) over the dims that a
    parameter of ``mode`` broadcasts over; float64 accumulation, deterministic, stored in
    out's dtype. x is unused (any array of dy's shape) for SUM_DY. Returns out."""
    if mode == "layer":
        m = dy.size
        partial = np.empty(-(-m // _FLAT_CHUNK), np.float64)
        _sum_flat_kernel.for_size(m)(x.reshape(-1), dy.reshape(-1), partial, what)
        out[0] = partial.sum()  # NumPy's pairwise sum: a fixed order for a given length
    elif mode == "channel" and dy.ndim > 2:
        shape = (dy.shape[0], dy.shape[1], -1)
        partial = np.empty(dy.shape[:2], np.float64)
        _sum_channels_kernel.for_size(dy.size)(x.reshape(shape), dy.reshape(shape), partial,
                                               what)
        out[...] = partial.sum(axis=0)  # rows added in order 0, 1, ..., N-1
    else:  # element, or channel on (N, F)
        n = dy.shape[0]
        f = dy.size // n
        # enough column blocks for parallelism: one row chunk; otherwise up to 16 row chunks
        k = 1 if f >= 8 * _FBLOCK else min(_ROW_CHUNKS, n)
        partial = np.empty((k, f), np.float64)
        _sum_rows_kernel.for_size(dy.size)(x.reshape(n, f), dy.reshape(n, f), partial, what)
        out.reshape(-1)[...] = partial.sum(axis=0)
    return out


# ---------------------------------------------------------------- public functions


def shift_forward(x, b, mode, *, out=None):
    y = np.empty_like(x) if out is None else out
    return _apply(x, b, mode, y, False)


def shift_backward(dy, b, mode, *, out=None):
    dx_out, db_out = (None, None) if out is None else out
    if dx_out is None:
        dx = dy  # dx = dy: no copy, the caller gets dy itself back
    else:
        dx = dx_out
        dx[...] = dy
    db = np.empty_like(b) if db_out is None else db_out
    return dx, param_grad_sums(dy, dy, mode, SUM_DY, db)


def scale_forward(x, w, mode, *, out=None):
    y = np.empty_like(x) if out is None else out
    return _apply(x, w, mode, y, True)


def scale_backward(dy, x, w, mode, *, out=None):
    dx_out, dw_out = (None, None) if out is None else out
    dx = _apply(dy, w, mode, np.empty_like(dy) if dx_out is None else dx_out, True)
    dw = np.empty_like(w) if dw_out is None else dw_out
    return dx, param_grad_sums(x, dy, mode, SUM_X_DY, dw)
