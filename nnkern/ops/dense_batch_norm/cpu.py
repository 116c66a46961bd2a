"""Numba CPU kernels for Dense -> BatchNorm1D (-> ReLU): one jitted call each way.

Run as separate layers, an MLP's 64x100 hidden layer costs two or three Python steps and two
Numba dispatches each way, more than its arithmetic (~8 µs of GEMM). Fused, the output features
are cut into the dense kernels' blocks (``dense.cpu.gemm_parts``) and each block runs
everything for its features on one thread; batch norm 1-D needs nothing from other features:

    forward   z[:, O_p] = x @ w[O_p].T + b[O_p]     GEMM into block p of zb, bias on the way
              mean, inv_std, running statistics of O_p from the block's columns (rows in order)
              y[:, O_p] = (z - mean) * gamma * inv_std + beta, ReLU'd when relu
    backward  g = dy masked by the ReLU (recomputed from z); sums of g and g * (z - mean)
              dgamma, dbeta; dz = p * g + q * (z - mean) + r    into scratch
              db[O_p] = sum_n dz; dw[O_p] = dz.T @ x; dx = sum_p dz[:, O_p] @ w[O_p]

z, the batch norm's input, is kept for backward in the blocked layout the GEMMs write: block p
(features o0:o1) is ``zb[N * o0:N * o1]`` as an (N, o1 - o0) array (``z_from_blocks`` puts z
together). Each block is written and read on the same thread, in one piece; written into an
(N, O) array, every row of the two blocks meets inside a cache line, which then moves between
the cores on every row, in the forward's writes and in the backward's reads (64x100 -> 100:
forward 16.4 -> 14-15 µs, backward 23 -> 17-19 µs, measured inside the kernels).

Every value is computed as the unfused kernels compute it, in the same order: the dense
kernels' GEMM blocks and bias sums (``ROW_CHUNKS`` row chunks, merged in order), and the batch
norm's one-call small path (float64 sums over the rows in order, shifted by the first sample;
the same per-feature finish functions). The results are those of the layers run one by one up
to rounding: Numba compiles those finish functions per argument layout (here slices of the
blocks) and may reuse one compiled for another layout, and under fastmath their float64
coefficients can differ in the last bit between two compilations (seen in float64 outputs,
1 ulp); above PARALLEL_MIN_WORK elements the unfused batch norm also sums in chunks.
"""

import numpy as np
from numba import prange

from nnkern._jit import cpu_kernel
from nnkern.ops import _blas, _simd
from nnkern.ops._reduce import ROW_CHUNKS
from nnkern.ops.batch_norm.cpu import _bn_backward_finish, _bn_eval_finish, _bn_train_finish
from nnkern.ops.dense.cpu import _edge, _no_bias, _variant, gemm_parts

#: The kernels call BLAS from Numba (``ops/_blas.py``); without it Sequential runs the layers
#: one by one.
AVAILABLE = _blas.AVAILABLE


@cpu_kernel
def _forward_kernel(x, w, b, gamma, beta, running_mean, running_var, training, update, momentum,
                    eps, relu, zb, y, mean, inv_std, coef, parts):
    # x (N, I), w (O, I), b (O,) or (0,) for no bias -> zb (N * O,): z = x @ w.T + b in
    # `parts` blocks (see the module docstring); y (N, O) = batch_norm(z), then max(y, 0)
    # when relu (NaN kept); mean, inv_std (O,) in x's dtype; coef (3, O) float64 rows (mean,
    # gamma * inv_std, beta); running_* (O,) updated when update. Each block's sums go to
    # arrays of its own: two threads adding into neighbouring parts of one array share its
    # middle cache line, which then moves between the cores on every row (+5 µs at 64x100,
    # more than the sums themselves).
    n_, o_ = y.shape
    has_bias = b.shape[0] > 0
    zero = y.dtype.type(0)
    for p in prange(parts):
        o0, o1 = _edge(p, parts, o_), _edge(p + 1, parts, o_)
        width = o1 - o0
        block = zb[n_ * o0:n_ * o1].reshape((n_, width))
        _simd.gemm_nt(x, w[o0:o1], block)  # float32: register-blocked (ops/_simd.py)
        if has_bias:  # the dense forward's float32 sum
            b_block = b[o0:o1]
            for n in range(n_):
                block_run = block[n]
                for j in range(width):
                    block_run[j] += b_block[j]
        # the block's (mean, scale, beta) rows in an array of its own, copied into coef at the
        # end: read from coef, a cache line shared with the other block's columns may just
        # have moved to the other core (~1 µs at 64x100)
        block_coef = np.empty((3, width))
        if training:
            # float64 sums of d = z - shift and d^2 over the rows in order, shift = z[0] (see
            # batch_norm.cpu: the one-pass variance stays accurate when |mean| >> std)
            sums = np.zeros((2, width))
            shift = np.empty(width)
            s1, s2, first = sums[0], sums[1], block[0]
            for j in range(width):
                shift[j] = first[j]
            for n in range(n_):
                block_run = block[n]
                for j in range(width):
                    d = block_run[j] - shift[j]
                    s1[j] += d
                    s2[j] += d * d
            _bn_train_finish(sums[0:1], sums[1:2], shift, float(n_), momentum, eps, update,
                             running_mean[o0:o1], running_var[o0:o1], gamma[o0:o1],
                             beta[o0:o1], mean[o0:o1], inv_std[o0:o1], block_coef)
        else:
            _bn_eval_finish(running_mean[o0:o1], running_var[o0:o1], eps, gamma[o0:o1],
                            beta[o0:o1], mean[o0:o1], inv_std[o0:o1], block_coef)
        m, scale, shift_b = block_coef[0], block_coef[1], block_coef[2]
        for n in range(n_):  # y = (z - mean) * scale + beta, in float64 (see batch_norm.cpu)
            z_run, y_run = block[n], y[n, o0:o1]
            if relu:
                for j in range(width):
                    v = y.dtype.type((z_run[j] - m[j]) * scale[j] + shift_b[j])
                    y_run[j] = zero if v < zero else v
            else:
                for j in range(width):
                    y_run[j] = (z_run[j] - m[j]) * scale[j] + shift_b[j]
        coef[:, o0:o1] = block_coef


@cpu_kernel
def _backward_kernel(dy, x, w, zb, gamma, mean, inv_std, zcoef, training, relu, has_bias,
                     need_dx, dgamma, dbeta, db, dw, dx, partial, scratch, parts):
    # dy (N, O): the gradient of y (after the ReLU when relu); x (N, I), w (O, I); zb (N * O,):
    # z in the forward's blocks; gamma, mean, inv_std (O,); zcoef: the forward's coef (3, O) ->
    # dgamma, dbeta, db (O,) (db when has_bias); dw (O, I); dx (N, I) when need_dx, summed over
    # the blocks (block p > 0 into partial[p - 1]). scratch (N * O,): dz, the gradient of z,
    # block by block. Sums in arrays of each block's own (see _forward_kernel).
    n_, o_ = dy.shape
    i_ = x.shape[1]
    zero = dy.dtype.type(0)
    chunks = ROW_CHUNKS
    for p in prange(parts):
        o0, o1 = _edge(p, parts, o_), _edge(p + 1, parts, o_)
        width = o1 - o0
        z = zb[n_ * o0:n_ * o1].reshape((n_, width))
        dz = scratch[n_ * o0:n_ * o1].reshape((n_, width))
        # g = dy, zeroed where the forward's ReLU output was <= 0 (NaN passes, as
        # relu_backward); float64 sums of g and g * (z - mean), mean as stored (x's dtype)
        sums = np.zeros((2, width))
        s1, s2 = sums[0], sums[1]
        m = np.empty(width)
        mean_block = mean[o0:o1]
        for j in range(width):
            m[j] = mean_block[j]
        ym, ys, yb = zcoef[0, o0:o1], zcoef[1, o0:o1], zcoef[2, o0:o1]
        for n in range(n_):
            dy_run, z_run = dy[n, o0:o1], z[n]
            if relu:
                for j in range(width):
                    zv = z_run[j]
                    v = z.dtype.type((zv - ym[j]) * ys[j] + yb[j])
                    d = np.float64(zero if v <= zero else dy_run[j])
                    s1[j] += d
                    s2[j] += d * (zv - m[j])
            else:
                for j in range(width):
                    d = np.float64(dy_run[j])
                    s1[j] += d
                    s2[j] += d * (z_run[j] - m[j])
        bcoef = np.empty((3, width))
        _bn_backward_finish(sums[0:1], sums[1:2], gamma[o0:o1], inv_std[o0:o1], float(n_),
                            training, dgamma[o0:o1], dbeta[o0:o1], bcoef)
        bp, bq, br = bcoef[0], bcoef[1], bcoef[2]
        for n in range(n_):  # dz = p * g + q * (z - mean) + r
            dy_run, z_run, dz_run = dy[n, o0:o1], z[n], dz[n]
            if relu:
                for j in range(width):
                    zv = z_run[j]
                    v = z.dtype.type((zv - ym[j]) * ys[j] + yb[j])
                    g = zero if v <= zero else dy_run[j]
                    dz_run[j] = bp[j] * g + bq[j] * (zv - m[j]) + br[j]
            else:
                for j in range(width):
                    dz_run[j] = bp[j] * dy_run[j] + bq[j] * (z_run[j] - m[j]) + br[j]
        if has_bias:  # db = sum_n dz: float64 sums of ROW_CHUNKS row chunks, added in order
            total, part = s1, s2
            for j in range(width):
                total[j] = 0.0
            for k in range(chunks):
                for j in range(width):
                    part[j] = 0.0
                for r in range(k * n_ // chunks, (k + 1) * n_ // chunks):
                    dz_run = dz[r]
                    for j in range(width):
                        part[j] += dz_run[j]
                for j in range(width):
                    total[j] += part[j]
            db_block = db[o0:o1]
            for j in range(width):
                db_block[j] = total[j]
        _simd.gemm_tn(dz, x, dw[o0:o1])  # float32: register-blocked (ops/_simd.py)
        if need_dx:
            _blas.gemm(dz, False, w[o0:o1], False, dx if p == 0 else partial[p - 1], 0.0)
    if need_dx and parts > 1:
        for n in prange(n_):
            dx_run = dx[n]
            for q in range(parts - 1):
                p_run = partial[q, n]
                for i in range(i_):
                    dx_run[i] += p_run[i]


def forward(x, w, b, gamma, beta, running_mean, running_var, training, momentum, eps, relu):
    """z = x @ w.T + b, y = batch_norm(z) (ReLU'd when ``relu``). Returns (zb, y, mean,
    inv_std, coef): zb is z in blocks (see the module docstring and ``z_from_blocks``), coef
    the float64 (3, O) rows ``backward`` takes as zcoef. Arguments as the dense and batch-norm
    CPU kernels take them (validated by the layers; b may be None; running_* both None or both
    given, updated in place when ``training``); needs ``_blas.AVAILABLE``."""
    (n, i), o = x.shape, w.shape[0]
    zb = np.empty(n * o, x.dtype)
    y = np.empty((n, o), x.dtype)
    mean = np.empty(o, x.dtype)
    inv_std = np.empty(o, x.dtype)
    coef = np.empty((3, o), np.float64)
    update = running_mean is not None
    work = n * i * o
    with _blas.serial_blas():
        _variant(_forward_kernel, work)(
            x, w, _no_bias(x.dtype) if b is None else b, gamma, beta,
            running_mean if update else mean, running_var if update else inv_std, training,
            update and training, momentum, eps, relu, zb, y, mean, inv_std, coef,
            gemm_parts(work, o))
    return zb, y, mean, inv_std, coef


def z_from_blocks(zb, n, i, o):
    """z (N, O) from the blocks ``forward`` returned for an (N, I) x and O features."""
    parts = gemm_parts(n * i * o, o)
    z = np.empty((n, o), zb.dtype)
    for p in range(parts):
        o0, o1 = _edge.py_func(p, parts, o), _edge.py_func(p + 1, parts, o)
        z[:, o0:o1] = zb[n * o0:n * o1].reshape(n, o1 - o0)
    return z


def backward(dy, x, w, zb, gamma, mean, inv_std, zcoef, training, relu, *, has_bias=True,
             need_dx=True, out=None):
    """Gradients of ``forward`` (``training``: its batch statistics were used). dy: the
    gradient of y; zb, mean, inv_std, zcoef: what ``forward`` returned. ``out``: (dx, dw, db,
    dgamma, dbeta) buffers, entries may be None. Returns them, dx None when not ``need_dx``,
    db None without bias."""
    dx, dw, db, dgamma, dbeta = (None,) * 5 if out is None else out
    (n, i), o = x.shape, w.shape[0]
    dtype = x.dtype
    if need_dx and dx is None:
        dx = np.empty_like(x)
    dw = np.empty_like(w) if dw is None else dw
    if has_bias and db is None:
        db = np.empty(o, dtype)
    dgamma = np.empty(o, dtype) if dgamma is None else dgamma
    dbeta = np.empty(o, dtype) if dbeta is None else dbeta
    work = n * i * o
    parts = gemm_parts(work, o)
    with _blas.serial_blas():
        _variant(_backward_kernel, work)(
            dy, x, w, zb, gamma, mean, inv_std, zcoef, training, relu, has_bias, need_dx,
            dgamma, dbeta, db if has_bias else _no_bias(dtype), dw, dx if need_dx else dw,
            np.empty((parts - 1 if need_dx else 0, n, i), dtype), np.empty(n * o, dtype), parts)
    return (dx if need_dx else None), dw, (db if has_bias else None), dgamma, dbeta
