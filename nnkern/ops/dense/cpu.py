"""Numba CPU kernels for dense.

The matrix products go to BLAS through ``np.matmul`` (NumPy's OpenBLAS): a GEMM written in Numba
reaches only ~30% of it on these machines (NUMBA_NOTES §1.1). Small products run on one BLAS
thread (``nnkern.runtime.matmul``). Numba does the rest: the bias add and the bias gradient, in
float64 with a fixed reduction order.

A ReLU that follows the layer can be fused in (``relu=True``, used by ``Sequential`` for
Dense -> ReLU): the forward adds the bias and clamps in one pass over y, and the backward
masks the incoming gradient and sums it for the bias gradient in one pass. The results are the
bits of the unfused ops.
"""

import numpy as np
from numba import prange

from nnkern._jit import cpu_kernel
from nnkern.ops._reduce import ROW_CHUNKS, column_sums
from nnkern.runtime import matmul


@cpu_kernel
def _add_bias_kernel(y, b, relu):
    # y: (N, O) += b: (O,) broadcast over rows; relu: then y = max(y, 0) (NaN kept, as
    # relu_forward), computed on the float32 sum as the two ops in a row would
    n_, o_ = y.shape
    zero = y.dtype.type(0)
    for n in prange(n_):
        y_run = y[n]
        if relu:
            for o in range(o_):
                v = y_run[o] + b[o]
                y_run[o] = zero if v < zero else v
        else:
            for o in range(o_):
                y_run[o] += b[o]


@cpu_kernel
def _relu_kernel(y):
    # y: (N, O) = max(y, 0) in place (NaN kept)
    n_, o_ = y.shape
    zero = y.dtype.type(0)
    for n in prange(n_):
        y_run = y[n]
        for o in range(o_):
            v = y_run[o]
            y_run[o] = zero if v < zero else v


@cpu_kernel
def _relu_grad_kernel(dy, y, g, partial, sums):
    # dy, y: (N, O) -> g: (N, O) = dy where y > 0 else 0 (y the ReLU's output: y > 0 exactly
    # where its input is, NaN passes as in relu_backward); sums: partial (ROW_CHUNKS, O)
    # float64 column sums of g over fixed row chunks, as _reduce.column_sums (same bits)
    rows, cols = dy.shape
    chunks = partial.shape[0]
    zero = dy.dtype.type(0)
    for k in prange(chunks):
        if sums:
            for c in range(cols):
                partial[k, c] = 0.0
        for r in range(k * rows // chunks, (k + 1) * rows // chunks):
            dy_run, y_run, g_run = dy[r], y[r], g[r]
            if sums:
                for c in range(cols):
                    v = zero if y_run[c] <= zero else dy_run[c]
                    g_run[c] = v
                    partial[k, c] += v
            else:
                for c in range(cols):
                    g_run[c] = zero if y_run[c] <= zero else dy_run[c]


def dense_forward(x, w, b=None, *, out=None, relu=False):
    y = np.empty((x.shape[0], w.shape[0]), x.dtype) if out is None else out
    matmul(x, w.T, y)  # BLAS sgemm/dgemm with w transposed in place (no copy)
    if b is not None:
        _add_bias_kernel.for_size(y.size)(y, b, relu)
    elif relu:
        _relu_kernel.for_size(y.size)(y)
    return y


def dense_backward(dy, x, w, *, has_bias=True, need_dx=True, out=None, relu_y=None):
    """``relu_y``: the output of ``dense_forward(..., relu=True)``; dy is then the gradient of
    that (post-ReLU) output."""
    dx_out, dw_out, db_out = (None, None, None) if out is None else out
    db = None
    if relu_y is not None:
        g = np.empty_like(dy)
        partial = np.empty((ROW_CHUNKS, dy.shape[1]), np.float64)
        _relu_grad_kernel.for_size(dy.size)(dy, relu_y, g, partial, has_bias)
        dy = g
        if has_bias:
            db = np.empty(w.shape[0], x.dtype) if db_out is None else db_out
            db[...] = partial.sum(axis=0)  # as column_sums: chunk 0, 1, ... (fixed order)
    elif has_bias:
        db = column_sums(dy, np.empty(w.shape[0], x.dtype) if db_out is None else db_out)
    dx = matmul(dy, w, dx_out) if need_dx else None      # (N, O) @ (O, I)
    dw = matmul(dy.T, x, dw_out)                         # (O, N) @ (N, I)
    return dx, dw, db
