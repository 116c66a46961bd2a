"""CUDA kernels for dense: y = x @ w.T + b and its gradients, on the tiled GEMM core.

* forward: one GEMM launch, y (N, O) = x (N, I) @ w.T with w read transposed in place (no copy)
  and the bias added in the GEMM's epilogue;
* backward: dx (N, I) = dy (N, O) @ w (O, I) and dw (O, I) = dy.T @ x are GEMMs reading dy
  transposed in place (split over the batch when the (O, I) tiles alone are too few, combined
  in a fixed order); db = the column sums of dy, a deterministic two-level reduction
  (per-block partials over fixed row chunks, then a fixed-order combine; no atomics).
"""

from numba import cuda

from nnkern.ops._cuda import device_array, empty, grid_1d, kernel
from nnkern.ops._gemm_cuda import cdiv, gemm

COLSUM_X = 32            #: columns per column-sum block (threadIdx.x, coalesced along a row)
COLSUM_Y = 8             #: row lanes per column-sum block (threadIdx.y), tree-combined
COLSUM_ROWS = 2048       #: rows per partial of the column sums (fixed: shape-only chunking)


@kernel
def _column_sums_kernel(a, rows_per_chunk, part):
    # a: (R, C) -> part: (S, C), part[s, c] = sum of a[r, c] over the rows r of chunk s
    # ([s*rows_per_chunk, (s+1)*rows_per_chunk)). Block (32 columns) x (8 row lanes): lane ty
    # sums rows ty, ty+8, ... of the chunk, then the 8 lane sums are added pairwise in shared
    # memory (a fixed tree: deterministic).
    lane = cuda.shared.array((COLSUM_Y, COLSUM_X), a.dtype)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    c = cuda.blockIdx.x * COLSUM_X + tx
    s = cuda.blockIdx.y
    R, C = a.shape
    acc = a.dtype.type(0)
    if c < C:
        for r in range(s * rows_per_chunk + ty, min(R, (s + 1) * rows_per_chunk), COLSUM_Y):
            acc += a[r, c]
    lane[ty, tx] = acc
    # every lane's sum is in shared memory before the tree reads it
    cuda.syncthreads()
    half = COLSUM_Y // 2
    while half > 0:
        if ty < half:
            lane[ty, tx] += lane[ty + half, tx]
        # this level's sums are written before the next level reads them
        cuda.syncthreads()
        half //= 2
    if ty == 0 and c < C:
        part[s, c] = lane[0, tx]


@kernel
def _combine_rows_kernel(part, out):
    # part: (S, C) -> out: (C,), out[c] = part[0, c] + part[1, c] + ... (fixed order)
    S, C = part.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for c in range(start, C, step):
        acc = part[0, c]
        for s in range(1, S):
            acc += part[s, c]
        out[c] = acc


def column_sums(a, out):
    """out[c] = sum_r a[r, c] for a device matrix a (R, C); deterministic; returns out."""
    R, C = a.shape
    S = cdiv(R, COLSUM_ROWS)
    part = out.reshape(1, C) if S == 1 else empty((S, C), a.dtype)
    _column_sums_kernel[(cdiv(C, COLSUM_X), S), (COLSUM_X, COLSUM_Y)](a, COLSUM_ROWS, part)
    if S > 1:
        _combine_rows_kernel[grid_1d(C)](part, out)
    return out


def dense_forward(x, w, b=None, *, out=None):
    x, w, b, out = (device_array(a) for a in (x, w, b, out))
    y = empty((x.shape[0], w.shape[0]), x.dtype) if out is None else out
    gemm(x, w, y, trans_b=True, bias=b, bias_on="cols")    # y (N, O) = x (N, I) @ w.T + b
    return y


def dense_backward(dy, x, w, *, has_bias=True, need_dx=True, out=None):
    dy, x, w = (device_array(a) for a in (dy, x, w))
    dx_out, dw_out, db_out = (None, None, None) if out is None else (device_array(a) for a in out)
    dx = None
    if need_dx:                                             # dx (N, I) = dy (N, O) @ w (O, I)
        dx = gemm(dy, w, empty(x.shape, x.dtype) if dx_out is None else dx_out)
    # dw (O, I) = dy.T @ x: dy (N, O) is op(A).T stored as is
    dw = gemm(dy, x, empty(w.shape, x.dtype) if dw_out is None else dw_out, trans_a=True)
    db = None
    if has_bias:
        db = column_sums(dy, empty((w.shape[0],), x.dtype) if db_out is None else db_out)
    return dx, dw, db
