"""Numba CPU kernels for dense.

The matrix products are called from inside the kernels, so that one jitted call runs a
layer's whole forward (GEMM, bias, ReLU) or backward (ReLU mask, bias gradient, both GEMMs),
and a product can be cut into blocks over Numba's threads, which start a region in ~2 µs where
a Python-level thread pool takes ~30 µs. float32 x @ w.T and dz.T @ x blocks run as
register-blocked LLVM vector code (``ops/_simd.py``: ~1.6x OpenBLAS on these skinny shapes;
a plain Numba loop GEMM reaches only ~30% of OpenBLAS, NUMBA_NOTES §1.1); dx, float64 and the
shapes _simd leaves out are BLAS GEMMs (``ops/_blas.py``).

Products of SPLIT_WORK multiply-adds or more are cut in two (see ``gemm_parts``), every cut
along the output features o, so that each thread works on the same rows of w, dw and the
momentum every step, the rows the multi-tensor SGD kernel updates on that thread (ops/update):

    forward  y[:, O_p] = x @ w[O_p].T             into a contiguous scratch block, then copied
                                                   into y with the bias and the ReLU
    backward dw[O_p]   = g[:, O_p].T @ x          (g = dy, masked by the ReLU)
             dx        = sum_p g[:, O_p] @ w[O_p]  block 0 into dx, the others into scratch,
                                                   added in block order

The forward's scratch blocks: two threads writing column blocks of y itself write the same
cache lines wherever y's rows are not whole lines apart (64x100 -> 100: 12 µs per half,
against 7 µs for the same GEMM alone). Measured on 2 cores, one call: 64x784 -> 100 forward
102 -> 66 µs, 64x512 -> 512 forward 356 -> 176 µs; more than two blocks lost there (64x512 ->
512 in 4: 193 µs, in 8: 231 µs). A cut along the input features (each thread half of every
row of w) was as fast alone but slower in the MLP's training step (0.43 vs 0.41 ms), where w's
rows then moved between the cores' caches each step. The blocks follow the shapes only, and
each block's GEMM is the same single-threaded call on any thread, so results depend neither
on the thread count nor on the variant. The bias gradient is a float64 column sum over
ROW_CHUNKS fixed row chunks, merged in chunk order (as ``_reduce.column_sums``).

A ReLU that follows the layer can be fused in (``relu=True``, used by ``Sequential`` for
Dense -> ReLU): the forward clamps each row after its bias, and the backward masks the
incoming gradient while summing it for the bias gradient. The results are the bits of the
unfused ops.

Without a BLAS the kernels can call (``_blas.AVAILABLE`` False: NumPy not on its wheel's
OpenBLAS), the products go through ``nnkern.runtime.matmul`` and small kernels do the rest.
"""

import numpy as np
from numba import prange

from nnkern import _jit
from nnkern._jit import cpu_inline, cpu_kernel
from nnkern.ops import _blas, _simd
from nnkern.ops._reduce import ROW_CHUNKS, column_sums
from nnkern.runtime import matmul

#: Products of at least this many multiply-adds are cut into two blocks (64x100 -> 100, the
#: MLP's hidden layers, and up), 4 from 2**26 and 8 from 2**28 (for machines with more
#: cores; on 2 cores more blocks only cost). Each block at least ALIGN features wide.
SPLIT_WORK = 1 << 18
ALIGN = 16


def gemm_parts(work, size):
    """Blocks for a product of ``work`` multiply-adds cut along a dimension of ``size``."""
    parts = 1 if work < SPLIT_WORK else 2 if work < 1 << 26 else 4 if work < 1 << 28 else 8
    return max(1, min(parts, size // ALIGN))


def _variant(kernel, work):
    """Parallel from 8 x PARALLEL_MIN_WORK multiply-adds (from 2**18 on Numba's OpenMP layer:
    cutting the MLP's every hidden layer keeps Numba's threads within ~0.1 ms of their last
    region, where one starts in ~2 µs instead of ~45 µs from sleep; only from 2**23 on the
    slow-starting workqueue layer). Both variants run the same blocks: the same bits."""
    return kernel.parallel if work >= 8 * _jit.PARALLEL_MIN_WORK else kernel.serial


@cpu_inline
def _edge(p, parts, size):
    # start of block p of `parts` blocks over `size`, on a multiple of 16 (the last ends at size)
    if p >= parts:
        return size
    return (p * size // parts) // 16 * 16


@cpu_kernel
def _forward_kernel(x, w, b, y, relu, scratch, parts):
    # x (N, I), w (O, I), b (O,) or (0,) for no bias -> y (N, O) = x @ w.T + b, then
    # max(y, 0) when relu (NaN kept, as relu_forward; on the float32 sum, as the two ops in a
    # row would). With parts > 1, block p of the output features is computed into its own
    # contiguous (N, width) piece of scratch (N * O,) and copied into y with its bias and ReLU
    # (see the module docstring).
    n_, o_ = y.shape
    has_bias = b.shape[0] > 0
    zero = y.dtype.type(0)
    for p in prange(parts):
        o0, o1 = _edge(p, parts, o_), _edge(p + 1, parts, o_)
        out = y if parts == 1 else scratch[n_ * o0:n_ * o1].reshape((n_, o1 - o0))
        _simd.gemm_nt(x, w[o0:o1], out)  # float32: register-blocked (ops/_simd.py)
        if parts > 1 or has_bias or relu:
            for n in range(n_):
                y_run, out_run = y[n], out[n]
                for o in range(o0, o1):
                    v = out_run[o - o0] + b[o] if has_bias else out_run[o - o0]
                    y_run[o] = zero if relu and v < zero else v


@cpu_kernel
def _backward_kernel(dy, x, w, relu_y, relu, g, sums, has_bias, db, need_dx, dx, dw, dw_parts,
                     partial, dx_parts):
    # dy (N, O), x (N, I), w (O, I); relu_y (N, O): the fused forward's output (when relu)
    # -> g (N, O) = dy where relu_y > 0 else 0 (when relu; g is dy otherwise);
    #    db (O,) = sum_n g (float64 sums over ROW_CHUNKS row chunks, merged in order);
    #    dw (O, I) = g.T @ x in dw_parts blocks of its rows; dx (N, I) = g @ w (when need_dx)
    #    summed over dx_parts blocks of O, the blocks past the first in partial (dx_parts - 1,
    #    N, I)
    n_, o_ = dy.shape
    i_ = x.shape[1]
    zero = dy.dtype.type(0)
    chunks = ROW_CHUNKS
    if relu or has_bias:
        for k in prange(chunks):
            if has_bias:
                for o in range(o_):
                    sums[k, o] = 0.0
            for r in range(k * n_ // chunks, (k + 1) * n_ // chunks):
                dy_run, g_run = dy[r], g[r]
                if relu:
                    y_run = relu_y[r]
                    for o in range(o_):
                        g_run[o] = zero if y_run[o] <= zero else dy_run[o]
                if has_bias:
                    for o in range(o_):
                        sums[k, o] += g_run[o]
    if has_bias:
        for o in range(o_):
            s = 0.0
            for k in range(chunks):
                s += sums[k, o]
            db[o] = s
    for p in prange(dw_parts):
        o0, o1 = _edge(p, dw_parts, o_), _edge(p + 1, dw_parts, o_)
        _simd.gemm_tn(g[:, o0:o1], x, dw[o0:o1])  # float32: register-blocked (ops/_simd.py)
    if need_dx:
        for p in prange(dx_parts):
            o0, o1 = _edge(p, dx_parts, o_), _edge(p + 1, dx_parts, o_)
            _blas.gemm(g[:, o0:o1], False, w[o0:o1], False, dx if p == 0 else partial[p - 1],
                       0.0)
        if dx_parts > 1:
            for n in prange(n_):
                dx_run = dx[n]
                for q in range(dx_parts - 1):
                    p_run = partial[q, n]
                    for i in range(i_):
                        dx_run[i] += p_run[i]


def dense_forward(x, w, b=None, *, out=None, relu=False):
    y = np.empty((x.shape[0], w.shape[0]), x.dtype) if out is None else out
    if not _blas.AVAILABLE:
        return _forward_matmul(x, w, b, y, relu)
    (n, i), o = x.shape, w.shape[0]
    parts = gemm_parts(n * i * o, o)
    scratch = np.empty(n * o if parts > 1 else 0, x.dtype)
    with _blas.serial_blas():
        _variant(_forward_kernel, n * i * o)(x, w, _no_bias(x.dtype) if b is None else b, y,
                                             relu, scratch, parts)
    return y


def dense_backward(dy, x, w, *, has_bias=True, need_dx=True, out=None, relu_y=None):
    """``relu_y``: the output of ``dense_forward(..., relu=True)``; dy is then the gradient of
    that (post-ReLU) output."""
    dx, dw, db = (None, None, None) if out is None else out
    (n, o), i = dy.shape, x.shape[1]
    if need_dx and dx is None:
        dx = np.empty_like(x)
    if dw is None:
        dw = np.empty_like(w)
    if has_bias and db is None:
        db = np.empty(o, x.dtype)
    if not _blas.AVAILABLE:
        return _backward_matmul(dy, x, w, has_bias, need_dx, relu_y, dx, dw, db)
    relu = relu_y is not None
    g = np.empty_like(dy) if relu else dy
    sums = np.empty((ROW_CHUNKS, o if has_bias else 0), np.float64)
    work = n * i * o
    dw_parts = gemm_parts(work, o)
    dx_parts = gemm_parts(work, o) if need_dx else 1
    with _blas.serial_blas():
        _variant(_backward_kernel, work)(
            dy, x, w, relu_y if relu else dy, relu, g, sums, has_bias,
            db if has_bias else _no_bias(x.dtype), need_dx, dx if need_dx else dw, dw,
            dw_parts, np.empty((dx_parts - 1, n, i), x.dtype), dx_parts)
    return (dx if need_dx else None), dw, (db if has_bias else None)


_EMPTY = {np.dtype(np.float32): np.empty(0, np.float32),
          np.dtype(np.float64): np.empty(0, np.float64)}


def _no_bias(dtype):
    return _EMPTY[np.dtype(dtype)]


# -------------------------------------------- without a BLAS the kernels can call: np.matmul

@cpu_kernel
def _bias_relu_kernel(y, b, relu):
    # y: (N, O) += b: (O,) or (0,) for none; then y = max(y, 0) when relu (NaN kept)
    n_, o_ = y.shape
    has_bias = b.shape[0] > 0
    zero = y.dtype.type(0)
    for n in prange(n_):
        y_run = y[n]
        for o in range(o_):
            v = y_run[o] + b[o] if has_bias else y_run[o]
            y_run[o] = zero if relu and v < zero else v


@cpu_kernel
def _relu_mask_kernel(dy, y, g):
    # dy, y: (N, O) -> g: (N, O) = dy where y > 0 else 0 (NaN passes, as relu_backward)
    n_, o_ = dy.shape
    zero = dy.dtype.type(0)
    for r in prange(n_):
        dy_run, y_run, g_run = dy[r], y[r], g[r]
        for o in range(o_):
            g_run[o] = zero if y_run[o] <= zero else dy_run[o]


def _forward_matmul(x, w, b, y, relu):
    matmul(x, w.T, y)  # BLAS sgemm/dgemm with w transposed in place (no copy)
    if b is not None or relu:
        _bias_relu_kernel.for_size(y.size)(y, _no_bias(x.dtype) if b is None else b, relu)
    return y


def _backward_matmul(dy, x, w, has_bias, need_dx, relu_y, dx, dw, db):
    if relu_y is not None:
        g = np.empty_like(dy)
        _relu_mask_kernel.for_size(dy.size)(dy, relu_y, g)
        dy = g
    if has_bias:
        column_sums(dy, db)
    if need_dx:
        matmul(dy, w, dx)      # (N, O) @ (O, I)
    matmul(dy.T, x, dw)        # (O, N) @ (N, I)
    return dx, dw, db
