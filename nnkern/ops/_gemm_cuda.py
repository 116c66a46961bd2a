"""Register-tiled shared-memory GEMM core of the CUDA backend (dense, conv2d and later others).

    C = alpha * op(A) @ op(B) + beta * C  (+ a bias per row or per column of C)

op(A) is M x K, op(B) is K x N, C is M x N; op is the identity or a transpose, never a copy.

Operands as "wide" matrices
---------------------------
Every operand is a matrix stored row-major, possibly with its columns split in two: a 3-D array
``v`` of shape (P, R, Q) stands for the R x (P*Q) matrix whose element (r, w) is
``v[w // Q, r, w % Q]`` (a plain 2-D matrix is the case P = 1). Conv2d needs this: dy (N, K, L)
is the K x (N*L) matrix of all output gradients, and a 1x1 convolution is then one GEMM with no
transposing copy. The contiguous axis is always the last one (q), so the loaders below put
threadIdx along it. What is stored is op(A) itself (M x K) or, with ``trans_a``, its transpose
(K x M); the same for B (K x N, or N x K with ``trans_b``); C is stored as M x N.

Tile scheme
-----------
A block of 256 threads, a 16 x 16 grid (tx = tid % 16, ty = tid // 16), computes a BM x BN tile
of C, BM, BN in {64, 128}; thread (tx, ty) owns the TM x TN = (BM/16) x (BN/16) outputs

    rows  m0 + ty + 16*i  (i < TM)          strided, not blocked, so that for each (i, j)
    cols  n0 + tx + 16*j  (j < TN)          a warp reads 16 consecutive words of Bs (no bank
                                            conflicts) and writes 16 consecutive words of C

                 n0           n0+BN
                 +----------------+
 Bs[st, kk, n]   |   op(B) tile   |   BK x BN, k-major (BK = 16)
                 +----------------+
 m0 +----------+ +----------------+
    | As[st,   | |x   x   x   x   |   the C tile, 64 x 64 here, drawn with 1 char = 4
    |   kk, m] | |                |   columns and 1 line = 8 rows: x = the 4 x 4
    |          | |x   x   x   x   |   outputs of thread (0, 0), rows and columns
    | op(A)    | |                |   0, 16, 32, 48; thread (tx, ty) owns the same
    | tile,    | |x   x   x   x   |   pattern shifted by (ty, tx). Per kk < BK:
    | BM x BK, | |                |     fa[i] = As[kk, ty + 16i], fb[j] = Bs[kk, tx + 16j],
    | k-major  | |x   x   x   x   |     acc[i, j] += fa[i] * fb[j]
    |          | |                |   TM + TN shared loads for TM * TN FMAs.
 m0+BM---------+ +----------------+

K is walked in tiles of BK = 16. Shared memory holds two stages of each tile (double
buffering), stored k-major (As[stage, kk, m]) with 2 words of padding per row so that the
transposing stores from k-contiguous operands hit 32 distinct banks. Per tile: prefetch the next
tile from global memory into registers, multiply the current stage, store the registers into the
other stage, one ``syncthreads``. Global loads are coalesced: when an operand's contiguous axis is
k, 16 consecutive threads read 16 consecutive k of one row; when it is m (or n), consecutive
threads read consecutive m. Out-of-range rows, columns and k read as 0, so any M, N, K works.

Accumulators are in the operands' dtype (float32 stays float32; float64 kernels exist for the
tests and gradient checks). float64 uses the 64 x 64 tile only (two 128-wide double stages do
not fit the 48 KiB of static shared memory). The tile shape is picked per call from M and N
(``pick_tile``): 128 along an axis only where the grid still has about a block per SM.

Code generation (checked with ptxas for sm_90 by tests/cuda/test_gemm_cuda.py): acc, the
fragments and the prefetch registers are ``cuda.local.array``s that must become registers,
which needs every loop indexing them fully unrolled, so those loops have constant trip counts
and small bodies (the epilogue uses flat unsigned offsets, no divisions). Shared and global
indices are cast to uint64 (``u64``), which drops Numba's negative-index wraparound code, and
the BK loop is a ``while`` loop (LLVM cannot prove a ``range`` index non-negative): the inner
loop is then TM+TN shared loads + TM*TN FMAs + ~3 instructions per k step. Registers per
thread: ~65-100 for 64 x 64, ~100-130 for 64 x 128 / 128 x 64, ~160 for 128 x 128.

Split-K
-------
When the tiles of C are too few to fill the GPU (conv weight gradients: 64 x 576 outputs, a
reduction over N*OH*OW ~ 32k), the K range is cut into S chunks, a grid z index per chunk. Each
writes its partial tile into a workspace (S, M, N) and a second kernel adds the S partials in the
fixed order s = 0, 1, ..., then applies alpha, beta and the bias: deterministic, no atomics.
(beta != 0 always takes this path, S = 1 included, so the tile epilogue never reads C.)
Tile shape and S depend on the shapes only, so results are reproducible run to run.
"""

import numpy as np
from numba import config, cuda, int64, uint64

from nnkern.ops._cuda import device_function, empty, grid_1d, kernel

BK = 16                 #: reduction tile (rows of the B tile, columns of the A tile)
THREADS = 256           #: threads per GEMM block: a 16 x 16 grid
TILE_SHAPES = ((64, 64), (64, 128), (128, 64), (128, 128))
#: About one block per SM of an H100 (132 SMs): fewer tiles than this use smaller tiles, then
#: split K. Shape-only, so results do not depend on the GPU.
MIN_BLOCKS = 132
#: Split K only into chunks of at least this many reduction steps (16 tiles of BK).
SPLIT_MIN_K = 256
MAX_SPLIT = 64

NO_BIAS, BIAS_ROWS, BIAS_COLS = 0, 1, 2


# ---------------------------------------------------------------------------------------------
# Device building blocks (shared by every tiled kernel, here and in the op packages)
# ---------------------------------------------------------------------------------------------

if config.ENABLE_CUDASIM:
    def u64(i):
        """The simulator's stand-in for the uint64 cast: a plain function (a device function or
        a numba type cast costs ~10-20 us per call there), and a negative index is an error."""
        if i < 0:
            raise IndexError(f"negative index {i}")
        return i
else:
    #: An index cast to uint64: Numba then emits no negative-index wraparound code (a compare
    #: and select per index), which keeps the inner loops' addresses as base + constant.
    u64 = uint64


@device_function
def udiv(a, b):
    # a // b for a >= 0, b > 0 (unsigned division: no floor-division sign fix-ups), as int64
    return int64(uint64(a) // uint64(b))


@device_function
def zero_tile(acc):
    # acc: (TM, TN) <- 0
    zero = acc.dtype.type(0)
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            acc[i, j] = zero


@device_function
def mma_tile(As, Bs, st, acc, fa, fb, tx, ty):
    # As: (2, BK, BM+2), Bs: (2, BK, BN+2) stage st -> acc (TM, TN) += the BK-step product.
    # fa (TM,), fb (TN,): register fragments, one row of As / Bs per step.
    # (a while loop: with range() LLVM cannot prove kk >= 0 and keeps index fix-ups in the loop)
    kk = 0
    while kk < As.shape[1]:
        for i in range(fa.shape[0]):
            fa[i] = As[u64(st), u64(kk), u64(ty + 16 * i)]
        for j in range(fb.shape[0]):
            fb[j] = Bs[u64(st), u64(kk), u64(tx + 16 * j)]
        for i in range(fa.shape[0]):
            for j in range(fb.shape[0]):
                acc[i, j] += fa[i] * fb[j]
        kk += 1


@device_function
def fetch_rows(v, regs, p, q, r0, nrows, valid):
    # v: (P, R, Q): regs[t] <- v[p, r0 + 16 t, q] (rows r0, r0+16, ... of one wide column),
    # 0 past nrows or when not valid
    zero = v.dtype.type(0)
    for t in range(regs.shape[0]):
        r = r0 + 16 * t
        if valid and r < nrows:
            regs[t] = v[u64(p), u64(r), u64(q)]
        else:
            regs[t] = zero


@device_function
def fetch_kwide(v, regs, r0, nrows, k, K):
    # v: (P, R, Q), the R x P*Q matrix whose wide index is the reduction index k:
    # regs[t] <- element (r0 + 16 t, k), 0 outside the matrix (k >= K or row >= nrows).
    p = udiv(k, v.shape[2])
    fetch_rows(v, regs, p, k - p * v.shape[2], r0, nrows, k < K)


@device_function
def fetch_krows(v, regs, p, q, valid, k0, step, K):
    # v: (P, R, Q) with R = K rows (the reduction index) and this thread's fixed wide index
    # (p, q) (valid False past the matrix): regs[t] <- v[p, k0 + step t, q], 0 outside.
    zero = v.dtype.type(0)
    for t in range(regs.shape[0]):
        k = k0 + step * t
        if valid and k < K:
            regs[t] = v[u64(p), u64(k), u64(q)]
        else:
            regs[t] = zero


@device_function
def stash_kwide(s, st, regs, kk, r):
    # regs fetched along k (this thread's k is kk, its rows r + 16 t) -> s[st, kk, r + 16 t]
    for t in range(regs.shape[0]):
        s[st, kk, r + 16 * t] = regs[t]


@device_function
def stash_krows(s, st, regs, kk, step, r):
    # regs fetched down k (rows kk + step t of the tile, this thread's column r) -> s[st, ., r]
    for t in range(regs.shape[0]):
        s[st, kk + step * t, r] = regs[t]


@device_function
def store_tile(c, part, bias, acc, m0, n0, tx, ty, M, N, Q, alpha, bias_mode, partial):
    # acc (TM, TN) of the tile at (m0, n0) -> C. c: the flat (P*M*Q,) storage of C as (P, M, Q)
    # with N = P*Q, so element (m, n) sits at (n // Q)*M*Q + m*Q + n % Q:
    #   C[m, n] = alpha * acc (+ bias[m] or bias[n]).
    # partial: write the raw sums to part, the flat (S, M, N) split-K workspace, at z = blockIdx.z
    # instead (the combine kernel applies alpha, beta and the bias).
    # Every loop touching acc must be fully unrolled by the compiler, or acc would live in local
    # memory: the bodies are kept to a few instructions (unsigned flat indices, no divisions).
    zero = acc.dtype.type(0)
    if partial:
        base = cuda.blockIdx.z * M * N
        for i in range(acc.shape[0]):
            m = m0 + ty + 16 * i
            for j in range(acc.shape[1]):
                n = n0 + tx + 16 * j
                if m < M and n < N:
                    part[u64(base + m * N + n)] = acc[i, j]
        return
    for j in range(acc.shape[1]):
        n = n0 + tx + 16 * j
        p = udiv(n, Q)
        col = p * (M - 1) * Q + n                   # (n // Q)*M*Q + n % Q
        col_bias = bias[u64(n)] if bias_mode == BIAS_COLS and n < N else zero
        for i in range(acc.shape[0]):
            m = m0 + ty + 16 * i
            if m < M and n < N:
                b = bias[u64(m)] if bias_mode == BIAS_ROWS else col_bias
                c[u64(col + m * Q)] = alpha * acc[i, j] + b


@kernel
def _splitk_combine_kernel(part, c, bias, alpha, beta, bias_mode):
    # part: (S, M, N) partial products of the K chunks -> c: (P, M, Q), N = P*Q:
    #   c = alpha * (part[0] + part[1] + ... + part[S-1]) + beta * c (+ bias)
    # summed in the fixed order s = 0, 1, ... (deterministic); one thread per element of C, n
    # fastest (coalesced). beta = 0 never reads c.
    S, M, N = part.shape
    Q = c.shape[2]
    zero = c.dtype.type(0)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for idx in range(start, M * N, step):
        m = idx // N
        n = idx - m * N
        acc = part[0, m, n]
        for s in range(1, S):
            acc += part[s, m, n]
        p = n // Q
        q = n - p * Q
        val = alpha * acc
        if beta != zero:
            val += beta * c[p, m, q]
        if bias_mode == BIAS_ROWS:
            val += bias[m]
        elif bias_mode == BIAS_COLS:
            val += bias[n]
        c[p, m, q] = val


# ---------------------------------------------------------------------------------------------
# The GEMM kernel, one per tile shape and transpose pair
# ---------------------------------------------------------------------------------------------

class TileConfig:
    """Compile-time constants of one tile shape (closure constants of the kernels built for it).

    BM x BN outputs per block, TM x TN per thread; SA, SB: padded shared row lengths; A_STEP,
    B_STEP: tile rows one pass of 256 threads covers when they load along m (or n).
    """

    def __init__(self, bm, bn):
        self.BM, self.BN = bm, bn
        self.TM, self.TN = bm // 16, bn // 16
        self.SA, self.SB = bm + 2, bn + 2
        self.A_STEP, self.B_STEP = THREADS // bm, THREADS // bn
        self.name = f"{bm}x{bn}"


def _make_gemm_kernel(cfg, trans_a, trans_b):
    BM, BN, TM, TN, SA, SB = cfg.BM, cfg.BN, cfg.TM, cfg.TN, cfg.SA, cfg.SB
    A_STEP, B_STEP = cfg.A_STEP, cfg.B_STEP

    def gemm(a, b, c, part, bias, alpha, M, N, K, Q, bias_mode, partial, kchunk):
        # a: (Pa, Ra, Qa) holds op(A) (M x K), or op(A).T (K x M) if trans_a (compile-time)
        # b: (Pb, Rb, Qb) holds op(B) (K x N), or op(B).T (N x K) if trans_b (compile-time)
        # c: flat (P*M*Q,) storage of C (M x N, N = P*Q); part: flat (S*M*N,) split-K workspace;
        # bias: (M,) or (N,). Grid (ceil(N/BN), ceil(M/BM), S); block z reduces k in
        # [z*kchunk, (z+1)*kchunk).
        As = cuda.shared.array((2, BK, SA), c.dtype)
        Bs = cuda.shared.array((2, BK, SB), c.dtype)
        acc = cuda.local.array((TM, TN), c.dtype)
        fa = cuda.local.array(TM, c.dtype)
        fb = cuda.local.array(TN, c.dtype)
        ra = cuda.local.array(TM, c.dtype)
        rb = cuda.local.array(TN, c.dtype)
        tid = cuda.threadIdx.x
        tx = tid % 16
        ty = tid // 16
        m0 = cuda.blockIdx.y * BM
        n0 = cuda.blockIdx.x * BN
        kbeg = cuda.blockIdx.z * kchunk
        kend = min(K, kbeg + kchunk)
        ntiles = (kend - kbeg + BK - 1) // BK
        # Loader roles. k-wide operands (k along the contiguous axis): this thread loads k =
        # k0 + tx for rows ty + 16 t. k-rows operands: it loads the fixed column mm (nn) for
        # k = k0 + kr + step t; its wide index, split as (p, q), is computed once here.
        mm = tid % BM
        akr = tid // BM
        am = m0 + mm
        ap = udiv(am, a.shape[2])
        aq = am - ap * a.shape[2]
        nn = tid % BN
        bkr = tid // BN
        bn = n0 + nn
        bp = udiv(bn, b.shape[2])
        bq = bn - bp * b.shape[2]
        zero_tile(acc)
        for t in range(-1, ntiles):
            # t = -1 only fills stage 0; then tile t is multiplied while t+1 is fetched.
            if t + 1 < ntiles:
                k0 = kbeg + (t + 1) * BK
                if trans_a:
                    fetch_krows(a, ra, ap, aq, am < M, k0 + akr, A_STEP, kend)
                else:
                    fetch_kwide(a, ra, m0 + ty, M, k0 + tx, kend)
                if trans_b:
                    fetch_kwide(b, rb, n0 + ty, N, k0 + tx, kend)
                else:
                    fetch_krows(b, rb, bp, bq, bn < N, k0 + bkr, B_STEP, kend)
            if t >= 0:
                mma_tile(As, Bs, t % 2, acc, fa, fb, tx, ty)
            if t + 1 < ntiles:
                st = (t + 1) % 2
                if trans_a:
                    stash_krows(As, st, ra, akr, A_STEP, mm)
                else:
                    stash_kwide(As, st, ra, tx, ty)
                if trans_b:
                    stash_kwide(Bs, st, rb, tx, ty)
                else:
                    stash_krows(Bs, st, rb, bkr, B_STEP, nn)
            # stage (t+1)%2 is filled and every thread is done reading stage t%2, which the
            # next iteration overwrites
            cuda.syncthreads()
        store_tile(c, part, bias, acc, m0, n0, tx, ty, M, N, Q, alpha, bias_mode, partial)

    gemm.__name__ = gemm.__qualname__ = gemm_kernel_name(cfg, trans_a, trans_b)
    return gemm


def gemm_kernel_name(cfg, trans_a, trans_b):
    return f"_gemm_kernel_{cfg.name}_{'t' if trans_a else 'n'}{'t' if trans_b else 'n'}"


TILES = {}
for _bm, _bn in TILE_SHAPES:
    _cfg = TileConfig(_bm, _bn)
    TILES[(_bm, _bn)] = _cfg
    _cfg.gemm = {}
    for _ta in (False, True):
        for _tb in (False, True):
            # a module-level name per kernel: the compile-only test finds kernels by qualname
            _cfg.gemm[_ta, _tb] = globals()[gemm_kernel_name(_cfg, _ta, _tb)] = \
                kernel(_make_gemm_kernel(_cfg, _ta, _tb))
del _bm, _bn, _cfg, _ta, _tb


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------

def cdiv(a, b):
    return -(-a // b)


def pick_tile(M, N, dtype):
    """The tile shape for an M x N output: 128 along an axis only where that still gives about
    a block per SM; 64 x 64 otherwise and always for float64."""
    if np.dtype(dtype).itemsize > 4:
        return TILES[(64, 64)]
    order = ((128, 128), (128, 64), (64, 128)) if M >= N else ((128, 128), (64, 128), (128, 64))
    for bm, bn in order:
        if M >= bm and N >= bn and cdiv(M, bm) * cdiv(N, bn) >= MIN_BLOCKS:
            return TILES[(bm, bn)]
    return TILES[(64, 64)]


def pick_split(M, N, K, cfg):
    """(S, kchunk): split K into S chunks of kchunk (a multiple of BK) when the tiles of C alone
    give fewer than MIN_BLOCKS blocks and each chunk keeps at least SPLIT_MIN_K steps."""
    blocks = cdiv(M, cfg.BM) * cdiv(N, cfg.BN)
    s = min(cdiv(MIN_BLOCKS, blocks), K // SPLIT_MIN_K, MAX_SPLIT)
    if s <= 1:
        return 1, cdiv(K, BK) * BK
    kchunk = cdiv(cdiv(K, s), BK) * BK
    return cdiv(K, kchunk), kchunk


_dummies = {}


def dummy(dtype, ndim):
    """A one-element device array standing in for an unused array argument (kernels are typed
    per argument, so "no bias" still passes an array of the right dtype and rank)."""
    key = (np.dtype(dtype).str, ndim)
    if key not in _dummies:
        _dummies[key] = empty((1,) * ndim, dtype)
    return _dummies[key]


_workspaces = {}


def workspace(tag, n, dtype):
    """A flat device buffer of at least n elements, kept and reused across calls per (tag, dtype).

    Kernels run in launch order on one stream, so a buffer is free again as soon as the next
    launch is queued; different uses within one op need different tags. Grows, never shrinks
    (see ``release_workspaces``)."""
    key = (tag, np.dtype(dtype).str)
    buf = _workspaces.get(key)
    if buf is None or buf.size < n:
        buf = _workspaces[key] = empty((max(n, 1),), dtype)
    return buf[:n]


def release_workspaces():
    """Drop the cached workspaces (their memory returns to the allocator)."""
    _workspaces.clear()


def as3d(v):
    """A 2-D matrix (R, Q) as the (1, R, Q) view the kernels take; 3-D arrays pass through."""
    return v.reshape(1, *v.shape) if len(v.shape) == 2 else v


def wide_shape(v):
    """(rows, wide columns) of the matrix a 2-D or 3-D (P, R, Q) array stands for."""
    if len(v.shape) == 2:
        return v.shape[0], v.shape[1]
    return v.shape[1], v.shape[0] * v.shape[2]


def launch_tiled(kern, cfg, M, N, S, args):
    """Launch a tiled kernel over an M x N output with S split-K chunks."""
    grid = (cdiv(N, cfg.BN), cdiv(M, cfg.BM), S)
    kern[grid, THREADS](*args)


def combine_splits(part, c3, bias, alpha, beta, bias_mode):
    """c3 = alpha * sum_s part[s] + beta * c3 (+ bias), in fixed order (see the module doc)."""
    _splitk_combine_kernel[grid_1d(part.shape[1] * part.shape[2])](part, c3, bias, alpha, beta,
                                                                    bias_mode)


def gemm(a, b, c, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, bias=None,
         bias_on="cols", tile=None):
    """c = alpha * op(a) @ op(b) + beta * c (+ bias); returns c. All device arrays of one dtype.

    a: op(A) (M, K) stored as is, or with ``trans_a`` its transpose (K, M); b likewise (K, N) or
    (N, K) with ``trans_b``; c: (M, N). Each may also be 3-D (P, R, Q), standing for the R x
    (P*Q) matrix with element (r, w) at [w // Q, r, w % Q] (module doc). ``beta = 0`` never
    reads c (it may hold garbage). ``bias``: (M,) added to every row ("rows": bias[m]) or (N,)
    added to every column ("cols": bias[n]). ``tile``: force a (BM, BN) tile shape (tests).
    """
    ra_, wa = wide_shape(a)
    rb_, wb = wide_shape(b)
    M, K = (wa, ra_) if trans_a else (ra_, wa)
    Kb, N = (wb, rb_) if trans_b else (rb_, wb)
    if Kb != K or wide_shape(c) != (M, N):
        raise ValueError(f"gemm: op(a) is {M}x{K}, op(b) is {Kb}x{N}, c is "
                         f"{'x'.join(map(str, wide_shape(c)))}")
    dtype = np.dtype(c.dtype)
    cfg = TILES[tuple(tile)] if tile is not None else pick_tile(M, N, dtype)
    if dtype.itemsize > 4 and (cfg.BM, cfg.BN) != (64, 64):
        raise ValueError("gemm: float64 runs with the 64x64 tile only (shared memory)")
    S, kchunk = pick_split(M, N, K, cfg)
    bias_mode = NO_BIAS if bias is None else (BIAS_ROWS if bias_on == "rows" else BIAS_COLS)
    bias = dummy(dtype, 1) if bias is None else bias
    alpha, beta = dtype.type(alpha), dtype.type(beta)
    c3 = as3d(c)
    # beta != 0 goes through the combine kernel too (the tile epilogue stays lean)
    partial = S > 1 or beta != 0
    part = workspace("splitk", S * M * N, dtype) if partial else dummy(dtype, 1)
    launch_tiled(cfg.gemm[bool(trans_a), bool(trans_b)], cfg, M, N, S,
                 (as3d(a), as3d(b), c3.reshape(c3.size), part, bias, alpha, M, N, K,
                  c3.shape[2], bias_mode, partial, kchunk))
    if partial:
        combine_splits(part.reshape(S, M, N), c3, bias, alpha, beta, bias_mode)
    return c
