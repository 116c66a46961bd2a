"""Deterministic reductions shared by several ops (bias gradients, BN statistics).

Sums accumulate in float64 and split the rows into a fixed number of chunks, merged in a fixed
order, so the result is bit-identical whatever the thread count and whichever of the serial or
parallel variants runs (NUMBA_NOTES §1.3, §2.3).
"""

import numpy as np
from numba import prange

from nnkern._jit import cpu_kernel

ROW_CHUNKS = 16


@cpu_kernel
def _column_sums_kernel(a, partial):
    # a: (R, C) -> partial: (ROW_CHUNKS, C) float64, partial[k] = sum of a over the k-th row chunk
    rows, cols = a.shape
    chunks = partial.shape[0]
    for k in prange(chunks):
        for c in range(cols):
            partial[k, c] = 0.0
        for r in range(k * rows // chunks, (k + 1) * rows // chunks):
            for c in range(cols):
                partial[k, c] += a[r, c]


def column_sums(a, out):
    """out[c] = sum_r a[r, c] (float64 accumulation, deterministic); a: (R, C), out: (C,)."""
    partial = np.empty((ROW_CHUNKS, a.shape[1]), np.float64)
    _column_sums_kernel.for_size(a.size)(a, partial)
    out[...] = partial.sum(axis=0)  # fixed order: chunk 0, 1, ... (numpy's pairwise sum is fixed)
    return out


@cpu_kernel
def _channel_sums_kernel(a, out):
    # a: (N, C, L) -> out: (C,), out[c] = sum over n and l of a[n, c, l], accumulated in float64
    n_, c_, l_ = a.shape
    for c in prange(c_):
        acc = 0.0
        for n in range(n_):
            for l in range(l_):
                acc += a[n, c, l]
        out[c] = acc


def channel_sums(a, out):
    """out[c] = sum over (n, l) of a[n, c, l]; a: (N, C, L)."""
    _channel_sums_kernel.for_size(a.size)(a, out)
    return out
