"""CUDA kernels for conv2d: implicit GEMM on the tiled GEMM core (nnkern/ops/_gemm_cuda.py).

With L = OH*OW and the im2col matrix X̃ (C*KH*KW, N*L), X̃[(c, i, j), (n, oh, ow)] =
x[n, c, oh*sh + i*dh - pt, ow*sw + j*dw - pl] (0 in the padding), the convolution and its
gradients are three GEMMs (NUMBA_NOTES §2.1: implicit GEMM, as cuDNN's IMPLICIT_GEMM):

    forward  y (K, N*L)          = w (K, C*KH*KW) @ X̃                 (+ b[k], epilogue)
    weights  dw (K, C*KH*KW)     = dy (K, N*L) @ X̃.T                  (reduction over N*L)
    input    dx (C, N*H*W)       = w' (C, K*KH*KW) @ dY' (K*KH*KW, N*H*W)   (stride 1)

X̃ is never stored: the tile loaders compute each element's address from a small per-geometry
table of the (c, i, j) offsets (uploaded once and cached), so no KH*KW-fold column buffer hits
device memory. dy (N, K, L) and y (N, K, L) are read and written in place as the K x (N*L)
matrices they are (the GEMM core's 3-D operand views). For dx with stride 1, w'[c, (k, i, j)] =
w[k, c, i, j] and dY'[(k, i, j), (n, h, w)] = dy[n, k, h + pt - i*dh, w + pl - j*dw] (0 outside
dy): the transposed convolution as a gather, one output element per accumulator, no atomics.
With a stride > 1 most of dY' would be zeros (3/4 of the products for stride 2), so dx goes
through columns instead: dcols (C*KH*KW, B*L) = w.T @ dy for a chunk of B images (a plain GEMM
into a workspace bounded by COL_BUFFER_BYTES, reused across chunks), then a gather-form col2im,
one thread per dx element summing the columns that touch it.

A 1x1 kernel with stride 1 and no padding is a plain GEMM on the 3-D views, no index tables:
y = w (K, C) @ x (C, N*HW), dx = w.T @ dy, dw = dy @ x.T.

db[k] (sum of dy over n, oh, ow) is a deterministic two-level reduction: per-block partials over
fixed chunks of the N*L positions (a shared-memory tree), then a fixed-order combine. The
weight gradient's reduction over N*L is split into chunks when the (K, C*KH*KW) tiles are too few
for the GPU; the chunk partials are combined in a fixed order too (no atomics anywhere).
"""

import functools

import numpy as np
from numba import cuda

from nnkern.ops import _gemm_cuda as G
from nnkern.ops._cuda import device_array, device_function, empty, grid_1d, kernel
from nnkern.ops._gemm_cuda import (
    BIAS_ROWS,
    BK,
    NO_BIAS,
    fetch_kwide,
    fetch_rows,
    gemm,
    mma_tile,
    stash_krows,
    stash_kwide,
    store_tile,
    u64,
    udiv,
    zero_tile,
)
from nnkern.ops.conv2d._geometry import conv_geometry

#: Target size of the column workspace of the strided input gradient (at least one image).
COL_BUFFER_BYTES = 32 << 20
CHANNEL_THREADS = 128    #: threads per block of the per-channel sums
CHANNEL_CHUNK = 4096     #: positions (n, oh, ow) per partial of the per-channel sums


# ---------------------------------------------------------------------------------------------
# Tile loaders that compute im2col addresses on the fly
# ---------------------------------------------------------------------------------------------

@device_function
def fetch_im2col(x, tab, regs, xbase, ih0, iw0, valid, k0, step, K, H, W):
    # x: flat (N*C*H*W,) input. tab: (3, C*KH*KW) ints, per im2col row r = (c, i, j):
    #   tab[0, r] = c*H*W + i*dh*W + j*dw,  tab[1, r] = i*dh,  tab[2, r] = j*dw.
    # This thread's fixed im2col column (n, oh, ow): ih0 = oh*sh - pt, iw0 = ow*sw - pl,
    # xbase = n*C*H*W + ih0*W + iw0, valid False past the last column.
    # regs[t] <- X̃[r, column] = x[n, c, ih0 + i*dh, iw0 + j*dw] for r = k0 + step t
    # (0 in the padding and for r >= K).
    zero = x.dtype.type(0)
    for t in range(regs.shape[0]):
        r = k0 + step * t
        val = zero
        if valid and r < K:
            ih = ih0 + tab[1, u64(r)]
            iw = iw0 + tab[2, u64(r)]
            if ih >= 0 and ih < H and iw >= 0 and iw < W:
                val = x[u64(xbase + tab[0, u64(r)])]
        regs[t] = val


@device_function
def fetch_im2col_rows(x, tab, regs, r0, nrows, xbase, ih0, iw0, valid, H, W):
    # The same elements for the weight gradient, where the column (n, oh, ow) is this thread's
    # reduction index (xbase, ih0, iw0, valid as above): regs[t] <- X̃[r0 + 16 t, column],
    # 0 for rows past nrows = C*KH*KW.
    zero = x.dtype.type(0)
    for t in range(regs.shape[0]):
        r = r0 + 16 * t
        val = zero
        if valid and r < nrows:
            ih = ih0 + tab[1, u64(r)]
            iw = iw0 + tab[2, u64(r)]
            if ih >= 0 and ih < H and iw >= 0 and iw < W:
                val = x[u64(xbase + tab[0, u64(r)])]
        regs[t] = val


@device_function
def fetch_dy_shifted(dy, tab, regs, dybase, hp, wp, valid, k0, step, K, OH, OW):
    # dy: flat (N*K*OH*OW,). tab: (4, K*KH*KW) ints, per row r = (k, i, j) of dY':
    #   tab[1, r] = k*OH*OW - i*dh*OW - j*dw,  tab[2, r] = i*dh,  tab[3, r] = j*dw.
    # This thread's fixed dx column (n, h, w): hp = h + pt, wp = w + pl,
    # dybase = n*K*OH*OW + hp*OW + wp. regs[t] <- dy[n, k, hp - i*dh, wp - j*dw] for
    # r = k0 + step t (stride 1; 0 outside dy and for r >= K).
    zero = dy.dtype.type(0)
    for t in range(regs.shape[0]):
        r = k0 + step * t
        val = zero
        if valid and r < K:
            oh = hp - tab[2, u64(r)]
            ow = wp - tab[3, u64(r)]
            if oh >= 0 and oh < OH and ow >= 0 and ow < OW:
                val = dy[u64(dybase + tab[1, u64(r)])]
        regs[t] = val


@device_function
def fetch_w_transposed(w, tab, regs, r0, nrows, k, K, khkw):
    # w: flat (K*C*KH*KW,). Element (c, r) of w' = w[k, c, i, j] for r = (k, i, j) sits at
    # tab[0, r] + c*KH*KW (tab[0, r] = k*C*KH*KW + i*KW + j). This thread's reduction index is
    # r = k; regs[t] <- w'[r0 + 16 t, k], 0 for c >= nrows = C or k >= K.
    zero = w.dtype.type(0)
    base = tab[0, u64(k)] if k < K else 0
    for t in range(regs.shape[0]):
        c = r0 + 16 * t
        if k < K and c < nrows:
            regs[t] = w[u64(base + c * khkw)]
        else:
            regs[t] = zero


# ---------------------------------------------------------------------------------------------
# The three implicit-GEMM kernels, one set per tile shape (see _gemm_cuda's module doc)
# ---------------------------------------------------------------------------------------------

def _make_conv_kernels(cfg):
    BM, BN, TM, TN, SA, SB = cfg.BM, cfg.BN, cfg.TM, cfg.TN, cfg.SA, cfg.SB
    B_STEP = cfg.B_STEP

    def fwd(x, w, y, part, bias, tab, M, N, K, L, OW, H, W, sh, sw, pt, pl, CHW, bias_mode,
            partial, kchunk):
        # x: flat (N*C*H*W,), w: (1, K, C*KH*KW) -> y: flat (N*K*L,) as (N, K, L), + bias (K,)
        # GEMM: M = K output channels, N = N*L output positions, K = C*KH*KW;
        # A = w (k along its rows: k-wide), B = X̃ gathered (this thread's column fixed: k-rows)
        As = cuda.shared.array((2, BK, SA), w.dtype)
        Bs = cuda.shared.array((2, BK, SB), w.dtype)
        acc = cuda.local.array((TM, TN), w.dtype)
        fa = cuda.local.array(TM, w.dtype)
        fb = cuda.local.array(TN, w.dtype)
        ra = cuda.local.array(TM, w.dtype)
        rb = cuda.local.array(TN, w.dtype)
        tid = cuda.threadIdx.x
        tx = tid % 16
        ty = tid // 16
        m0 = cuda.blockIdx.y * BM
        n0 = cuda.blockIdx.x * BN
        kbeg = cuda.blockIdx.z * kchunk
        kend = min(K, kbeg + kchunk)
        ntiles = (kend - kbeg + BK - 1) // BK
        # this thread's im2col column (n, oh, ow) for the whole reduction
        nn = tid % BN
        bkr = tid // BN
        col = n0 + nn
        img = udiv(col, L)
        l = col - img * L
        oh = udiv(l, OW)
        ih0 = oh * sh - pt
        iw0 = (l - oh * OW) * sw - pl
        xbase = img * CHW + ih0 * W + iw0
        zero_tile(acc)
        for t in range(-1, ntiles):
            if t + 1 < ntiles:
                k0 = kbeg + (t + 1) * BK
                fetch_kwide(w, ra, m0 + ty, M, k0 + tx, kend)
                fetch_im2col(x, tab, rb, xbase, ih0, iw0, col < N, k0 + bkr, B_STEP, kend, H, W)
            if t >= 0:
                mma_tile(As, Bs, t % 2, acc, fa, fb, tx, ty)
            if t + 1 < ntiles:
                stash_kwide(As, (t + 1) % 2, ra, tx, ty)
                stash_krows(Bs, (t + 1) % 2, rb, bkr, B_STEP, nn)
            # stage (t+1)%2 is filled and every thread is done reading stage t%2
            cuda.syncthreads()
        store_tile(y, part, bias, acc, m0, n0, tx, ty, M, N, L, w.dtype.type(1), bias_mode,
                   partial)

    def wgrad(dy, x, dw, part, bias, tab, M, N, K, L, OW, H, W, sh, sw, pt, pl, CHW, bias_mode,
              partial, kchunk):
        # dy: (N, K, L), x: flat (N*C*H*W,) -> dw: flat (K*C*KH*KW,)
        # GEMM: M = K, N = C*KH*KW, K = N*L output positions (the reduction);
        # A = dy and B = X̃.T both have the reduction index along their contiguous axis (k-wide)
        As = cuda.shared.array((2, BK, SA), x.dtype)
        Bs = cuda.shared.array((2, BK, SB), x.dtype)
        acc = cuda.local.array((TM, TN), x.dtype)
        fa = cuda.local.array(TM, x.dtype)
        fb = cuda.local.array(TN, x.dtype)
        ra = cuda.local.array(TM, x.dtype)
        rb = cuda.local.array(TN, x.dtype)
        tid = cuda.threadIdx.x
        tx = tid % 16
        ty = tid // 16
        m0 = cuda.blockIdx.y * BM
        n0 = cuda.blockIdx.x * BN
        kbeg = cuda.blockIdx.z * kchunk
        kend = min(K, kbeg + kchunk)
        ntiles = (kend - kbeg + BK - 1) // BK
        zero_tile(acc)
        for t in range(-1, ntiles):
            if t + 1 < ntiles:
                # this thread's position (n, oh, ow) in this tile: column k of dy and of X̃
                k = kbeg + (t + 1) * BK + tx
                img = udiv(k, L)
                l = k - img * L
                oh = udiv(l, OW)
                ih0 = oh * sh - pt
                iw0 = (l - oh * OW) * sw - pl
                fetch_rows(dy, ra, img, l, m0 + ty, M, k < kend)
                fetch_im2col_rows(x, tab, rb, n0 + ty, N, img * CHW + ih0 * W + iw0, ih0, iw0,
                                  k < kend, H, W)
            if t >= 0:
                mma_tile(As, Bs, t % 2, acc, fa, fb, tx, ty)
            if t + 1 < ntiles:
                stash_kwide(As, (t + 1) % 2, ra, tx, ty)
                stash_kwide(Bs, (t + 1) % 2, rb, tx, ty)
            # stage (t+1)%2 is filled and every thread is done reading stage t%2
            cuda.syncthreads()
        store_tile(dw, part, bias, acc, m0, n0, tx, ty, M, N, N, x.dtype.type(1), bias_mode,
                   partial)

    def dgrad(w, dy, dx, part, bias, tab, M, N, K, HW, W, OH, OW, pt, pl, KL, KHKW, bias_mode,
              partial, kchunk):
        # w: flat (K*C*KH*KW,), dy: flat (N*K*OH*OW,) -> dx: flat (N*C*H*W,) as (N, C, H*W);
        # stride 1 only. GEMM: M = C, N = N*H*W, K = K*KH*KW;
        # A = w' (gathered from w, k-wide), B = dY' (this thread's dx column fixed: k-rows)
        As = cuda.shared.array((2, BK, SA), w.dtype)
        Bs = cuda.shared.array((2, BK, SB), w.dtype)
        acc = cuda.local.array((TM, TN), w.dtype)
        fa = cuda.local.array(TM, w.dtype)
        fb = cuda.local.array(TN, w.dtype)
        ra = cuda.local.array(TM, w.dtype)
        rb = cuda.local.array(TN, w.dtype)
        tid = cuda.threadIdx.x
        tx = tid % 16
        ty = tid // 16
        m0 = cuda.blockIdx.y * BM
        n0 = cuda.blockIdx.x * BN
        kbeg = cuda.blockIdx.z * kchunk
        kend = min(K, kbeg + kchunk)
        ntiles = (kend - kbeg + BK - 1) // BK
        # this thread's dx column (n, h, w) for the whole reduction
        nn = tid % BN
        bkr = tid // BN
        col = n0 + nn
        img = udiv(col, HW)
        hw = col - img * HW
        h = udiv(hw, W)
        hp = h + pt
        wp = hw - h * W + pl
        dybase = img * KL + hp * OW + wp
        zero_tile(acc)
        for t in range(-1, ntiles):
            if t + 1 < ntiles:
                k0 = kbeg + (t + 1) * BK
                fetch_w_transposed(w, tab, ra, m0 + ty, M, k0 + tx, kend, KHKW)
                fetch_dy_shifted(dy, tab, rb, dybase, hp, wp, col < N, k0 + bkr, B_STEP, kend,
                                 OH, OW)
            if t >= 0:
                mma_tile(As, Bs, t % 2, acc, fa, fb, tx, ty)
            if t + 1 < ntiles:
                stash_kwide(As, (t + 1) % 2, ra, tx, ty)
                stash_krows(Bs, (t + 1) % 2, rb, bkr, B_STEP, nn)
            # stage (t+1)%2 is filled and every thread is done reading stage t%2
            cuda.syncthreads()
        store_tile(dx, part, bias, acc, m0, n0, tx, ty, M, N, HW, w.dtype.type(1), bias_mode,
                   partial)

    kernels = {}
    for fn in (fwd, wgrad, dgrad):
        fn.__name__ = fn.__qualname__ = f"_conv_{fn.__name__}_kernel_{cfg.name}"
        # a module-level name per kernel: the compile-only test finds kernels by qualname
        kernels[fn.__name__.split("_")[2]] = globals()[fn.__name__] = kernel(fn)
    return kernels


_KERNELS = {cfg.name: _make_conv_kernels(cfg) for cfg in G.TILES.values()}


# ---------------------------------------------------------------------------------------------
# Input gradient through columns (stride > 1), and the bias gradient
# ---------------------------------------------------------------------------------------------

@kernel
def _col2im_kernel(cols, n0, dx, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw):
    # cols: (B, C*KH*KW, OH*OW) -> dx: (N, C, H, W), images n0 .. n0+B-1, the adjoint of im2col
    # in gather form: one thread per dx element, summing in a fixed tap order the columns that
    # read it: dx[n0+b, c, h, w] = sum of cols[b, (c, i, j), oh*OW + ow] over (i, j) with
    # oh*sh = h + pt - i*dh and ow*sw = w + pl - j*dw (exact multiples, inside the output).
    B = cols.shape[0]
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    zero = dx.dtype.type(0)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, B * C * H * W, step):
        x_ = e % W
        r = e // W
        h = r % H
        r //= H
        c = r % C
        b = r // C
        acc = zero
        for i in range(KH):
            th = h + pt - i * dh
            if th >= 0 and th % sh == 0 and th // sh < OH:
                for j in range(KW):
                    tw = x_ + pl - j * dw
                    if tw >= 0 and tw % sw == 0 and tw // sw < OW:
                        acc += cols[b, (c * KH + i) * KW + j, (th // sh) * OW + tw // sw]
        dx[n0 + b, c, h, x_] = acc


@kernel
def _channel_sums_kernel(a, chunk, part):
    # a: (N, K, L) -> part: (S, K), part[s, k] = sum of a[n, k, l] over the flat positions
    # n*L + l in [s*chunk, (s+1)*chunk). Block (k, s) of CHANNEL_THREADS threads: thread tid
    # sums positions tid, tid + CHANNEL_THREADS, ... (consecutive threads read consecutive l),
    # then a fixed shared-memory tree adds the thread sums (deterministic, no atomics).
    sums = cuda.shared.array(CHANNEL_THREADS, a.dtype)
    N, K, L = a.shape
    k = cuda.blockIdx.x
    s = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    i = s * chunk + tid
    end = min(N * L, (s + 1) * chunk)
    n = i // L
    l = i - n * L
    dn = CHANNEL_THREADS // L           # the stride CHANNEL_THREADS as a step in (n, l)
    dl = CHANNEL_THREADS - dn * L
    acc = a.dtype.type(0)
    while i < end:
        acc += a[n, k, l]
        i += CHANNEL_THREADS
        n += dn
        l += dl
        if l >= L:
            l -= L
            n += 1
    sums[tid] = acc
    # every thread's sum is in shared memory before the tree reads it
    cuda.syncthreads()
    half = CHANNEL_THREADS // 2
    while half > 0:
        if tid < half:
            sums[tid] += sums[tid + half]
        # this level's sums are written before the next level reads them
        cuda.syncthreads()
        half //= 2
    if tid == 0:
        part[s, k] = sums[0]


def channel_sums(a, out):
    """out[k] = sum over n, l of a[n, k, l] for a device array a (N, K, L); deterministic."""
    N, K, L = a.shape
    S = G.cdiv(N * L, CHANNEL_CHUNK)
    part = out.reshape(1, K) if S == 1 else G.workspace("channel-sums", S * K, a.dtype)
    _channel_sums_kernel[(K, S), CHANNEL_THREADS](a, CHANNEL_CHUNK, part.reshape(S, K))
    if S > 1:
        dtype = np.dtype(a.dtype)
        G.combine_splits(part.reshape(S, 1, K), out.reshape(1, 1, K), G.dummy(dtype, 1),
                         dtype.type(1), dtype.type(0), NO_BIAS)
    return out


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------

def _to_device_table(tab):
    """An int32 device copy of an index table (int64 only if some offset needs it)."""
    return cuda.to_device(tab.astype(np.int32 if np.abs(tab).max() < 2 ** 31 else np.int64))


@functools.lru_cache(maxsize=256)
def _im2col_table(C, H, W, KH, KW, dh, dw):
    """(3, C*KH*KW) device table of the im2col rows: offset in the image, i*dh, j*dw."""
    c, i, j = np.meshgrid(np.arange(C), np.arange(KH) * dh, np.arange(KW) * dw, indexing="ij")
    return _to_device_table(np.stack([c * H * W + i * W + j, i, j]).reshape(3, -1))


@functools.lru_cache(maxsize=256)
def _dgrad_table(K, C, OH, OW, KH, KW, dh, dw):
    """(4, K*KH*KW) device table of the rows (k, i, j) of the input-gradient GEMM: offset of
    w[k, 0, i, j] in w, offset of dy[n, k, oh, ow] relative to (oh + i*dh, ow + j*dw), i*dh,
    j*dw."""
    k, i, j = np.meshgrid(np.arange(K), np.arange(KH), np.arange(KW), indexing="ij")
    return _to_device_table(np.stack([k * C * KH * KW + i * KW + j,
                                      k * OH * OW - i * dh * OW - j * dw,
                                      i * dh, j * dw]).reshape(4, -1))


def _launch(kind, srcs, c3, bias, tab, M, N, K, geometry):
    """Run conv kernel ``kind`` for the M x N output stored as c3 (P, M, Q) with reduction K:
    the tile shape and split-K chunks as for a plain GEMM, the chunk partials combined in a
    fixed order."""
    dtype = np.dtype(c3.dtype)
    cfg = G.pick_tile(M, N, dtype)
    S, kchunk = G.pick_split(M, N, K, cfg)
    partial = S > 1
    part = G.workspace("splitk", S * M * N, dtype) if partial else G.dummy(dtype, 1)
    bias_mode = NO_BIAS if bias is None else BIAS_ROWS
    bias = G.dummy(dtype, 1) if bias is None else bias
    G.launch_tiled(_KERNELS[cfg.name][kind], cfg, M, N, S,
                   (*srcs, c3.reshape(c3.size), part, bias, tab, M, N, K, *geometry, bias_mode,
                    partial, kchunk))
    if partial:
        G.combine_splits(part.reshape(S, M, N), c3, bias, dtype.type(1), dtype.type(0),
                         bias_mode)


def chunk_size(g, itemsize):
    """Images per chunk of the column workspace: as many as fit COL_BUFFER_BYTES (>= 1)."""
    per_image = g.C * g.KH * g.KW * g.OH * g.OW * itemsize
    return max(1, min(g.N, COL_BUFFER_BYTES // per_image))


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, *, out=None):
    g = conv_geometry("conv2d_forward", x.shape, w.shape, stride, padding, dilation)
    x, w, b, out = (device_array(a) for a in (x, w, b, out))
    N, C, K, L = g.N, g.C, g.K, g.OH * g.OW
    y = empty((N, K, g.OH, g.OW), x.dtype) if out is None else out
    if g.pointwise:                                 # y (K, N*L) = w (K, C) @ x (C, N*L) + b
        gemm(w.reshape(K, C), x.reshape(N, C, L), y.reshape(N, K, L), bias=b, bias_on="rows")
        return y
    ckk = C * g.KH * g.KW
    tab = _im2col_table(C, g.H, g.W, g.KH, g.KW, g.dh, g.dw)
    _launch("fwd", (x.reshape(x.size), w.reshape(1, K, ckk)), y.reshape(N, K, L), b, tab,
            K, N * L, ckk, (L, g.OW, g.H, g.W, g.sh, g.sw, g.pt, g.pl, C * g.H * g.W))
    return y


def conv2d_backward(dy, x, w, stride=1, padding=0, dilation=1, *, has_bias=True, need_dx=True,
                    out=None):
    g = conv_geometry("conv2d_backward", x.shape, w.shape, stride, padding, dilation)
    dy, x, w = (device_array(a) for a in (dy, x, w))
    dx_out, dw_out, db_out = (None, None, None) if out is None else (device_array(a) for a in out)
    N, C, K, L = g.N, g.C, g.K, g.OH * g.OW
    ckk = C * g.KH * g.KW
    dy3 = dy.reshape(N, K, L)
    db = None
    if has_bias:
        db = channel_sums(dy3, empty((K,), x.dtype) if db_out is None else db_out)
    dw = empty(w.shape, x.dtype) if dw_out is None else dw_out
    dx = None
    if need_dx:
        dx = empty(x.shape, x.dtype) if dx_out is None else dx_out

    if g.pointwise:
        x3 = x.reshape(N, C, L)
        gemm(dy3, x3, dw.reshape(K, C), trans_b=True)            # dw (K, C) = dy @ x.T
        if need_dx:                                               # dx (C, N*L) = w.T @ dy
            gemm(w.reshape(K, C), dy3, dx.reshape(N, C, L), trans_a=True)
        return dx, dw, db

    geometry = (L, g.OW, g.H, g.W, g.sh, g.sw, g.pt, g.pl, C * g.H * g.W)
    tab = _im2col_table(C, g.H, g.W, g.KH, g.KW, g.dh, g.dw)
    _launch("wgrad", (dy3, x.reshape(x.size)), dw.reshape(1, K, ckk), None, tab, K, ckk, N * L,
            geometry)
    if not need_dx:
        return dx, dw, db
    if g.sh == g.sw == 1:
        HW = g.H * g.W
        tab = _dgrad_table(K, C, g.OH, g.OW, g.KH, g.KW, g.dh, g.dw)
        _launch("dgrad", (w.reshape(w.size), dy.reshape(dy.size)), dx.reshape(N, C, HW), None,
                tab, C, N * HW, K * g.KH * g.KW,
                (HW, g.W, g.OH, g.OW, g.pt, g.pl, K * L, g.KH * g.KW))
        return dx, dw, db
    # strided: dcols = w.T @ dy per chunk of B images into the reused workspace, then col2im
    B = chunk_size(g, x.dtype.itemsize)
    cols = G.workspace("cols", B * ckk * L, x.dtype).reshape(B, ckk, L)
    wm = w.reshape(K, ckk)
    for n0 in range(0, N, B):
        nb = min(B, N - n0)
        gemm(wm, dy3[n0:n0 + nb], cols[:nb], trans_a=True)    # (C*KH*KW, nb*L) = w.T @ dy
        _col2im_kernel[grid_1d(nb * C * g.H * g.W)](cols[:nb], n0, dx, g.KH, g.KW, g.OH, g.OW,
                                                     g.sh, g.sw, g.pt, g.pl, g.dh, g.dw)
    return dx, dw, db
