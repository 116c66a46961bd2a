"""Numba CPU kernels for conv2d: im2col or Winograd transforms in Numba, GEMMs in BLAS.

A GEMM written in Numba reaches only ~30% of OpenBLAS on these machines (NUMBA_NOTES §1.1), so
the arithmetic goes to BLAS through ``np.matmul`` and Numba does the data movement, except for
the first layer's thin convs. Four paths:

* float32, 3x3, stride 1, dilation 1, padding <= 2, C and K >= 16 (every VGG layer but the
  first): Winograd F(4x4, 3x3) / F(2x2, 3x3), see winograd.py (4x / 2.25x fewer multiplies).
* float32, 3x3, stride 1, dilation 1, padding <= 2 (equal on both sides), C <= 3 (the first
  layer): a direct convolution in Numba, see direct.py. Forward and dw/db are register-blocked
  AVX-512 tiles over the output plane against shifted copies of the input; dx (a first layer
  never needs it) is the correlation of dy with the flipped filters through the general path.
  Measured (2 cores, N=64, 32x32, K=64, p1; `python -m nnkern bench --only conv`, torch 2.13
  NCHW in the same process): C=1 forward 0.56 ms (torch 1.09), backward without dx 0.68
  (1.46); C=3 forward 0.98 (1.42), backward 1.26 (1.87); im2col+GEMM took 1.54 / 2.02 (C=1)
  and 2.69 / 3.76 ms (C=3). The threshold (direct.MAX_CHANNELS = 3) covers the measured first
  layers; 4..15 channels were not measured and stay on the GEMM path.
* other float32 convs except 1x1 (strides; dilations; 4..15 channels): im2col and one GEMM per
  image, run as tasks over fixed image ranges on a few threads (below: "per-image GEMMs on
  tasks"), writing straight into the NCHW output.
* float64 (gradient checks: exact, the reference path) and 1x1 convs: the chunked im2col path
  described next.

The chunked im2col path:

* im2col copies, for a chunk of B images, every input pixel each kernel tap reads into a column
  matrix ``cols`` of shape (C*KH*KW, B, OH, OW): row (c, i, j) holds x̃[n, c, oh*sh + i*dh,
  ow*sw + j*dw] for all (n, oh, ow) of the chunk. The conv is then ONE GEMM per chunk,
      z (K, B*OH*OW) = w (K, C*KH*KW) @ cols (C*KH*KW, B*OH*OW),
  which BLAS runs faster than B small per-image GEMMs (measured on 2 cores, C=K=64, 32x32,
  3x3: 21 vs 23 ms forward, 20 vs 27 ms for dx's GEMM, per batch of 64); the price is one
  memory-bound pass unpacking z (K, B, L) into y (N, K, L), which also adds the bias.
* backward, per chunk: dy is packed the same way into dyt (K, B*OH*OW), then
      dw.T (C*KH*KW, K) += cols @ dyt.T        (reduction over n, oh, ow)
      dcols (C*KH*KW, B*OH*OW) = w.T @ dyt     (reusing the cols buffer)
  and dx is rebuilt from dcols by a gather-form col2im: one prange iteration per dx plane
  (n, c) sums every dcols entry that maps onto it, so no two iterations write the same element.
  db is a deterministic float64 per-channel sum (``_reduce.channel_sums``).
* a 1x1 kernel with stride 1 and no padding needs no im2col: y[n] = w @ x[n] and
  dx[n] = w.T @ dy[n] are batched GEMMs straight into NCHW arrays.

The batch runs in chunks of B images so that the column buffer stays near COL_BUFFER_BYTES
whatever N is (the im2col matrix is KH*KW times the input: 72 MiB for a 64x64x32x32 float32
batch with a 3x3 kernel). The chunking is fixed by the shapes, never by the thread count, so
results are reproducible.
"""

import numpy as np
from numba import prange

from nnkern._jit import cpu_inline, cpu_kernel
from nnkern.ops._parallel import run_tasks, scratch, single_threaded_blas
from nnkern.ops._reduce import channel_sums
from nnkern.ops.conv2d import direct, winograd
from nnkern.ops.conv2d._geometry import conv_geometry

#: Target size of the im2col column buffer of one batch chunk (at least one image per chunk).
COL_BUFFER_BYTES = 32 << 20


def chunk_size(g, itemsize):
    """Images per chunk: as many as fit their im2col columns into COL_BUFFER_BYTES (>= 1)."""
    per_image = g.C * g.KH * g.KW * g.OH * g.OW * itemsize
    return max(1, min(g.N, COL_BUFFER_BYTES // per_image))


@cpu_inline
def _valid_range(pad, offset, stride, size, out_size):
    # The outputs o in [lo, hi) whose input index o*stride + offset - pad lies in [0, size); the
    # others read zero padding.
    # (both clamped to [0, out_size]: with padding wider than the input a whole row can be zero)
    first = pad - offset                       # need o*stride >= first
    lo = 0 if first <= 0 else min(out_size, (first + stride - 1) // stride)
    last = size - 1 + pad - offset             # need o*stride <= last
    hi = 0 if last < 0 else min(out_size, last // stride + 1)
    return lo, max(lo, hi)


@cpu_kernel
def _im2col_kernel(x, n0, cols, KH, KW, sh, sw, pt, pl, dh, dw):
    # x: (N, C, H, W) -> cols: (C*KH*KW, B, OH, OW) for the images n0 .. n0+B-1:
    # cols[(c, i, j), b, oh, ow] = x[n0+b, c, oh*sh + i*dh - pt, ow*sw + j*dw - pl] (0 outside x)
    H, W = x.shape[2], x.shape[3]
    rows, B, OH, OW = cols.shape
    for r in prange(rows * B):                 # one (tap row, image) pair per iteration
        cij = r // B
        b = r - cij * B
        c = cij // (KH * KW)
        i = (cij // KW) % KH
        j = cij % KW
        off = j * dw - pl
        lo, hi = _valid_range(pl, j * dw, sw, W, OW)
        for oh in range(OH):
            ih = oh * sh + i * dh - pt
            if ih < 0 or ih >= H:
                for ow in range(OW):
                    cols[cij, b, oh, ow] = 0
                continue
            for ow in range(lo):
                cols[cij, b, oh, ow] = 0
            if sw == 1:                        # a contiguous copy LLVM vectorises
                for ow in range(lo, hi):
                    cols[cij, b, oh, ow] = x[n0 + b, c, ih, ow + off]
            else:
                for ow in range(lo, hi):
                    cols[cij, b, oh, ow] = x[n0 + b, c, ih, ow * sw + off]
            for ow in range(hi, OW):
                cols[cij, b, oh, ow] = 0


@cpu_kernel
def _col2im_kernel(cols, n0, dx, KH, KW, sh, sw, pt, pl, dh, dw):
    # cols: (C*KH*KW, B, OH, OW) -> dx: (N, C, H, W) for the images n0 .. n0+B-1, the adjoint
    # of im2col: dx[n0+b, c, h, w] = sum of cols[(c, i, j), b, oh, ow] over all (i, j, oh, ow)
    # with oh*sh + i*dh - pt == h and ow*sw + j*dw - pl == w.
    # Iteration (b, c) owns the whole dx plane (n0+b, c) and gathers into it the KH*KW rows of
    # cols that plane feeds, so no two iterations write the same element (no atomics, no races)
    # and each cols row is read once, sequentially, while the plane stays in L1.
    _, B, OH, OW = cols.shape
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    for r in prange(B * C):
        b = r // C
        c = r - b * C
        n = n0 + b
        for h in range(H):
            for w_ in range(W):
                dx[n, c, h, w_] = 0
        for i in range(KH):
            oh_lo, oh_hi = _valid_range(pt, i * dh, sh, H, OH)
            for j in range(KW):
                cij = (c * KH + i) * KW + j
                off = j * dw - pl
                lo, hi = _valid_range(pl, j * dw, sw, W, OW)
                for oh in range(oh_lo, oh_hi):
                    ih = oh * sh + i * dh - pt
                    if sw == 1:                # contiguous: vectorised
                        for ow in range(lo, hi):
                            dx[n, c, ih, ow + off] += cols[cij, b, oh, ow]
                    else:
                        for ow in range(lo, hi):
                            dx[n, c, ih, ow * sw + off] += cols[cij, b, oh, ow]


@cpu_kernel
def _unpack_kernel(z, b, n0, y):
    # z: (K, B, L) GEMM result of a chunk -> y: (N, K, L) rows n0 .. n0+B-1, with the bias fused:
    # y[n0+bb, k, l] = z[k, bb, l] + b[k]
    K, B, L = z.shape
    for r in prange(B * K):
        bb = r // K
        k = r - bb * K
        bias = b[k]
        for l in range(L):
            y[n0 + bb, k, l] = z[k, bb, l] + bias


@cpu_kernel
def _pack_kernel(dy, n0, dyt):
    # dy: (N, K, L) rows n0 .. n0+B-1 -> dyt: (K, B, L), dyt[k, b, l] = dy[n0+b, k, l]
    # (the chunk's output gradient as one (K, B*L) GEMM operand)
    K, B, L = dyt.shape
    for r in prange(K * B):
        k = r // B
        b = r - k * B
        for l in range(L):
            dyt[k, b, l] = dy[n0 + b, k, l]


@cpu_kernel
def _add_bias_kernel(y, b):
    # y: (N, K, L) += b: (K,) broadcast over n and l
    N, K, L = y.shape
    for r in prange(N * K):
        k = r % K
        bias = b[k]
        for l in range(L):
            y[r // K, k, l] += bias


def _im2col(x, n0, cols, g):
    _im2col_kernel.for_size(cols.size)(x, n0, cols, g.KH, g.KW, g.sh, g.sw, g.pt, g.pl,
                                      g.dh, g.dw)


def _buffers(g, dtype, batch):
    """Flat work buffers for one chunk: im2col columns and a (K, B, L) transposed output."""
    L = g.OH * g.OW
    return (np.empty(g.C * g.KH * g.KW * batch * L, dtype),
            np.empty(g.K * batch * L, dtype) if batch > 1 else None)


# ------------------------------------------------------------ float32: per-image GEMMs on tasks
# float32 convs that neither Winograd nor the direct path takes (strides, dilations, other
# kernel sizes, 4..15 channels) run as tasks over fixed ranges of images (ops/_parallel.py):
# each task unpacks its images with the serial im2col kernel into a per-thread buffer small
# enough to stay in L2, and multiplies image by image straight into the NCHW output,
#     y[n] (K, L) = [w | b] (K, CKK + 1) @ [cols_n ; 1] (CKK + 1, L)   (bias as a ones row),
# so there is no (K, B, L) -> (N, K, L) unpacking pass and no packing of dy. Backward per task:
#     dw partial (K, CKK) = sum over its images of dy[n] @ cols_n.T, tasks summed in order,
#     dcols_n = w.T @ dy[n] into the column buffer, then the serial gather-form col2im.

#: Target size of one task's column buffer: a few images, L2-resident.
TASK_COL_BYTES = 1 << 20


def task_images(g, itemsize):
    """Fixed image ranges of the per-image tasks (by shape only: thread-count independent)."""
    per_image = (g.C * g.KH * g.KW + 1) * g.OH * g.OW * itemsize
    B = max(1, min(g.N, TASK_COL_BYTES // per_image))
    tasks = -(-g.N // B)                     # as few tasks as fit, of balanced sizes
    return [(g.N * t // tasks, g.N * (t + 1) // tasks) for t in range(tasks)]


def _columns(x, g, n0, n1, extra):
    # im2col of images n0..n1-1 into this thread's buffer: (CKK + extra, nb, L)
    ckk, nb, L = g.C * g.KH * g.KW, n1 - n0, g.OH * g.OW
    cols = scratch("cols", (ckk + extra, nb, L), x.dtype)
    _im2col_kernel.serial(x, n0, cols[:ckk].reshape(ckk, nb, g.OH, g.OW), g.KH, g.KW, g.sh,
                          g.sw, g.pt, g.pl, g.dh, g.dw)
    return cols


def _forward_task(x, wb, y, g, n0, n1):
    # y[n0:n1] (nb, K, L) = wb (K, CKK + 1) @ [cols; 1] per image
    cols = _columns(x, g, n0, n1, 1)
    cols[-1] = 1
    np.matmul(wb, cols.transpose(1, 0, 2), out=y[n0:n1])


def _backward_task(dy, x, wm, g, need_dx, dx, parts, t, n0, n1):
    # parts[t] (K, CKK) = sum_n dy[n] @ cols_n.T; dx[n0:n1] by col2im of w.T @ dy[n]
    cols = _columns(x, g, n0, n1, 0)
    ct = cols.transpose(1, 0, 2)                               # (nb, CKK, L)
    np.sum(np.matmul(dy[n0:n1], cols.transpose(1, 2, 0)), axis=0, out=parts[t])
    if need_dx:
        np.matmul(wm.T, dy[n0:n1], out=ct)                     # dcols, into the same buffer
        _col2im_kernel.serial(cols.reshape(cols.shape[0], n1 - n0, g.OH, g.OW), n0, dx, g.KH,
                              g.KW, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw)


def _forward_tasks(x, w, b, g, y):
    K = g.K
    wb = np.empty((K, g.C * g.KH * g.KW + 1), x.dtype)
    wb[:, :-1] = w.reshape(K, -1)
    wb[:, -1] = 0 if b is None else b
    yv = y.reshape(g.N, K, g.OH * g.OW)
    with single_threaded_blas():
        run_tasks([(_forward_task, x, wb, yv, g, n0, n1) for n0, n1 in task_images(g, x.itemsize)])
    return y


def _backward_tasks(dy, x, w, g, need_dx, dx, dw):
    K, L = g.K, g.OH * g.OW
    wm = w.reshape(K, -1)
    tasks = task_images(g, x.itemsize)
    parts = np.empty((len(tasks), K, wm.shape[1]), x.dtype)
    dyv = dy.reshape(g.N, K, L)
    with single_threaded_blas():
        run_tasks([(_backward_task, dyv, x, wm, g, need_dx, dx, parts, t, n0, n1)
                   for t, (n0, n1) in enumerate(tasks)])
    np.sum(parts, axis=0, out=dw.reshape(K, -1))               # fixed order over tasks
    return dx, dw


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, *, out=None):
    g = conv_geometry("conv2d_forward", x.shape, w.shape, stride, padding, dilation)
    N, K, L = g.N, g.K, g.OH * g.OW
    y = np.empty((N, K, g.OH, g.OW), x.dtype) if out is None else out
    yv = y.reshape(N, K, L)
    if winograd.applicable(g, x.dtype):
        return winograd.forward(x, w, b, g, y)
    if direct.applicable(g, x.dtype):
        return direct.forward(x, w, b, g, y)
    if x.dtype == np.float32 and not g.pointwise:
        return _forward_tasks(x, w, b, g, y)
    wm = w.reshape(K, -1)                                   # (K, C*KH*KW)
    if g.pointwise:
        np.matmul(wm, x.reshape(N, g.C, L), out=yv)         # y[n] = w (K, C) @ x[n] (C, HW)
        if b is not None:
            _add_bias_kernel.for_size(y.size)(yv, b)
        return y
    ckk = wm.shape[1]
    B = chunk_size(g, x.itemsize)
    colbuf, zbuf = _buffers(g, x.dtype, B)
    bias = b if b is not None else np.zeros(K, x.dtype)
    for n0 in range(0, N, B):
        nb = min(B, N - n0)
        cols = colbuf[:ckk * nb * L].reshape(ckk, nb, g.OH, g.OW)
        _im2col(x, n0, cols, g)
        cols2 = cols.reshape(ckk, nb * L)
        if B == 1:                                          # z is y[n0] itself: no unpacking
            np.matmul(wm, cols2, out=yv[n0])
        else:
            z = zbuf[:K * nb * L].reshape(K, nb * L)
            np.matmul(wm, cols2, out=z)                     # z (K, B*L) = w @ cols
            _unpack_kernel.for_size(z.size)(z.reshape(K, nb, L), bias, n0, yv)
    if B == 1 and b is not None:
        _add_bias_kernel.for_size(y.size)(yv, b)
    return y


def conv2d_backward(dy, x, w, stride=1, padding=0, dilation=1, *, has_bias=True, need_dx=True,
                    out=None):
    g = conv_geometry("conv2d_backward", x.shape, w.shape, stride, padding, dilation)
    dx_out, dw_out, db_out = (None, None, None) if out is None else out
    N, K, L = g.N, g.K, g.OH * g.OW
    dyv = dy.reshape(N, K, L)
    wm = w.reshape(K, -1)                                   # (K, C*KH*KW)
    ckk = wm.shape[1]

    if direct.applicable(g, x.dtype):                       # dw and db in one pass over dy
        dx = None
        if need_dx:  # the correlation of dy with the flipped filters w[k, c, 2-i, 2-j] as (C, K)
            wf = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
            dx = conv2d_forward(dy, wf, None, 1, (2 - g.pt, 2 - g.pl), 1, out=dx_out)
        dw = np.empty_like(w) if dw_out is None else dw_out
        db = (np.empty(K, x.dtype) if db_out is None else db_out) if has_bias else None
        direct.backward(dy, x, g, dw, db)
        return dx, dw, db

    db = None
    if has_bias:
        db = channel_sums(dyv, np.empty(K, x.dtype) if db_out is None else db_out)
    dw = np.empty_like(w) if dw_out is None else dw_out
    if winograd.applicable(g, x.dtype):
        dx = (np.empty_like(x) if dx_out is None else dx_out) if need_dx else None
        winograd.backward(dy, x, w, g, dx, dw)
        return dx, dw, db
    if x.dtype == np.float32 and not g.pointwise:
        dx = (np.empty_like(x) if dx_out is None else dx_out) if need_dx else None
        _backward_tasks(dy, x, w, g, need_dx, dx, dw)
        return dx, dw, db
    dwm = dw.reshape(K, ckk)
    dx = None
    if need_dx:
        dx = np.empty_like(x) if dx_out is None else dx_out
        if g.pointwise:                                     # dx[n] = w.T (C, K) @ dy[n] (K, HW)
            np.matmul(wm.T, dyv, out=dx.reshape(N, g.C, L))

    B = chunk_size(g, x.itemsize)
    colbuf, dytbuf = _buffers(g, x.dtype, B)
    # dw is accumulated transposed, dw.T (C*KH*KW, K) = sum over chunks of cols @ dyt.T: BLAS
    # runs this (NN) form ~25% faster than dyt @ cols.T (NT) for these shapes.
    dwt = np.empty((ckk, K), x.dtype)
    dwt_part = np.empty_like(dwt) if B < N else None
    for n0 in range(0, N, B):
        nb = min(B, N - n0)
        if B == 1:
            dyt = dyv[n0]                                   # (K, L): already the GEMM operand
        else:
            dyt = dytbuf[:K * nb * L].reshape(K, nb, L)
            _pack_kernel.for_size(dyt.size)(dyv, n0, dyt)
            dyt = dyt.reshape(K, nb * L)
        cols = colbuf[:ckk * nb * L].reshape(ckk, nb, g.OH, g.OW)
        _im2col(x, n0, cols, g)
        cols2 = cols.reshape(ckk, nb * L)
        if n0 == 0:
            np.matmul(cols2, dyt.T, out=dwt)
        else:
            np.matmul(cols2, dyt.T, out=dwt_part)
            dwt += dwt_part
        if need_dx and not g.pointwise:
            np.matmul(wm.T, dyt, out=cols2)                 # dcols = w.T @ dyt, into cols
            _col2im_kernel.for_size(cols.size)(cols, n0, dx, g.KH, g.KW, g.sh, g.sw, g.pt, g.pl,
                                               g.dh, g.dw)
    dwm[...] = dwt.T
    return dx, dw, db
