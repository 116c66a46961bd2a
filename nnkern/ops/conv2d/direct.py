"""Direct float32 3x3 convolution, stride 1, for few input channels (the first layer, C = 1..3).

With C = 1 or 3 an im2col + GEMM conv is a thin GEMM (K=64 x 9C x L): BLAS runs it far from
its peak and the im2col pass costs as much as the arithmetic. Here Numba does the arithmetic
itself, in loops LLVM vectorises along the flattened output plane.

Shifted copies. For one image, ``xs[c, j]`` is the zero-padded input shifted left by j columns
and cut to the output width, one row per padded input row (OH + 2 rows of OW):

    xs[c, j, h, ow] = x~[n, c, h, ow + j]          x~: x zero-padded by pt (top), pl (left)

Flattened to p = oh*OW + ow, the tap (i, j) of output p reads xs[c, j] at p + i*OW: every tap is
a contiguous run of the same length L = OH*OW, so each kernel below is one long unit-stride
loop over p (vectorised by LLVM; the taps are read from one flat array at unsigned offsets,
so no negative-index wraparound check turns the loads into gathers, see _tap_offsets). The
copies take 3*C*(OH+2)*OW floats (39 KiB for C = 3 at 32x32), built once per image and reused
by all K filters; one channel's 13 KiB stays in L1 through a pass.

    forward   y[n, k, p]  = b[k] + sum_{c,i,j} w[k, c, i, j] * xs[c, j, p + i*OW]
    backward  dw[k, c, i, j] = sum_n sum_p dy[n, k, p] * xs_n[c, j, p + i*OW]
              db[k]          = sum_n sum_p dy[n, k, p]

Each (n, k) plane of the backward is a float32 dot product of L terms (a partial per image,
in ``part``); the partials are summed over the images in float64, in image order. The work
is split over images only (one prange iteration per image, each writing its own outputs), so
the result is the same bit for bit whatever the thread count or variant.

dx (not needed for a first layer) is the correlation of dy with the flipped, transposed
filters, done by the general forward path (cpu.py).

The kernels follow their arrays' dtype; ``applicable`` sends only float32 here (float64 keeps
the exact reference path), and the tests run them in float64 too, for the finite-difference
gradient check.
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


@cpu_inline
def _tap_offsets(S, OW):
    # where tap (i, j) starts in the flat (3*S,) copies of one channel: j*S + i*OW, as unsigned
    # ints: a signed index p + offset gets Numba's negative-index wraparound, which LLVM
    # vectorises as gathers; unsigned indices are plain loads
    u = np.uint64
    return (u(0), u(S), u(2 * S), u(OW), u(S + OW), u(2 * S + OW), u(2 * OW), u(S + 2 * OW),
            u(2 * S + 2 * OW))


@cpu_inline
def _one_filter(xs, w, b, y, n, k, offsets, L):
    # y[n, k, p] = b[k] + sum_c sum_{i,j} w[k, c, i, j] * xs[c, j, p + i*OW]: one pass over the
    # plane per channel (the first stores, the others add while the plane is in L1)
    yk = y[n, k].reshape(L)
    for c in range(xs.shape[0]):
        X = xs[c]
        o0, o1, o2, o3, o4, o5, o6, o7, o8 = offsets
        f = w[k, c]
        f0, f1, f2, f3, f4, f5, f6, f7, f8 = (f[0, 0], f[0, 1], f[0, 2], f[1, 0], f[1, 1],
                                              f[1, 2], f[2, 0], f[2, 1], f[2, 2])
        if c == 0:
            bias = b[k]
            for p in range(L):
                u = np.uint64(p)
                yk[p] = (bias + f0 * X[u + o0] + f1 * X[u + o1] + f2 * X[u + o2]
                         + f3 * X[u + o3] + f4 * X[u + o4] + f5 * X[u + o5]
                         + f6 * X[u + o6] + f7 * X[u + o7] + f8 * X[u + o8])
        else:
            for p in range(L):
                u = np.uint64(p)
                yk[p] += (f0 * X[u + o0] + f1 * X[u + o1] + f2 * X[u + o2]
                          + f3 * X[u + o3] + f4 * X[u + o4] + f5 * X[u + o5]
                          + f6 * X[u + o6] + f7 * X[u + o7] + f8 * X[u + o8])


@cpu_inline
def _two_filters(xs, w, b, y, n, k, offsets, L):
    # _one_filter for the filters k and k+1 at once: each tap loaded once serves both
    yk, zk = y[n, k].reshape(L), y[n, k + 1].reshape(L)
    for c in range(xs.shape[0]):
        X = xs[c]
        o0, o1, o2, o3, o4, o5, o6, o7, o8 = offsets
        f, g = w[k, c], w[k + 1, c]
        f0, f1, f2, f3, f4, f5, f6, f7, f8 = (f[0, 0], f[0, 1], f[0, 2], f[1, 0], f[1, 1],
                                              f[1, 2], f[2, 0], f[2, 1], f[2, 2])
        g0, g1, g2, g3, g4, g5, g6, g7, g8 = (g[0, 0], g[0, 1], g[0, 2], g[1, 0], g[1, 1],
                                              g[1, 2], g[2, 0], g[2, 1], g[2, 2])
        if c == 0:
            bf, bg = b[k], b[k + 1]
            for p in range(L):
                u = np.uint64(p)
                u0, u1, u2, u3, u4 = X[u + o0], X[u + o1], X[u + o2], X[u + o3], X[u + o4]
                u5, u6, u7, u8 = X[u + o5], X[u + o6], X[u + o7], X[u + o8]
                yk[p] = (bf + f0 * u0 + f1 * u1 + f2 * u2 + f3 * u3 + f4 * u4 + f5 * u5
                         + f6 * u6 + f7 * u7 + f8 * u8)
                zk[p] = (bg + g0 * u0 + g1 * u1 + g2 * u2 + g3 * u3 + g4 * u4 + g5 * u5
                         + g6 * u6 + g7 * u7 + g8 * u8)
        else:
            for p in range(L):
                u = np.uint64(p)
                u0, u1, u2, u3, u4 = X[u + o0], X[u + o1], X[u + o2], X[u + o3], X[u + o4]
                u5, u6, u7, u8 = X[u + o5], X[u + o6], X[u + o7], X[u + o8]
                yk[p] += (f0 * u0 + f1 * u1 + f2 * u2 + f3 * u3 + f4 * u4 + f5 * u5
                          + f6 * u6 + f7 * u7 + f8 * u8)
                zk[p] += (g0 * u0 + g1 * u1 + g2 * u2 + g3 * u3 + g4 * u4 + g5 * u5
                          + g6 * u6 + g7 * u7 + g8 * u8)


@cpu_kernel
def _forward_kernel(x, w, b, y, pt, pl):
    # x: (N, C, H, W), w: (K, C, 3, 3), b: (K,) -> y: (N, K, OH, OW)
    # y[n, k, p] = b[k] + sum_{c,i,j} w[k, c, i, j] * xs[c, j, p + i*OW]      (p = oh*OW + ow)
    # One iteration per image. With C >= 2 two filters share each pass (halves the loads of
    # the taps; 1.50 vs 1.62 ms at C = 3 with per-tap views, no difference measured (1.55 ms)
    # with the flat unsigned taps); with C = 1 the pass is bound by the stores of y, which one
    # plane at a time streams better (0.54 vs 0.68 ms, per-tap views).
    N, C = x.shape[0], x.shape[1]
    K, OH, OW = w.shape[0], y.shape[2], y.shape[3]
    L = OH * OW
    offsets = _tap_offsets((OH + 2) * OW, OW)
    pairs = K // 2 if C >= 2 else 0
    for n in prange(N):
        xs4 = np.empty((C, 3, OH + 2, OW), x.dtype)
        _shifted_copies(x, n, xs4, pt, pl)
        xs = xs4.reshape(C, 3 * (OH + 2) * OW)
        for q in range(pairs):
            _two_filters(xs, w, b, y, n, 2 * q, offsets, L)
        for k in range(2 * pairs, K):
            _one_filter(xs, w, b, y, n, k, offsets, L)


@cpu_inline
def _dw_one(dy, xs, part, dbp, n, k, offsets, L):
    # part[n, k, c, 3i + j] = sum_p dy[n, k, p] * xs[c, j, p + i*OW]; dbp[n, k] = sum_p dy[n, k, p]
    d = dy[n, k].reshape(L)
    zero = d.dtype.type(0)
    s = zero
    for p in range(L):
        s += d[p]
    dbp[n, k] = s
    for c in range(xs.shape[0]):
        X = xs[c]
        o0, o1, o2, o3, o4, o5, o6, o7, o8 = offsets
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = zero
        for p in range(L):
            u = np.uint64(p)
            e = d[p]
            s0 += e * X[u + o0]
            s1 += e * X[u + o1]
            s2 += e * X[u + o2]
            s3 += e * X[u + o3]
            s4 += e * X[u + o4]
            s5 += e * X[u + o5]
            s6 += e * X[u + o6]
            s7 += e * X[u + o7]
            s8 += e * X[u + o8]
        q = part[n, k, c]
        q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7], q[8] = s0, s1, s2, s3, s4, s5, s6, s7, s8


@cpu_inline
def _dw_two(dy, xs, part, dbp, n, k, offsets, L):
    # _dw_one for the filters k and k+1 at once: each tap loaded once serves both (18 sums)
    d, e_ = dy[n, k].reshape(L), dy[n, k + 1].reshape(L)
    zero = d.dtype.type(0)
    for c in range(xs.shape[0]):
        X = xs[c]
        o0, o1, o2, o3, o4, o5, o6, o7, o8 = offsets
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = zero
        r0 = r1 = r2 = r3 = r4 = r5 = r6 = r7 = r8 = zero
        for p in range(L):
            u = np.uint64(p)
            e, f = d[p], e_[p]
            v = X[u + o0]
            s0 += e * v
            r0 += f * v
            v = X[u + o1]
            s1 += e * v
            r1 += f * v
            v = X[u + o2]
            s2 += e * v
            r2 += f * v
            v = X[u + o3]
            s3 += e * v
            r3 += f * v
            v = X[u + o4]
            s4 += e * v
            r4 += f * v
            v = X[u + o5]
            s5 += e * v
            r5 += f * v
            v = X[u + o6]
            s6 += e * v
            r6 += f * v
            v = X[u + o7]
            s7 += e * v
            r7 += f * v
            v = X[u + o8]
            s8 += e * v
            r8 += f * v
        q = part[n, k, c]
        q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7], q[8] = s0, s1, s2, s3, s4, s5, s6, s7, s8
        q = part[n, k + 1, c]
        q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7], q[8] = r0, r1, r2, r3, r4, r5, r6, r7, r8
    s, r = zero, zero                         # db, from L1 now that the dot products read dy
    for p in range(L):
        s += d[p]
        r += e_[p]
    dbp[n, k], dbp[n, k + 1] = s, r


@cpu_kernel
def _backward_kernel(dy, x, part, dbp, pt, pl):
    # dy: (N, K, OH, OW), x: (N, C, H, W) -> per-image partials in x's dtype
    #   part (N, K, C, 9): part[n, k, c, 3i + j] = sum_p dy[n, k, p] * xs_n[c, j, p + i*OW]
    #   dbp (N, K):        dbp[n, k] = sum_p dy[n, k, p]
    # One iteration per image; filters in pairs, per (pair, c) one loop of 18 dot products
    # over the plane (1.36 vs 1.79 ms one filter at a time, C = 3, measured with per-tap views).
    N, C = x.shape[0], x.shape[1]
    K, OH, OW = dy.shape[1], dy.shape[2], dy.shape[3]
    L = OH * OW
    offsets = _tap_offsets((OH + 2) * OW, OW)
    for n in prange(N):
        xs4 = np.empty((C, 3, OH + 2, OW), x.dtype)
        _shifted_copies(x, n, xs4, pt, pl)
        xs = xs4.reshape(C, 3 * (OH + 2) * OW)
        for q in range(K // 2):
            _dw_two(dy, xs, part, dbp, n, 2 * q, offsets, L)
        if K % 2:
            _dw_one(dy, xs, part, dbp, n, K - 1, offsets, L)


def forward(x, w, b, g, y):
    """y (N, K, OH, OW) = conv(x, w) + b, written in place."""
    bias = np.zeros(g.K, x.dtype) if b is None else b
    _forward_kernel.for_size(y.size * g.C)(x, w, bias, y, g.pt, g.pl)
    return y


def backward(dy, x, g, dw, db):
    """dw (K, C, 3, 3) and, if db is not None, db (K,), written in place."""
    part = np.empty((g.N, g.K, g.C, 9), x.dtype)
    dbp = np.empty((g.N, g.K), x.dtype)
    _backward_kernel.for_size(dy.size * g.C)(dy, x, part, dbp, g.pt, g.pl)
    # float64 sums over the images, in image order (numpy reduces axis 0 row by row)
    dw.reshape(g.K, g.C * 9)[...] = part.reshape(g.N, g.K * g.C * 9).sum(axis=0,
                                                                        dtype=np.float64
                                                                        ).reshape(g.K, -1)
    if db is not None:
        db[...] = dbp.sum(axis=0, dtype=np.float64)
    return dw, db
