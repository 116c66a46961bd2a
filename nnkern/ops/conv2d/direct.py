"""Direct float32 3x3 convolution, stride 1, for few input channels (the first layer, C = 1..3).

With C = 1 or 3 an im2col + GEMM conv is a thin GEMM (K=64 x 9C x L): BLAS runs it far from
its peak and the im2col pass costs as much as the arithmetic. Here Numba does the arithmetic
itself, in loops LLVM vectorises along the flattened output plane.

Shifted copies. For one image, ``xs[c, j]`` is the zero-padded input shifted left by j columns
and cut to the output width, one row per padded input row (OH + 2 rows of OW):

    xs[c, j, h, ow] = x~[n, c, h, ow + j]          x~: x zero-padded by pt (top), pl (left)

Flattened to p = oh*OW + ow, the tap (i, j) of output p reads xs[c, j] at p + i*OW: every tap is
a contiguous run of the same length L = OH*OW, so each kernel below is one long unit-stride
loop over p (vectorised by LLVM; the views ``xs[c, j, i*OW:]`` keep the index p provably
non-negative, so no wraparound check turns the loads into gathers). The copies take 3*C*(OH+2)*OW
floats (39 KiB for C = 3 at 32x32), built once per image and reused by all K filters while
they stay in L1.

    forward   y[n, k, p]  = b[k] + sum_{c,i,j} w[k, c, i, j] * xs[c, j, p + i*OW]
    backward  dw[k, c, i, j] = sum_n sum_p dy[n, k, p] * xs_n[c, j, p + i*OW]
              db[k]          = sum_n sum_p dy[n, k, p]

Each (n, k) plane of the backward is a float32 dot product of L terms (a partial per image,
in ``part``); the partials are summed over the images in float64, in image order. The work
is split over images only (one prange iteration per image, each writing its own outputs), so
the result is the same bit for bit whatever the thread count or variant.

dx (not needed for a first layer) is the correlation of dy with the flipped, transposed
filters, done by the general forward path (cpu.py).
"""

import numpy as np
from numba import prange

from nnkern._jit import cpu_inline, cpu_kernel

#: The direct path takes convs with at most this many input channels (measured on 2 cores,
#: N=64, 32x32, K=64: see cpu.py's docstring).
MAX_CHANNELS = 3


def applicable(g, dtype):
    """float32, 3x3, stride 1, dilation 1, at most MAX_CHANNELS inputs, padding <= 2 and the same
    on both sides of an axis (as every int padding and 3x3 "same" are; dx relies on it)."""
    return (dtype == np.float32 and 1 <= g.C <= MAX_CHANNELS and g.KH == g.KW == 3
            and g.sh == g.sw == 1 and g.dh == g.dw == 1
            and g.pt == g.pb <= 2 and g.pl == g.pr <= 2)


@cpu_inline
def _shifted_copies(x, n, xs, pt, pl):
    # x: (N, C, H, W) -> xs: (C, 3, HP, OW) for image n, HP = OH + 2 padded rows:
    # xs[c, j, h, ow] = x[n, c, h - pt, ow + j - pl], 0 outside x (the zero padding)
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    HP, OW = xs.shape[2], xs.shape[3]
    for c in range(C):
        for j in range(3):
            lo = min(OW, max(0, pl - j))         # ow < lo reads left padding
            hi = max(lo, min(OW, W + pl - j))    # ow >= hi reads right padding
            for h in range(HP):
                ih = h - pt
                if ih < 0 or ih >= H:
                    for ow in range(OW):
                        xs[c, j, h, ow] = 0
                    continue
                for ow in range(lo):
                    xs[c, j, h, ow] = 0
                for ow in range(lo, hi):
                    xs[c, j, h, ow] = x[n, c, ih, ow + j - pl]
                for ow in range(hi, OW):
                    xs[c, j, h, ow] = 0


@cpu_kernel
def _forward_kernel(x, w, b, y, pt, pl):
    # x: (N, C, H, W), w: (K, C, 3, 3), b: (K,) -> y: (N, K, OH, OW)
    # y[n, k, p] = b[k] + sum_{c,i,j} w[k, c, i, j] * xs[c, j, p + i*OW]      (p = oh*OW + ow)
    # One iteration per image; per filter k, one pass over the plane per input channel c (the
    # first pass adds the bias and stores, the others add to y while its plane is in L1).
    N, C = x.shape[0], x.shape[1]
    K, OH, OW = w.shape[0], y.shape[2], y.shape[3]
    L = OH * OW
    for n in prange(N):
        xs4 = np.empty((C, 3, OH + 2, OW), np.float32)
        _shifted_copies(x, n, xs4, pt, pl)
        xs = xs4.reshape(C, 3, (OH + 2) * OW)
        for k in range(K):
            yk = y[n, k].reshape(L)
            for c in range(C):
                # the nine taps as runs of length L: row i of the window is offset i*OW
                a0, a1, a2 = xs[c, 0, :L], xs[c, 1, :L], xs[c, 2, :L]
                b0, b1, b2 = xs[c, 0, OW:OW + L], xs[c, 1, OW:OW + L], xs[c, 2, OW:OW + L]
                c0, c1, c2 = (xs[c, 0, 2 * OW:2 * OW + L], xs[c, 1, 2 * OW:2 * OW + L],
                              xs[c, 2, 2 * OW:2 * OW + L])
                f = w[k, c]
                f00, f01, f02 = f[0, 0], f[0, 1], f[0, 2]
                f10, f11, f12 = f[1, 0], f[1, 1], f[1, 2]
                f20, f21, f22 = f[2, 0], f[2, 1], f[2, 2]
                if c == 0:
                    bias = b[k]
                    for p in range(L):
                        yk[p] = (bias + f00 * a0[p] + f01 * a1[p] + f02 * a2[p]
                                 + f10 * b0[p] + f11 * b1[p] + f12 * b2[p]
                                 + f20 * c0[p] + f21 * c1[p] + f22 * c2[p])
                else:
                    for p in range(L):
                        yk[p] += (f00 * a0[p] + f01 * a1[p] + f02 * a2[p]
                                  + f10 * b0[p] + f11 * b1[p] + f12 * b2[p]
                                  + f20 * c0[p] + f21 * c1[p] + f22 * c2[p])


@cpu_kernel
def _backward_kernel(dy, x, part, dbp, pt, pl):
    # dy: (N, K, OH, OW), x: (N, C, H, W) -> per-image float32 partials
    #   part (N, K, C, 9): part[n, k, c, 3i + j] = sum_p dy[n, k, p] * xs_n[c, j, p + i*OW]
    #   dbp (N, K):        dbp[n, k] = sum_p dy[n, k, p]
    # One iteration per image; per (k, c) one loop of nine dot products over the plane.
    N, C = x.shape[0], x.shape[1]
    K, OH, OW = dy.shape[1], dy.shape[2], dy.shape[3]
    L = OH * OW
    for n in prange(N):
        xs4 = np.empty((C, 3, OH + 2, OW), np.float32)
        _shifted_copies(x, n, xs4, pt, pl)
        xs = xs4.reshape(C, 3, (OH + 2) * OW)
        for k in range(K):
            d = dy[n, k].reshape(L)
            s = np.float32(0)
            for p in range(L):
                s += d[p]
            dbp[n, k] = s
            for c in range(C):
                a0, a1, a2 = xs[c, 0, :L], xs[c, 1, :L], xs[c, 2, :L]
                b0, b1, b2 = xs[c, 0, OW:OW + L], xs[c, 1, OW:OW + L], xs[c, 2, OW:OW + L]
                c0, c1, c2 = (xs[c, 0, 2 * OW:2 * OW + L], xs[c, 1, 2 * OW:2 * OW + L],
                              xs[c, 2, 2 * OW:2 * OW + L])
                s00 = s01 = s02 = s10 = s11 = s12 = s20 = s21 = s22 = np.float32(0)
                for p in range(L):
                    e = d[p]
                    s00 += e * a0[p]
                    s01 += e * a1[p]
                    s02 += e * a2[p]
                    s10 += e * b0[p]
                    s11 += e * b1[p]
                    s12 += e * b2[p]
                    s20 += e * c0[p]
                    s21 += e * c1[p]
                    s22 += e * c2[p]
                q = part[n, k, c]
                q[0], q[1], q[2] = s00, s01, s02
                q[3], q[4], q[5] = s10, s11, s12
                q[6], q[7], q[8] = s20, s21, s22


def forward(x, w, b, g, y):
    """y (N, K, OH, OW) = conv(x, w) + b, written in place."""
    bias = np.zeros(g.K, np.float32) if b is None else b
    _forward_kernel.for_size(y.size * g.C)(x, w, bias, y, g.pt, g.pl)
    return y


def backward(dy, x, g, dw, db):
    """dw (K, C, 3, 3) and, if db is not None, db (K,), written in place."""
    part = np.empty((g.N, g.K, g.C, 9), np.float32)
    dbp = np.empty((g.N, g.K), np.float32)
    _backward_kernel.for_size(dy.size * g.C)(dy, x, part, dbp, g.pt, g.pl)
    # float64 sums over the images, in image order (numpy reduces axis 0 row by row)
    dw.reshape(g.K, g.C * 9)[...] = part.reshape(g.N, g.K * g.C * 9).sum(axis=0,
                                                                        dtype=np.float64
                                                                        ).reshape(g.K, -1)
    if db is not None:
        db[...] = dbp.sum(axis=0, dtype=np.float64)
    return dw, db
