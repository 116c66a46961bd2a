"""Winograd F(m x m, 3 x 3) convolution (m = 4 or 2) for float32, 3x3 kernels, stride 1.

Why: a 3x3 convolution through im2col + GEMM costs 9 multiply-adds per output and channel pair;
Winograd's minimal filtering algorithm (Lavin & Gray 2016, arXiv 1509.09308) computes an m x m
output tile from an a x a input tile (a = m + 2) with a*a multiplies: 36 instead of 144 for
F(4x4, 3x3) (4x fewer), 16 instead of 36 for F(2x2, 3x3). In one dimension,

    y = A^T [ (G g) . (B^T d) ]        g: 3 taps, d: a inputs, y: m outputs,

and in two, Y = A^T [ (G g G^T) . (B^T d B) ] A. Summed over input channels, the a*a products of
every tile become a*a independent GEMMs over the tiles ("positions" xi = (row, col) of the
transformed tile):

    forward  M[xi] (P, K) = V[xi] (P, C) @ U[xi]^T (C, K)    V = B^T d B of x,  U = G w G^T
    dx       the same with dy as input and the filters flipped and transposed: dx is the
             3x3 stride-1 convolution of dy (padded 2 - pad) with w[k, c, 2 - i, 2 - j]
    dw       dw_tile = G^T [ (A dy A^T) . (B^T d B) ] G, because y = A^T[(Gg).(B^T d)] holds for
             every g and d: the coefficient of g_i in y_a is d_{a+i} = sum_xi A[xi,a] G[xi,i]
             (B^T d)_xi, hence dw_i = sum_a dy_a d_{a+i} = sum_xi G[xi,i] (A dy)_xi (B^T d)_xi.
             Summed over tiles: W[xi] (K, C) = D[xi]^T (K, P) @ V[xi] (P, C), D = A dy A^T.

P counts tiles (n, th, tw). BLAS runs the GEMMs; Numba runs the transforms.

Layout. The transforms work on runs that are contiguous in the channel dimension, so that every
inner loop is a long, unit-stride loop that LLVM vectorises: V is (a*a, P, C), M is (a*a, P, K).
Each image is first transposed into a zero-padded channel-last "slab" whose columns are split by
their residue mod m, slab[h, r, q, c] = x~[h, m*q + r, c] (x~: x zero-padded). The column that
tile tw needs at offset j is then the run slab[h, j % m, tw + j // m, :] over (tw, c), so one
transform step covers a whole row of tiles in one loop. Outputs come back the same way and are
transposed into NCHW, with the bias fused.

Every transform helper below writes one output run per loop, reading runs of one source array:
LLVM then vectorises it with a single runtime aliasing check (loops writing several arrays at
unknown distances stay scalar).

Backward with padding 1 (the usual "same" 3x3 conv) is one fused pass: dx's tiles are then
dy's, so dy is transposed once into both of its transforms and each GEMM task does both of
dw's and dx's products for its positions xi.

Accuracy: the transforms' coefficients (up to 8 in A, 5/2 in B, 16/15 in G) amplify float32
rounding: measured F(4x4) errors are <= 5 eps * max sum |w||x~| (2-4x a direct float32 sum,
1-2e-6 of max |y|; F(2x2) ~1.5x), well inside the conv tests' float32 tolerances
(tests/ops/test_conv2d_winograd.py).
The dispatcher sends only float32 here; the kernels are dtype-generic and exact to 1e-12 in
float64 (tested). A tile mixes its pixels, so an Inf or NaN input spreads NaN over its whole
output tile rather than its 3x3 neighbourhood.

Work split (see ops/_parallel.py): transforms run per range of images, GEMMs per range of xi, each
phase on the worker threads with BLAS single-threaded; the batch is processed in super-chunks
of about CHUNK_TILES tiles. With at most TASK_CHANNELS channels a phase holds too little work
for its hand-offs, and each super-chunk runs whole as one task instead. Work arrays live in
per-thread scratch buffers reused across calls (page faults on fresh multi-MiB arrays cost more
than the transforms); the largest are the transformed filters, a*a*K*C floats (38 MiB for
512x512 filters with F(4x4)).
"""

import numpy as np

from nnkern._jit import cpu_inline, cpu_serial
from nnkern.ops._parallel import run_tasks, scratch, single_threaded_blas, workers

#: Tiles per super-chunk: the GEMMs' row count P. Fewer rows make BLAS slower and add phase
#: waits; more make the transformed arrays fall out of cache between the transform and the
#: GEMM. Measured (batch 64, forward+backward, 1 and 2 threads, 128..1024 tiles): 128-256 best
#: at 64x64x32x32 and 128x128x16x16, 256-512 at 256x256x8x8.
CHUNK_TILES = 256
#: Upper bound on one super-chunk's transformed array (a*a, P, channels).
CHUNK_BYTES = 16 << 20

# ----------------------------------------------------------------------- transform matrices
# F(4x4, 3x3) with interpolation points 0, 1, -1, 1/2, -2, inf (Toom-Cook: A^T[a, xi] = p^a,
# G[xi, i] = p^i / prod_(q != p) (p - q), B^T solved from the identity). Lavin & Gray use 0, +-1,
# +-2, inf; mixing 1/2 and -2 keeps the transform coefficients small in both directions and
# cuts the float32 error 2-2.7x (Barabasz et al. 2020, arXiv 1803.10986; measured here: max
# error / max |y| 1.9e-6 vs 5.1e-6 at C = 64, 1.7e-6 vs 3.4e-6 for ReLU inputs), for ~20% more
# additions in the (memory-bound) transforms.
BT4 = np.array([[1, -3 / 2, -2, 3 / 2, 1, 0],
                [0, -1, 1 / 2, 5 / 2, 1, 0],
                [0, 1, -5 / 2, 1 / 2, 1, 0],
                [0, -2, -1, 2, 1, 0],
                [0, 1 / 2, -1, -1 / 2, 1, 0],
                [0, 1, -3 / 2, -2, 3 / 2, 1]], np.float64)
G4 = np.array([[1, 0, 0],
               [1 / 3, 1 / 3, 1 / 3],
               [-1 / 3, 1 / 3, -1 / 3],
               [-16 / 15, -8 / 15, -4 / 15],
               [1 / 15, -2 / 15, 4 / 15],
               [0, 0, 1]], np.float64)
AT4 = np.array([[1, 1, 1, 1, 1, 0],
                [0, 1, -1, 1 / 2, -2, 0],
                [0, 1, 1, 1 / 4, 4, 0],
                [0, 1, -1, 1 / 8, -8, 1]], np.float64)
# F(2x2, 3x3), points 0, 1, -1, inf.
BT2 = np.array([[1, 0, -1, 0],
                [0, 1, 1, 0],
                [0, -1, 1, 0],
                [0, 1, 0, -1]], np.float64)
G2 = np.array([[1, 0, 0],
               [1 / 2, 1 / 2, 1 / 2],
               [1 / 2, -1 / 2, 1 / 2],
               [0, 0, 1]], np.float64)
AT2 = np.array([[1, 1, 1, 0],
                [0, 1, -1, -1]], np.float64)

MATRICES = {4: (BT4, G4, AT4), 2: (BT2, G2, AT2)}


def applicable(g, dtype):
    """Whether conv2d with geometry ``g`` runs here: float32, 3x3, stride 1, dilation 1,
    padding <= 2 on every side (dx is then a conv of dy with padding 2 - pad >= 0), and enough
    channels on both sides for the GEMMs to be worth it (the first layer, C = 1 or 3, is not)."""
    return (np.dtype(dtype) == np.float32 and g.KH == g.KW == 3 and g.sh == g.sw == 1
            and g.dh == g.dw == 1 and max(g.pt, g.pb, g.pl, g.pr) <= 2
            and g.C >= MIN_CHANNELS and g.K >= MIN_CHANNELS)


#: Fewer input or output channels than this: im2col (the GEMMs would be too thin to pay for
#: the transforms).
MIN_CHANNELS = 16


def tile_size(OH, OW):
    """m: F(4x4) (4x fewer multiplies) unless the output is smaller than 4 pixels on a side,
    where a 6x6 tile would mostly multiply padding; F(2x2) there."""
    return 4 if min(OH, OW) >= 4 else 2


# ----------------------------------------------------------------------- 1-D transforms
# Each helper applies one 1-D transform to n-long runs: source runs start at s[i_j], outputs at
# d[o_xi]; one loop per output run (see the module docstring), over 1-D views indexed by the
# loop counter alone. (Indexing s[i + t] directly made LLVM emit gathers, 10x slower: it cannot
# prove i + t >= 0 and keeps Numba's negative-index wraparound per element.)


@cpu_inline
def _bt4(s, i0, i1, i2, i3, i4, i5, d, o0, o1, o2, o3, o4, o5, n):
    # d_xi = sum_j BT4[xi, j] s_j
    f = d.dtype.type
    c2, c15, c25, ch = f(2), f(1.5), f(2.5), f(0.5)
    s0, s1, s2 = s[i0:i0 + n], s[i1:i1 + n], s[i2:i2 + n]
    s3, s4, s5 = s[i3:i3 + n], s[i4:i4 + n], s[i5:i5 + n]
    d0 = d[o0:o0 + n]
    for t in range(n):
        d0[t] = s0[t] + s4[t] - c2 * s2[t] + c15 * (s3[t] - s1[t])
    d1 = d[o1:o1 + n]
    for t in range(n):
        d1[t] = s4[t] - s1[t] + ch * s2[t] + c25 * s3[t]
    d2 = d[o2:o2 + n]
    for t in range(n):
        d2[t] = s4[t] + s1[t] - c25 * s2[t] + ch * s3[t]
    d3 = d[o3:o3 + n]
    for t in range(n):
        d3[t] = s4[t] - s2[t] + c2 * (s3[t] - s1[t])
    d4 = d[o4:o4 + n]
    for t in range(n):
        d4[t] = s4[t] - s2[t] + ch * (s1[t] - s3[t])
    d5 = d[o5:o5 + n]
    for t in range(n):
        d5[t] = s1[t] + s5[t] - c2 * s3[t] + c15 * (s4[t] - s2[t])


@cpu_inline
def _at4(s, i0, i1, i2, i3, i4, i5, d, o0, o1, o2, o3, n):
    # d_a = sum_xi AT4[a, xi] s_xi
    f = d.dtype.type
    c2, c4, c8, ch, cq, ce = f(2), f(4), f(8), f(0.5), f(0.25), f(0.125)
    s0, s1, s2 = s[i0:i0 + n], s[i1:i1 + n], s[i2:i2 + n]
    s3, s4, s5 = s[i3:i3 + n], s[i4:i4 + n], s[i5:i5 + n]
    d0 = d[o0:o0 + n]
    for t in range(n):
        d0[t] = s0[t] + s1[t] + s2[t] + s3[t] + s4[t]
    d1 = d[o1:o1 + n]
    for t in range(n):
        d1[t] = s1[t] - s2[t] + ch * s3[t] - c2 * s4[t]
    d2 = d[o2:o2 + n]
    for t in range(n):
        d2[t] = s1[t] + s2[t] + cq * s3[t] + c4 * s4[t]
    d3 = d[o3:o3 + n]
    for t in range(n):
        d3[t] = s1[t] - s2[t] + ce * s3[t] - c8 * s4[t] + s5[t]


@cpu_inline
def _a4(s, i0, i1, i2, i3, d, o0, o1, o2, o3, o4, o5, n):
    # d_xi = sum_a AT4[a, xi] s_a  (A = AT4^T: an output tile's gradient into the 6x6 domain)
    f = d.dtype.type
    c2, c4, c8, ch, cq, ce = f(2), f(4), f(8), f(0.5), f(0.25), f(0.125)
    s0, s1, s2, s3 = s[i0:i0 + n], s[i1:i1 + n], s[i2:i2 + n], s[i3:i3 + n]
    d0 = d[o0:o0 + n]
    for t in range(n):
        d0[t] = s0[t]
    d1 = d[o1:o1 + n]
    for t in range(n):
        d1[t] = s0[t] + s1[t] + s2[t] + s3[t]
    d2 = d[o2:o2 + n]
    for t in range(n):
        d2[t] = s0[t] - s1[t] + s2[t] - s3[t]
    d3 = d[o3:o3 + n]
    for t in range(n):
        d3[t] = s0[t] + ch * s1[t] + cq * s2[t] + ce * s3[t]
    d4 = d[o4:o4 + n]
    for t in range(n):
        d4[t] = s0[t] - c2 * s1[t] + c4 * s2[t] - c8 * s3[t]
    d5 = d[o5:o5 + n]
    for t in range(n):
        d5[t] = s3[t]


@cpu_inline
def _bt2(s, i0, i1, i2, i3, d, o0, o1, o2, o3, n):
    # d_xi = sum_j BT2[xi, j] s_j
    s0, s1, s2, s3 = s[i0:i0 + n], s[i1:i1 + n], s[i2:i2 + n], s[i3:i3 + n]
    d0 = d[o0:o0 + n]
    for t in range(n):
        d0[t] = s0[t] - s2[t]
    d1 = d[o1:o1 + n]
    for t in range(n):
        d1[t] = s1[t] + s2[t]
    d2 = d[o2:o2 + n]
    for t in range(n):
        d2[t] = s2[t] - s1[t]
    d3 = d[o3:o3 + n]
    for t in range(n):
        d3[t] = s1[t] - s3[t]


@cpu_inline
def _at2(s, i0, i1, i2, i3, d, o0, o1, n):
    # d_a = sum_xi AT2[a, xi] s_xi
    s0, s1, s2, s3 = s[i0:i0 + n], s[i1:i1 + n], s[i2:i2 + n], s[i3:i3 + n]
    d0 = d[o0:o0 + n]
    for t in range(n):
        d0[t] = s0[t] + s1[t] + s2[t]
    d1 = d[o1:o1 + n]
    for t in range(n):
        d1[t] = s1[t] - s2[t] - s3[t]


@cpu_inline
def _a2(s, i0, i1, d, o0, o1, o2, o3, n):
    # d_xi = sum_a AT2[a, xi] s_a
    s0, s1 = s[i0:i0 + n], s[i1:i1 + n]
    d0 = d[o0:o0 + n]
    for t in range(n):
        d0[t] = s0[t]
    d1 = d[o1:o1 + n]
    for t in range(n):
        d1[t] = s0[t] + s1[t]
    d2 = d[o2:o2 + n]
    for t in range(n):
        d2[t] = s0[t] - s1[t]
    d3 = d[o3:o3 + n]
    for t in range(n):
        d3[t] = -s1[t]


@cpu_inline
def _g4(s, i0, i1, i2, d, o0, o1, o2, o3, o4, o5, n):
    # d_xi = sum_i G4[xi, i] s_i  (a filter's taps into the 6-point domain)
    f = d.dtype.type
    c3, c15, c415 = f(1 / 3), f(1 / 15), f(4 / 15)
    c2, c4 = f(2), f(4)
    s0, s1, s2 = s[i0:i0 + n], s[i1:i1 + n], s[i2:i2 + n]
    d0 = d[o0:o0 + n]
    for t in range(n):
        d0[t] = s0[t]
    d1 = d[o1:o1 + n]
    for t in range(n):
        d1[t] = c3 * (s0[t] + s1[t] + s2[t])
    d2 = d[o2:o2 + n]
    for t in range(n):
        d2[t] = c3 * (s1[t] - s0[t] - s2[t])
    d3 = d[o3:o3 + n]
    for t in range(n):
        d3[t] = -c415 * (c4 * s0[t] + c2 * s1[t] + s2[t])
    d4 = d[o4:o4 + n]
    for t in range(n):
        d4[t] = c15 * (s0[t] - c2 * s1[t] + c4 * s2[t])
    d5 = d[o5:o5 + n]
    for t in range(n):
        d5[t] = s2[t]


@cpu_inline
def _gt4(s, i0, i1, i2, i3, i4, i5, d, o0, o1, o2, n):
    # d_i = sum_xi G4[xi, i] s_xi  (the 6-point domain back to the 3 taps: the weight gradient)
    f = d.dtype.type
    c3, c15, c215, c415, c815, c1615 = f(1 / 3), f(1 / 15), f(2 / 15), f(4 / 15), f(8 / 15), \
        f(16 / 15)
    s0, s1, s2 = s[i0:i0 + n], s[i1:i1 + n], s[i2:i2 + n]
    s3, s4, s5 = s[i3:i3 + n], s[i4:i4 + n], s[i5:i5 + n]
    d0 = d[o0:o0 + n]
    for t in range(n):
        d0[t] = s0[t] + c3 * (s1[t] - s2[t]) - c1615 * s3[t] + c15 * s4[t]
    d1 = d[o1:o1 + n]
    for t in range(n):
        d1[t] = c3 * (s1[t] + s2[t]) - c815 * s3[t] - c215 * s4[t]
    d2 = d[o2:o2 + n]
    for t in range(n):
        d2[t] = c3 * (s1[t] - s2[t]) - c415 * (s3[t] - s4[t]) + s5[t]


@cpu_inline
def _g2(s, i0, i1, i2, d, o0, o1, o2, o3, n):
    # d_xi = sum_i G2[xi, i] s_i
    h = d.dtype.type(0.5)
    s0, s1, s2 = s[i0:i0 + n], s[i1:i1 + n], s[i2:i2 + n]
    d0 = d[o0:o0 + n]
    for t in range(n):
        d0[t] = s0[t]
    d1 = d[o1:o1 + n]
    for t in range(n):
        d1[t] = h * (s0[t] + s1[t] + s2[t])
    d2 = d[o2:o2 + n]
    for t in range(n):
        d2[t] = h * (s0[t] - s1[t] + s2[t])
    d3 = d[o3:o3 + n]
    for t in range(n):
        d3[t] = s2[t]


@cpu_inline
def _gt2(s, i0, i1, i2, i3, d, o0, o1, o2, n):
    # d_i = sum_xi G2[xi, i] s_xi
    h = d.dtype.type(0.5)
    s0, s1, s2, s3 = s[i0:i0 + n], s[i1:i1 + n], s[i2:i2 + n], s[i3:i3 + n]
    d0 = d[o0:o0 + n]
    for t in range(n):
        d0[t] = s0[t] + h * (s1[t] + s2[t])
    d1 = d[o1:o1 + n]
    for t in range(n):
        d1[t] = h * (s1[t] - s2[t])
    d2 = d[o2:o2 + n]
    for t in range(n):
        d2[t] = h * (s1[t] + s2[t]) + s3[t]


# ----------------------------------------------------------------------- layout helpers


@cpu_inline
def _new_slab(rows, m, Q, pt, pl, x):
    # an uninitialised slab (rows, m, Q, C) flat for images of x, with zeros in every cell no
    # pixel maps to (the padding): zeroing only those, not the whole slab, saves a memset per
    # call of the slab's size
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    row = m * Q * C
    slab = np.empty(rows * row, x.dtype)
    for h in range(rows):
        if h < pt or h >= pt + H:
            slab[h * row:(h + 1) * row] = 0
        else:
            for wp in range(m * Q):
                if wp < pl or wp >= pl + W:
                    o = h * row + ((wp % m) * Q + wp // m) * C
                    slab[o:o + C] = 0
    return slab


@cpu_inline
def _to_slab(x, n, pt, pl, m, Q, slab):
    # x[n]: (C, H, W) -> slab: (Hs, m, Q, C) flat, slab[h + pt, r, q, c] = x[n, c, h, w] where
    # w + pl = m*q + r (m = 2 or 4: mask and shift, not division). Entries no pixel maps to keep
    # their value (zero: see _new_slab).
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    row = m * Q * C
    shift = m >> 1
    for h in range(H):
        base = (h + pt) * row
        for w in range(W):
            wp = w + pl
            dst = slab[base + ((wp & (m - 1)) * Q + (wp >> shift)) * C:]
            for c in range(C):
                dst[c] = x[n, c, h, w]


@cpu_inline
def _row_offsets(m, Tw, K, OW):
    # idx[a, w]: where output pixel (a, w) of a tile row sits in the rows buffer of
    # _output_transform (m, m, Tw, K): ((a*m + w % m)*Tw + w // m)*K
    idx = np.empty((m, OW), np.int64)
    for a in range(m):
        for w in range(OW):
            idx[a, w] = ((a * m + w % m) * Tw + w // m) * K
    return idx


@cpu_inline
def _from_rows(o, idx, m, th, bias, y, n):
    # o: (m, m, Tw, K) flat output rows of tile row th, o[a, r, tw, k] = out[m*th + a, m*tw + r, k]
    # -> y[n, k, m*th + a, :] + bias[k] (rows and columns past the output are dropped). The
    # offset table idx (_row_offsets) keeps the inner loop a plain indexed load: 2x faster than
    # computing the offset per pixel.
    K, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    rows = min(m, OH - m * th)
    for k in range(K):
        bk = bias[k]
        ok = o[k:]
        for a in range(rows):
            yr = y[n, k, m * th + a]
            ia = idx[a]
            for w in range(OW):
                yr[w] = ok[ia[w]] + bk


# ----------------------------------------------------------------------- kernels
# A slab holds one image, channel-last, zero-padded by (pt, pl), columns split by residue mod m:
# (m*Th + 2, m, Q, C) with Q = Tw + 1, so m*Q >= m*Tw + 2 padded columns. Row helpers transform
# one row of tiles (th) of a slab; kernels loop over their images.


@cpu_inline
def _input_rows4(slab, C, Q, th, tmp, V, p, P, Tw):
    # slab tile row th -> V[xi*6 + nu, p + tw, :] = (B^T d B)[xi, nu], d = slab rows 4th..4th+5,
    # columns 4tw..4tw+5
    row, QC, run = 4 * Q * C, Q * C, Tw * C
    s = 4 * th * row                 # B^T along H: whole slab rows at once
    _bt4(slab, s, s + row, s + 2 * row, s + 3 * row, s + 4 * row, s + 5 * row,
         tmp, 0, row, 2 * row, 3 * row, 4 * row, 5 * row, row)
    for xi in range(6):              # B along W: column j of tile tw is tmp[xi, j%4, tw + j//4]
        t = xi * row
        o = (6 * xi * P + p) * C
        _bt4(tmp, t, t + QC, t + 2 * QC, t + 3 * QC, t + C, t + QC + C,
             V, o, o + P * C, o + 2 * P * C, o + 3 * P * C, o + 4 * P * C, o + 5 * P * C, run)


@cpu_inline
def _input_rows2(slab, C, Q, th, tmp, V, p, P, Tw):
    # as _input_rows4 with F(2x2): 4x4 tiles at rows 2th, columns 2tw
    row, QC, run = 2 * Q * C, Q * C, Tw * C
    s = 2 * th * row
    _bt2(slab, s, s + row, s + 2 * row, s + 3 * row, tmp, 0, row, 2 * row, 3 * row, row)
    for xi in range(4):              # column j of tile tw is tmp[xi, j%2, tw + j//2]
        t = xi * row
        o = (4 * xi * P + p) * C
        _bt2(tmp, t, t + QC, t + C, t + QC + C,
             V, o, o + P * C, o + 2 * P * C, o + 3 * P * C, run)


@cpu_inline
def _grad_rows4(slab, K, Q, th, tmp, D, p, P, Tw):
    # slab of dy padded by (1, 1) -> D[xi*6 + nu, p + tw, :] = (A g A^T)[xi, nu] with g the
    # 4x4 output-gradient tile at (4th, 4tw): slab rows 4th+1..4th+4, columns 4tw+1..4tw+4
    row, QK, run = 4 * Q * K, Q * K, Tw * K
    s = (4 * th + 1) * row
    _a4(slab, s, s + row, s + 2 * row, s + 3 * row,
        tmp, 0, row, 2 * row, 3 * row, 4 * row, 5 * row, row)
    for xi in range(6):              # column 4tw+1+b is tmp[xi, (b+1)%4, tw + (b+1)//4]
        t = xi * row
        o = (6 * xi * P + p) * K
        _a4(tmp, t + QK, t + 2 * QK, t + 3 * QK, t + K,
            D, o, o + P * K, o + 2 * P * K, o + 3 * P * K, o + 4 * P * K, o + 5 * P * K, run)


@cpu_inline
def _grad_rows2(slab, K, Q, th, tmp, D, p, P, Tw):
    # as _grad_rows4 with F(2x2): 2x2 gradient tiles at slab rows 2th+1, columns 2tw+1
    row, QK, run = 2 * Q * K, Q * K, Tw * K
    s = (2 * th + 1) * row
    _a2(slab, s, s + row, tmp, 0, row, 2 * row, 3 * row, row)
    for xi in range(4):              # column 2tw+1+b is tmp[xi, (b+1)%2, tw + (b+1)//2]
        t = xi * row
        o = (4 * xi * P + p) * K
        _a2(tmp, t + QK, t + K, D, o, o + P * K, o + 2 * P * K, o + 3 * P * K, run)


@cpu_serial
def _input_transform4(x, n0, nb, pt, pl, Th, Tw, V, p0, P):
    # x: (N, C, H, W) -> V: (36, P, C) flat; tile p0 + (b*Th + th)*Tw + tw of image n0 + b:
    # V[xi*6 + nu, p, c] = (B^T d B)[xi, nu], d = x~[n0+b, c, 4th : 4th+6, 4tw : 4tw+6]
    C = x.shape[1]
    Q = Tw + 1
    slab = _new_slab(4 * Th + 2, 4, Q, pt, pl, x)
    tmp = np.empty(6 * 4 * Q * C, x.dtype)
    for b in range(nb):
        _to_slab(x, n0 + b, pt, pl, 4, Q, slab)
        for th in range(Th):
            _input_rows4(slab, C, Q, th, tmp, V, p0 + (b * Th + th) * Tw, P, Tw)


@cpu_serial
def _input_transform2(x, n0, nb, pt, pl, Th, Tw, V, p0, P):
    # x: (N, C, H, W) -> V: (16, P, C) flat, as _input_transform4 with F(2x2)
    C = x.shape[1]
    Q = Tw + 1
    slab = _new_slab(2 * Th + 2, 2, Q, pt, pl, x)
    tmp = np.empty(4 * 2 * Q * C, x.dtype)
    for b in range(nb):
        _to_slab(x, n0 + b, pt, pl, 2, Q, slab)
        for th in range(Th):
            _input_rows2(slab, C, Q, th, tmp, V, p0 + (b * Th + th) * Tw, P, Tw)


@cpu_serial
def _grad_transform4(dy, n0, nb, Th, Tw, D, p0, P):
    # dy: (N, K, OH, OW) -> D: (36, P, K) flat, D[xi*6 + nu, p, k] = (A g A^T)[xi, nu] with
    # g = dy[n0+b, k, 4th : 4th+4, 4tw : 4tw+4] (zero past the output)
    K = dy.shape[1]
    Q = Tw + 1
    slab = _new_slab(4 * Th + 2, 4, Q, 1, 1, dy)
    tmp = np.empty(6 * 4 * Q * K, dy.dtype)
    for b in range(nb):
        _to_slab(dy, n0 + b, 1, 1, 4, Q, slab)
        for th in range(Th):
            _grad_rows4(slab, K, Q, th, tmp, D, p0 + (b * Th + th) * Tw, P, Tw)


@cpu_serial
def _grad_transform2(dy, n0, nb, Th, Tw, D, p0, P):
    # dy: (N, K, OH, OW) -> D: (16, P, K) flat, as _grad_transform4 with F(2x2)
    K = dy.shape[1]
    Q = Tw + 1
    slab = _new_slab(2 * Th + 2, 2, Q, 1, 1, dy)
    tmp = np.empty(4 * 2 * Q * K, dy.dtype)
    for b in range(nb):
        _to_slab(dy, n0 + b, 1, 1, 2, Q, slab)
        for th in range(Th):
            _grad_rows2(slab, K, Q, th, tmp, D, p0 + (b * Th + th) * Tw, P, Tw)


@cpu_serial
def _dy_transform4(dy, n0, nb, Th, Tw, E, D, p0, P):
    # Both transforms of dy from one slab (padding 1 on every side: dx's tiles are dy's):
    # E = B^T dy~ B (the input of dx's convolution), D = A g A^T (for dw); both (36, P, K) flat
    K = dy.shape[1]
    Q = Tw + 1
    slab = _new_slab(4 * Th + 2, 4, Q, 1, 1, dy)
    tmp = np.empty(6 * 4 * Q * K, dy.dtype)
    for b in range(nb):
        _to_slab(dy, n0 + b, 1, 1, 4, Q, slab)
        for th in range(Th):
            p = p0 + (b * Th + th) * Tw
            _input_rows4(slab, K, Q, th, tmp, E, p, P, Tw)
            _grad_rows4(slab, K, Q, th, tmp, D, p, P, Tw)


@cpu_serial
def _dy_transform2(dy, n0, nb, Th, Tw, E, D, p0, P):
    # as _dy_transform4 with F(2x2)
    K = dy.shape[1]
    Q = Tw + 1
    slab = _new_slab(2 * Th + 2, 2, Q, 1, 1, dy)
    tmp = np.empty(4 * 2 * Q * K, dy.dtype)
    for b in range(nb):
        _to_slab(dy, n0 + b, 1, 1, 2, Q, slab)
        for th in range(Th):
            p = p0 + (b * Th + th) * Tw
            _input_rows2(slab, K, Q, th, tmp, E, p, P, Tw)
            _grad_rows2(slab, K, Q, th, tmp, D, p, P, Tw)


@cpu_serial
def _output_transform4(M, p0, P, bias, n0, nb, Th, Tw, y):
    # M: (36, P, K) flat -> y: (N, K, OH, OW), y[n0+b, k, 4th + a, 4tw + r] = bias[k] +
    # (A^T M[:, p, k] A)[a, r] with p = p0 + (b*Th + th)*Tw + tw
    K = y.shape[1]
    run = Tw * K
    z = np.empty(24 * run, y.dtype)  # z[a, nu]: A^T along the first axis
    o = np.empty(16 * run, y.dtype)  # o[a, r]: then along the second
    step = 6 * P * K
    idx = _row_offsets(4, Tw, K, y.shape[3])
    for b in range(nb):
        for th in range(Th):
            p = p0 + (b * Th + th) * Tw
            for nu in range(6):
                s = (nu * P + p) * K
                _at4(M, s, s + step, s + 2 * step, s + 3 * step, s + 4 * step, s + 5 * step,
                     z, nu * run, (6 + nu) * run, (12 + nu) * run, (18 + nu) * run, run)
            for a in range(4):
                s = 6 * a * run
                _at4(z, s, s + run, s + 2 * run, s + 3 * run, s + 4 * run, s + 5 * run,
                     o, 4 * a * run, (4 * a + 1) * run, (4 * a + 2) * run, (4 * a + 3) * run,
                     run)
            _from_rows(o, idx, 4, th, bias, y, n0 + b)


@cpu_serial
def _output_transform2(M, p0, P, bias, n0, nb, Th, Tw, y):
    # M: (16, P, K) flat -> y: (N, K, OH, OW), as _output_transform4 with F(2x2)
    K = y.shape[1]
    run = Tw * K
    z = np.empty(8 * run, y.dtype)
    o = np.empty(4 * run, y.dtype)
    step = 4 * P * K
    idx = _row_offsets(2, Tw, K, y.shape[3])
    for b in range(nb):
        for th in range(Th):
            p = p0 + (b * Th + th) * Tw
            for nu in range(4):
                s = (nu * P + p) * K
                _at2(M, s, s + step, s + 2 * step, s + 3 * step,
                     z, nu * run, (4 + nu) * run, run)
            for a in range(2):
                s = 4 * a * run
                _at2(z, s, s + run, s + 2 * run, s + 3 * run,
                     o, 2 * a * run, (2 * a + 1) * run, run)
            _from_rows(o, idx, 2, th, bias, y, n0 + b)


INPUT = {4: _input_transform4, 2: _input_transform2}
OUTPUT = {4: _output_transform4, 2: _output_transform2}
GRAD = {4: _grad_transform4, 2: _grad_transform2}
DY = {4: _dy_transform4, 2: _dy_transform2}


# ----------------------------------------------------------------------- filters

#: Filters transformed per block: the gathered taps and the half-transformed block stay in L1.
FILTER_BLOCK = 256


@cpu_serial
def _filter_transform4(w, flip, U, k0, k1):
    # w: (K, C, 3, 3) -> U: (36, K*C) flat, U[xi*6 + nu, kc] = (G w[kc] G^T)[xi, nu] for the
    # filters kc in [k0, k1); with flip, w[kc] is read rotated by 180 degrees (dx's filters)
    wf = w.reshape(-1)
    KC = w.shape[0] * w.shape[1]
    blk = FILTER_BLOCK
    taps = np.empty(9 * blk, w.dtype)          # taps[i*3 + j, t] = w[kc0 + t, i, j]
    half = np.empty(18 * blk, w.dtype)         # half[xi*3 + j, t] = sum_i G[xi, i] taps[i, j]
    for kc0 in range(k0, k1, blk):
        n = min(blk, k1 - kc0)
        for ij in range(9):
            src = 8 - ij if flip else ij
            tij = taps[ij * blk:ij * blk + n]
            for t in range(n):
                tij[t] = wf[(kc0 + t) * 9 + src]
        for j in range(3):
            _g4(taps, j * blk, (3 + j) * blk, (6 + j) * blk,
                half, j * blk, (3 + j) * blk, (6 + j) * blk, (9 + j) * blk, (12 + j) * blk,
                (15 + j) * blk, n)
        for xi in range(6):
            o = 6 * xi * KC + kc0
            _g4(half, 3 * xi * blk, (3 * xi + 1) * blk, (3 * xi + 2) * blk,
                U, o, o + KC, o + 2 * KC, o + 3 * KC, o + 4 * KC, o + 5 * KC, n)


@cpu_serial
def _filter_transform2(w, flip, U, k0, k1):
    # w: (K, C, 3, 3) -> U: (16, K*C) flat, as _filter_transform4 with F(2x2)
    wf = w.reshape(-1)
    KC = w.shape[0] * w.shape[1]
    blk = FILTER_BLOCK
    taps = np.empty(9 * blk, w.dtype)
    half = np.empty(12 * blk, w.dtype)
    for kc0 in range(k0, k1, blk):
        n = min(blk, k1 - kc0)
        for ij in range(9):
            src = 8 - ij if flip else ij
            tij = taps[ij * blk:ij * blk + n]
            for t in range(n):
                tij[t] = wf[(kc0 + t) * 9 + src]
        for j in range(3):
            _g2(taps, j * blk, (3 + j) * blk, (6 + j) * blk,
                half, j * blk, (3 + j) * blk, (6 + j) * blk, (9 + j) * blk, n)
        for xi in range(4):
            o = 4 * xi * KC + kc0
            _g2(half, 3 * xi * blk, (3 * xi + 1) * blk, (3 * xi + 2) * blk,
                U, o, o + KC, o + 2 * KC, o + 3 * KC, n)


@cpu_serial
def _filter_gradient4(W, dw, k0, k1):
    # W: (36, K*C) flat -> dw: (K, C, 3, 3), dw[kc] = G^T W[:, kc] G for kc in [k0, k1)
    dwf = dw.reshape(-1)
    KC = dw.shape[0] * dw.shape[1]
    blk = FILTER_BLOCK
    half = np.empty(18 * blk, dw.dtype)        # half[xi*3 + j, t] = sum_nu G[nu, j] W[xi, nu]
    taps = np.empty(9 * blk, dw.dtype)         # taps[i*3 + j, t] = sum_xi G[xi, i] half[xi, j]
    for kc0 in range(k0, k1, blk):
        n = min(blk, k1 - kc0)
        for xi in range(6):
            s = 6 * xi * KC + kc0
            _gt4(W, s, s + KC, s + 2 * KC, s + 3 * KC, s + 4 * KC, s + 5 * KC,
                 half, 3 * xi * blk, (3 * xi + 1) * blk, (3 * xi + 2) * blk, n)
        for j in range(3):
            _gt4(half, j * blk, (3 + j) * blk, (6 + j) * blk, (9 + j) * blk, (12 + j) * blk,
                 (15 + j) * blk, taps, j * blk, (3 + j) * blk, (6 + j) * blk, n)
        for ij in range(9):
            tij = taps[ij * blk:ij * blk + n]
            for t in range(n):
                dwf[(kc0 + t) * 9 + ij] = tij[t]


@cpu_serial
def _filter_gradient2(W, dw, k0, k1):
    # W: (16, K*C) flat -> dw: (K, C, 3, 3), as _filter_gradient4 with F(2x2)
    dwf = dw.reshape(-1)
    KC = dw.shape[0] * dw.shape[1]
    blk = FILTER_BLOCK
    half = np.empty(12 * blk, dw.dtype)
    taps = np.empty(9 * blk, dw.dtype)
    for kc0 in range(k0, k1, blk):
        n = min(blk, k1 - kc0)
        for xi in range(4):
            s = 4 * xi * KC + kc0
            _gt2(W, s, s + KC, s + 2 * KC, s + 3 * KC,
                 half, 3 * xi * blk, (3 * xi + 1) * blk, (3 * xi + 2) * blk, n)
        for j in range(3):
            _gt2(half, j * blk, (3 + j) * blk, (6 + j) * blk, (9 + j) * blk,
                 taps, j * blk, (3 + j) * blk, (6 + j) * blk, n)
        for ij in range(9):
            tij = taps[ij * blk:ij * blk + n]
            for t in range(n):
                dwf[(kc0 + t) * 9 + ij] = tij[t]


FILTER = {4: _filter_transform4, 2: _filter_transform2}
FILTER_GRADIENT = {4: _filter_gradient4, 2: _filter_gradient2}


def _filter_calls(kernel, args, KC):
    # the filter kernel over ranges of whole blocks of the K*C filters, one per worker
    blocks = -(-KC // FILTER_BLOCK)
    return [(kernel,) + args + (b0 * FILTER_BLOCK, min(KC, b1 * FILTER_BLOCK))
            for b0, b1 in _ranges(blocks, workers())]


def filter_transform_calls(w, m, flip, U):
    """Tasks writing U (a*a, K, C) = G w[k, c] G^T for every (k, c); with ``flip`` the taps are
    reversed (w[k, c, 2 - i, 2 - j]: dx's filters, channels still in (K, C) order)."""
    return _filter_calls(FILTER[m], (w, flip, U.reshape(-1)), w.shape[0] * w.shape[1])


def filter_gradient_calls(W, m, dw):
    """Tasks writing dw[k, c] = G^T W[:, k, c] G for W (a*a, K, C) into dw (K, C, 3, 3)."""
    return _filter_calls(FILTER_GRADIENT[m], (W.reshape(-1), dw), dw.shape[0] * dw.shape[1])


def filter_transform(w, m, flip=False):
    """U (a*a, K, C) = G w[k, c] G^T (see filter_transform_calls), in a new array."""
    U = np.empty(((m + 2) ** 2,) + w.shape[:2], w.dtype)
    run_tasks(filter_transform_calls(w, m, flip, U))
    return U


def filter_gradient(W, m, dw):
    """dw[k, c] = G^T W[:, k, c] G for W (a*a, K, C), into dw."""
    run_tasks(filter_gradient_calls(W, m, dw))
    return dw


# ----------------------------------------------------------------------- pipeline


def _ranges(n, parts):
    """Split range(n) into ``parts`` contiguous (start, stop) pieces (fewer if n is small)."""
    parts = max(1, min(parts, n))
    cuts = [n * i // parts for i in range(parts + 1)]
    return [(cuts[i], cuts[i + 1]) for i in range(parts)]


def _geometry(OH, OW):
    m = tile_size(OH, OW)
    return m, (m + 2) ** 2, -(-OH // m), -(-OW // m)


def _chunks(N, tiles, a2, channels, itemsize):
    """Super-chunks of about CHUNK_TILES tiles, their transformed arrays (a*a, tiles*B,
    channels) at most CHUNK_BYTES, balanced in size (fixed by the shapes alone, never by the
    thread count)."""
    B = min(N, -(-CHUNK_TILES // tiles), CHUNK_BYTES // (a2 * tiles * channels * itemsize))
    chunks = -(-N // max(1, B))
    return [(N * i // chunks, N * (i + 1) // chunks) for i in range(chunks)]


def _image_tasks(nb):
    """Image ranges of one super-chunk for the transform phase: a few per worker, so that a
    slow thread (a busy core) does not hold the others up."""
    return _ranges(nb, 4 * workers())


def _gemm_tasks(a2):
    return _ranges(a2, 3 * workers())


def _gemm_forward(V, Ut, M, s0, s1):
    # M[xi] (P, K) = V[xi] (P, C) @ Ut[xi] (C, K) for xi in [s0, s1)
    np.matmul(V[s0:s1], Ut[s0:s1], out=M[s0:s1])


def _gemm_dw(D, V, W, first, s0, s1):
    # W[xi] (K, C) (+)= D[xi]^T (K, P) @ V[xi] (P, C) for xi in [s0, s1); chunks add in order
    if first:
        np.matmul(D[s0:s1].transpose(0, 2, 1), V[s0:s1], out=W[s0:s1])
    else:
        W[s0:s1] += np.matmul(D[s0:s1].transpose(0, 2, 1), V[s0:s1])


def _gemm_backward(D, V, E, Ud, W, first, X, s0, s1):
    # for xi in [s0, s1): W[xi] (K, C) (+)= D[xi]^T (K, P) @ V[xi] (P, C), and dx's products
    # X[xi] (P, C) = E[xi] (P, K) @ Ud[xi] (K, C)
    _gemm_dw(D, V, W, first, s0, s1)
    np.matmul(E[s0:s1], Ud[s0:s1], out=X[s0:s1])


def _backward_inputs(x, dy, n0, nb, m, Th, Tw, V, E, D, p0, P):
    # transforms of a range of images: x -> V; dy -> E (dx's input) and D (dw's gradient tiles)
    INPUT[m](x, n0, nb, 1, 1, Th, Tw, V, p0, P)
    DY[m](dy, n0, nb, Th, Tw, E, D, p0, P)


# Small channel counts: whole-chunk tasks. With C, K <= TASK_CHANNELS the phases below cost
# more in hand-offs than they gain: a 64x32x28x28 -> 32 forward has 11 super-chunks, so 22 waits
# for both workers (~50 us each on 2 cores, more when a core is busy elsewhere) and ~150 tasks,
# while each phase holds only ~0.1-0.3 ms of work. Instead each task runs one super-chunk from
# input transform through GEMMs to output transform on its own thread, in that thread's scratch
# buffers (which stay in its L2: no transformed arrays move between cores), and the conv waits
# once. The transformed filters, a*a*K*C floats (<= 2.4 MiB), are shared read-only; dw's chunk
# partials are summed afterwards in chunk order (the same additions as the phased path).
# Measured fwd+bwd at batch 64 (separate processes, 2 threads): 64->128 at 16x16 25.3 -> 21.7 ms
# and 128->128 at 16x16 37.4 -> 35.2 ms with 128 instead of 64; larger counts lose (256 at 8x8:
# 1.5-1.8x slower), their phases hold enough work.

#: Largest channel count (max(C, K)) that runs as whole-chunk tasks.
TASK_CHANNELS = 128
#: Tiles per whole-chunk task: enough rows for BLAS, and several tasks per worker so that a
#: worker slowed by a busy core does not hold the conv up.
TASK_TILES = 256


def _whole_chunk_tasks(C, K):
    return max(C, K) <= TASK_CHANNELS


def _task_chunks(N, tiles):
    """Image ranges of the whole-chunk tasks, about TASK_TILES tiles each (fixed by the
    shapes alone, never by the thread count)."""
    chunks = -(-N // max(1, min(N, -(-TASK_TILES // tiles))))
    return [(N * i // chunks, N * (i + 1) // chunks) for i in range(chunks)]


def _forward_chunk(x, Ut, bias, pt, pl, c0, c1, out):
    # out[c0:c1] from x[c0:c1]: V (a*a, P, C) -> M[xi] (P, K) = V[xi] @ Ut[xi] -> out, all on
    # the calling thread, in its scratch buffers
    C, K = x.shape[1], out.shape[1]
    m, a2, Th, Tw = _geometry(out.shape[2], out.shape[3])
    P = (c1 - c0) * Th * Tw
    V = scratch("V", (a2, P, C), x.dtype)
    M = scratch("M", (a2, P, K), x.dtype)
    INPUT[m](x, c0, c1 - c0, pt, pl, Th, Tw, V.reshape(-1), 0, P)
    np.matmul(V, Ut, out=M)
    OUTPUT[m](M.reshape(-1), 0, P, bias, c0, c1 - c0, Th, Tw, out)


def _backward_chunk(dy, x, Ud, c0, c1, zeros, W_part, dx):
    # images c0..c1-1 of the fused padding-1 backward on the calling thread:
    # W_part[xi] (K, C) = D[xi]^T @ V[xi], X[xi] (P, C) = E[xi] @ Ud[xi] -> dx[c0:c1]
    C, K = x.shape[1], dy.shape[1]
    m, a2, Th, Tw = _geometry(dy.shape[2], dy.shape[3])
    P = (c1 - c0) * Th * Tw
    V = scratch("V", (a2, P, C), x.dtype)
    E = scratch("M", (a2, P, K), x.dtype)
    D = scratch("D", (a2, P, K), x.dtype)
    X = scratch("X", (a2, P, C), x.dtype)
    _backward_inputs(x, dy, c0, c1 - c0, m, Th, Tw, V.reshape(-1), E.reshape(-1),
                     D.reshape(-1), 0, P)
    np.matmul(D.transpose(0, 2, 1), V, out=W_part)
    np.matmul(E, Ud, out=X)
    OUTPUT[m](X.reshape(-1), 0, P, zeros, c0, c1 - c0, Th, Tw, dx)


# Each super-chunk runs in phases, each a batch of tasks for the workers: transforms per range
# of images, then GEMMs per range of xi, then output transforms per range of images. A chunk's
# output transforms share their phase with the next chunk's input transforms (they touch
# different buffers), and the filter transform shares the first phase: two waits per chunk.


def _conv(x, Ut, first_calls, bias, pt, pl, out):
    """out (N, K, OH, OW) = Winograd conv of x (N, C, H, W) with transformed filters Ut
    (a*a, C, K), which ``first_calls`` fill during the first phase (input padding pt, pl; the
    output size is out's) + bias."""
    N, C = x.shape[:2]
    K, OH, OW = out.shape[1:]
    m, a2, Th, Tw = _geometry(OH, OW)
    T = Th * Tw
    if _whole_chunk_tasks(C, K):
        with single_threaded_blas():
            run_tasks(first_calls)
            run_tasks([(_forward_chunk, x, Ut, bias, pt, pl, c0, c1, out)
                       for c0, c1 in _task_chunks(N, T)])
        return out
    pending = first_calls
    with single_threaded_blas():
        for c0, c1 in _chunks(N, T, a2, max(C, K), x.itemsize):
            P = (c1 - c0) * T
            V = scratch("V", (a2, P, C), x.dtype)
            M = scratch("M", (a2, P, K), x.dtype)
            images = _image_tasks(c1 - c0)
            run_tasks(pending + [(INPUT[m], x, c0 + i0, i1 - i0, pt, pl, Th, Tw, V.reshape(-1),
                                  i0 * T, P) for i0, i1 in images])
            run_tasks([(_gemm_forward, V, Ut, M, s0, s1) for s0, s1 in _gemm_tasks(a2)])
            pending = [(OUTPUT[m], M.reshape(-1), i0 * T, P, bias, c0 + i0, i1 - i0, Th, Tw, out)
                       for i0, i1 in images]
        run_tasks(pending)
    return out


def forward(x, w, b, g, out):
    """y = conv2d(x, w) + b for geometry g (see applicable()), into out."""
    m = tile_size(g.OH, g.OW)
    bias = b if b is not None else np.zeros(g.K, x.dtype)
    U = scratch("U", ((m + 2) ** 2, g.K, g.C), x.dtype)
    return _conv(x, U.transpose(0, 2, 1), filter_transform_calls(w, m, False, U), bias, g.pt,
                 g.pl, out)


def backward(dy, x, w, g, dx, dw):
    """dw (and dx unless it is None) of the convolution with geometry g, into dw and dx.

    With padding 1 on every side, dx's convolution pads dy by 1 too and its tiles are dy's, so
    one pass per chunk transposes dy once into both of its transforms (E for dx, D for dw) and
    one GEMM task per xi does both products. Other paddings run backward_dw and backward_dx.
    """
    if dx is None or not g.pt == g.pb == g.pl == g.pr == 1:
        backward_dw(dy, x, g, dw)
        if dx is not None:
            backward_dx(dy, w, g, dx)
        return dx, dw
    N, C, K = g.N, g.C, g.K
    m, a2, Th, Tw = _geometry(g.OH, g.OW)
    T = Th * Tw
    Ud = scratch("U", (a2, K, C), x.dtype)                      # dx's filters
    W = scratch("W", (a2, K, C), x.dtype)
    zeros = np.zeros(C, x.dtype)
    pending = filter_transform_calls(w, m, True, Ud)
    if _whole_chunk_tasks(C, K):
        chunks = _task_chunks(N, T)
        parts = scratch("Wparts", (len(chunks), a2, K, C), x.dtype)
        with single_threaded_blas():
            run_tasks(pending)
            run_tasks([(_backward_chunk, dy, x, Ud, c0, c1, zeros, parts[t], dx)
                       for t, (c0, c1) in enumerate(chunks)])
            W[...] = parts[0]
            for t in range(1, len(chunks)):          # in chunk order, as the phased path adds
                W += parts[t]
            run_tasks(filter_gradient_calls(W, m, dw))
        return dx, dw
    with single_threaded_blas():
        for c0, c1 in _chunks(N, T, a2, max(C, K), x.itemsize):
            P = (c1 - c0) * T
            V = scratch("V", (a2, P, C), x.dtype)
            E = scratch("M", (a2, P, K), x.dtype)
            D = scratch("D", (a2, P, K), x.dtype)
            X = scratch("X", (a2, P, C), x.dtype)
            images = _image_tasks(c1 - c0)
            run_tasks(pending + [(_backward_inputs, x, dy, c0 + i0, i1 - i0, m, Th, Tw,
                                  V.reshape(-1), E.reshape(-1), D.reshape(-1), i0 * T, P)
                                 for i0, i1 in images])
            run_tasks([(_gemm_backward, D, V, E, Ud, W, c0 == 0, X, s0, s1)
                       for s0, s1 in _gemm_tasks(a2)])
            pending = [(OUTPUT[m], X.reshape(-1), i0 * T, P, zeros, c0 + i0, i1 - i0, Th, Tw, dx)
                       for i0, i1 in images]
        run_tasks(pending + filter_gradient_calls(W, m, dw))
    return dx, dw


def backward_dx(dy, w, g, dx):
    """dx = the 3x3 stride-1 conv of dy (padded 2 - pad) with w flipped and transposed."""
    m = tile_size(g.H, g.W)
    Ud = scratch("U", ((m + 2) ** 2, g.K, g.C), dy.dtype)      # (a*a, K, C): K in, C out
    return _conv(dy, Ud, filter_transform_calls(w, m, True, Ud), np.zeros(g.C, dy.dtype),
                 2 - g.pt, 2 - g.pl, dx)


def backward_dw(dy, x, g, dw):
    """dw = sum over tiles of G^T [(A dy A^T) . (B^T x~ B)] G, into dw (K, C, 3, 3)."""
    N, C, K = g.N, g.C, g.K
    m, a2, Th, Tw = _geometry(g.OH, g.OW)
    T = Th * Tw
    W = scratch("W", (a2, K, C), x.dtype)
    with single_threaded_blas():
        for c0, c1 in _chunks(N, T, a2, max(C, K), x.itemsize):
            P = (c1 - c0) * T
            V = scratch("V", (a2, P, C), x.dtype)
            D = scratch("D", (a2, P, K), x.dtype)
            images = _image_tasks(c1 - c0)
            run_tasks([(INPUT[m], x, c0 + i0, i1 - i0, g.pt, g.pl, Th, Tw, V.reshape(-1),
                        i0 * T, P) for i0, i1 in images]
                      + [(GRAD[m], dy, c0 + i0, i1 - i0, Th, Tw, D.reshape(-1), i0 * T, P)
                         for i0, i1 in images])
            run_tasks([(_gemm_dw, D, V, W, c0 == 0, s0, s1) for s0, s1 in _gemm_tasks(a2)])
        run_tasks(filter_gradient_calls(W, m, dw))
    return dw
