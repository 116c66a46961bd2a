"""Numba CPU kernels for dense.

The matrix products go to BLAS through ``np.matmul`` (NumPy's OpenBLAS): a GEMM written in Numba
reaches only ~30% of it on these machines (NUMBA_NOTES §1.1). Numba does the rest: the bias add
and the bias gradient, in float64 with a fixed reduction order.
"""

import numpy as np
from numba import prange

from nnkern._jit import cpu_kernel
from nnkern.ops._reduce import column_sums


@cpu_kernel
def _add_bias_kernel(y, b):
    # y: (N, O) += b: (O,) broadcast over rows
    n_, o_ = y.shape
    for n in prange(n_):
        for o in range(o_):
            y[n, o] += b[o]


def dense_forward(x, w, b=None, *, out=None):
    y = np.empty((x.shape[0], w.shape[0]), x.dtype) if out is None else out
    np.matmul(x, w.T, out=y)  # BLAS sgemm/dgemm with w transposed in place (no copy)
    if b is not None:
        _add_bias_kernel.for_size(y.size)(y, b)
    return y


def dense_backward(dy, x, w, *, has_bias=True, need_dx=True, out=None):
    dx_out, dw_out, db_out = (None, None, None) if out is None else out
    dx = np.matmul(dy, w, out=dx_out) if need_dx else None      # (N, O) @ (O, I)
    dw = np.matmul(dy.T, x, out=dw_out)                         # (O, N) @ (N, I)
    db = None
    if has_bias:
        db = column_sums(dy, np.empty(w.shape[0], x.dtype) if db_out is None else db_out)
    return dx, dw, db
