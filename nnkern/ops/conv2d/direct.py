"""Direct float32 3x3 convolution, stride 1, for few input channels (the first layer, C = 1..3).

With C = 1 or 3 an im2col + GEMM conv is a thin GEMM (K=64 x 9C x L): BLAS runs it far from
its peak and the im2col pass costs as much as the arithmetic. Here Numba does the arithmetic
itself, in register-blocked vector tiles (_direct_tiles.py) along the flattened output plane.

Shifted copies. For one image, ``xs[c, j]`` is the zero-padded input shifted left by j columns
and cut to the output width, one row per padded input row (OH + 2 rows of OW), flattened:

    xs[c, j, h*OW + ow] = x~[n, c, h, ow + j]      x~: x zero-padded by pt (top), pl (left)

Flattened to p = oh*OW + ow, the tap (i, j) of output p reads xs[c, j] at p + i*OW: every tap is
a contiguous run of the same length L = OH*OW, so 16 outputs p .. p+15 read 16 consecutive
floats of each tap. Each copy is S = (OH + 2)*OW floats rounded up to whole 64-byte lines, in a
buffer aligned to 64 bytes, so with OW a multiple of 16 every vector load is aligned. The
copies take 3*C*S floats (39 KiB for C = 3 at 32x32), built once per image and reused by all K
filters.

    forward   y[n, k, p]  = b[k] + sum_{c,i,j} w[k, c, i, j] * xs[c, j, p + i*OW]
    backward  dw[k, c, i, j] = sum_n sum_p dy[n, k, p] * xs_n[c, j, p + i*OW]
              db[k]          = sum_n sum_p dy[n, k, p]

float32 runs the vector tiles over whole vectors of 16 outputs (the forward in tiles of 4
filters x 64 outputs, dw in pairs of filters x one channel's 9 taps) and scalar loops over the
last L % 16 outputs; float64 (the finite-difference gradient checks) runs the scalar loops
throughout. Each (n, k) plane of the backward gives float32 partial sums per image (in
``part``), summed over the images in float64, in image order. The work is split over images
only (one prange iteration per image, each writing its own outputs), so the result is the
same bit for bit whatever the thread count.

dx (not needed for a first layer) is the correlation of dy with the flipped, transposed
filters, done by the general forward path (cpu.py).

``applicable`` sends only float32 here (float64 keeps the exact reference path); the tests run
the kernels in float64 too, for the finite-difference gradient check.
"""

import numpy as np
from numba import prange, types
from numba.extending import overload

from nnkern._jit import FASTMATH, cpu_inline, cpu_kernel
from nnkern.ops.conv2d._direct_tiles import make_dw_tile, make_forward_tile

#: The direct path takes convs with at most this many input channels (measured on 2 cores,
#: N=64, 32x32, K=64: see cpu.py's docstring).
MAX_CHANNELS = 3
_LANES = 16


def applicable(g, dtype):
    """float32, 3x3, stride 1, dilation 1, at most MAX_CHANNELS inputs, padding <= 2 and the same
    on both sides of an axis (as every int padding and 3x3 "same" are; dx relies on it)."""
    return (dtype == np.float32 and 1 <= g.C <= MAX_CHANNELS and g.KH == g.KW == 3
            and g.sh == g.sw == 1 and g.dh == g.dw == 1
            and g.pt == g.pb <= 2 and g.pl == g.pr <= 2)


# ------------------------------------------------------------------------ the shifted copies
@cpu_inline
def _copy_length(OH, OW):
    # S: one shifted copy, (OH + 2) rows of OW, rounded up to whole vectors (64-byte lines)
    return ((OH + 2) * OW + _LANES - 1) // _LANES * _LANES


@cpu_inline
def _shifted_copies(x, n, pt, pl, OH, OW, S):
    # x: (N, C, H, W) -> xs: (C, 3, S) for image n, in a buffer aligned to 64 bytes:
    # xs[c, j, h*OW + ow] = x[n, c, h - pt, ow + j - pl], 0 outside x (the zero padding);
    # the rounding beyond (OH + 2)*OW is never read
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    buf = np.empty(C * 3 * S + _LANES, x.dtype)
    skip = (_LANES - buf.ctypes.data // x.itemsize % _LANES) % _LANES
    xs = buf[skip:skip + C * 3 * S].reshape(C, 3, S)
    for c in range(C):
        for j in range(3):
            lo = min(OW, max(0, pl - j))         # ow < lo reads left padding
            hi = max(lo, min(OW, W + pl - j))    # ow >= hi reads right padding
            for h in range(OH + 2):
                ih = h - pt
                row = h * OW
                if ih < 0 or ih >= H:
                    for ow in range(OW):
                        xs[c, j, row + ow] = 0
                    continue
                for ow in range(lo):
                    xs[c, j, row + ow] = 0
                for ow in range(lo, hi):
                    xs[c, j, row + ow] = x[n, c, ih, ow + j - pl]
                for ow in range(hi, OW):
                    xs[c, j, row + ow] = 0
    return xs


@cpu_inline
def _tap_offsets(S, OW):
    # where tap (i, j) starts in the flat (3*S,) copies of one channel: j*S + i*OW, as unsigned
    # ints: a signed index p + offset gets Numba's negative-index wraparound, which LLVM
    # vectorises as gathers; unsigned indices are plain loads
    u = np.uint64
    return (u(0), u(S), u(2 * S), u(OW), u(S + OW), u(2 * S + OW), u(2 * OW), u(S + 2 * OW),
            u(2 * S + 2 * OW))


# ------------------------------------------------------------------------------ scalar loops
@cpu_inline
def _one_filter(xs, wt, b, yn, k, p_lo, p_hi, OW):
    # yn[k, p] = b[k] + sum_c sum_{i,j} wt[k, 9c + 3i + j] * xs[c, j, p + i*OW], p_lo <= p < p_hi
    # (one pass over the run per channel: the first stores, the others add)
    yk = yn[k]
    o0, o1, o2, o3, o4, o5, o6, o7, o8 = _tap_offsets(xs.shape[2], OW)
    for c in range(xs.shape[0]):
        X = xs[c].reshape(3 * xs.shape[2])
        f = wt[k, 9 * c:9 * c + 9]
        f0, f1, f2, f3, f4, f5, f6, f7, f8 = f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]
        start = b[k] if c == 0 else yk.dtype.type(0)
        for p in range(p_lo, p_hi):
            u = np.uint64(p)
            s = (start + f0 * X[u + o0] + f1 * X[u + o1] + f2 * X[u + o2]
                 + f3 * X[u + o3] + f4 * X[u + o4] + f5 * X[u + o5]
                 + f6 * X[u + o6] + f7 * X[u + o7] + f8 * X[u + o8])
            yk[p] = s if c == 0 else yk[p] + s


@cpu_inline
def _dw_one(xs, dyn, part_n, dbp_n, k, p_lo, p_hi, OW):
    # part_n[k, c, 3i + j] += sum_p dyn[k, p] * xs[c, j, p + i*OW]; dbp_n[k] += sum_p dyn[k, p]
    # over p_lo <= p < p_hi
    d = dyn[k]
    o0, o1, o2, o3, o4, o5, o6, o7, o8 = _tap_offsets(xs.shape[2], OW)
    zero = d.dtype.type(0)
    s = zero
    for p in range(p_lo, p_hi):
        s += d[p]
    dbp_n[k] += s
    for c in range(xs.shape[0]):
        X = xs[c].reshape(3 * xs.shape[2])
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = zero
        for p in range(p_lo, p_hi):
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
        q = part_n[k, c]
        q[0] += s0
        q[1] += s1
        q[2] += s2
        q[3] += s3
        q[4] += s4
        q[5] += s5
        q[6] += s6
        q[7] += s7
        q[8] += s8


# ------------------------------------------------------------------ float32: the vector tiles
def _make_forward_blocks(channels):
    t44, t41, t14, t11 = (make_forward_tile(channels, f, v)
                          for f, v in ((4, 4), (4, 1), (1, 4), (1, 1)))

    @cpu_inline
    def blocks(xs, wt, b, yn, OW):
        # yn[:, :16 nv] in tiles of 4 filters x 4 vectors (then single filters / vectors),
        # filters outside: each tile row streams its 4 planes (C = 1: 0.52 vs 0.66 ms with
        # blocks of outputs outside, their stretch of xs kept in L1; C = 3: 0.83 vs 0.86)
        K, nv = yn.shape[0], yn.shape[1] // _LANES
        k4, v4 = K // 4 * 4, nv // 4 * 4
        for k0 in range(0, k4, 4):
            for v in range(0, v4, 4):
                t44(xs, wt, b, yn, k0, v * _LANES, OW)
            for v in range(v4, nv):
                t41(xs, wt, b, yn, k0, v * _LANES, OW)
        for k0 in range(k4, K):
            for v in range(0, v4, 4):
                t14(xs, wt, b, yn, k0, v * _LANES, OW)
            for v in range(v4, nv):
                t11(xs, wt, b, yn, k0, v * _LANES, OW)
    return blocks


_blocks_c1, _blocks_c2, _blocks_c3 = (_make_forward_blocks(c) for c in (1, 2, 3))
_dw2_db, _dw2, _dw1_db, _dw1 = (make_dw_tile(f, db) for f, db in
                                ((2, True), (2, False), (1, True), (1, False)))


@cpu_inline
def _dw_tiles(xs, dyn, part_n, dbp_n, k0, filters, sums, OW):
    # part_n[k0:k0+filters] and dbp_n[k0:k0+filters] over the whole vectors of the plane
    nv = dyn.shape[1] // _LANES
    for c in range(xs.shape[0]):
        if filters == 2:
            if c == 0:
                _dw2_db(xs, dyn, sums, k0, c, nv, OW)
            else:
                _dw2(xs, dyn, sums, k0, c, nv, OW)
        elif c == 0:
            _dw1_db(xs, dyn, sums, k0, c, nv, OW)
        else:
            _dw1(xs, dyn, sums, k0, c, nv, OW)
        for f in range(filters):
            for t in range(9):
                part_n[k0 + f, c, t] = sums[f, t]
            if c == 0:
                dbp_n[k0 + f] = sums[f, 9]


# ------------------------------------------------------ per image: vector tiles or scalar loops
def _forward_image(xs, wt, b, yn, OW):
    raise NotImplementedError  # only called from jitted code (see the overload)


def _dw_image(xs, dyn, part_n, dbp_n, OW):
    raise NotImplementedError


_OVERLOAD = dict(jit_options=dict(fastmath=FASTMATH, error_model="numpy"))


@overload(_forward_image, **_OVERLOAD)
def _forward_image_overload(xs, wt, b, yn, OW):
    # yn (K, L) = conv of the image's copies xs (C, 3, S) with wt (K, 9C), plus b (K,)
    if xs.dtype != types.float32:
        def scalar(xs, wt, b, yn, OW):
            for k in range(yn.shape[0]):
                _one_filter(xs, wt, b, yn, k, 0, yn.shape[1], OW)
        return scalar

    def simd(xs, wt, b, yn, OW):
        C = xs.shape[0]
        if C == 1:
            _blocks_c1(xs, wt, b, yn, OW)
        elif C == 2:
            _blocks_c2(xs, wt, b, yn, OW)
        else:
            _blocks_c3(xs, wt, b, yn, OW)
        L = yn.shape[1]
        if L % _LANES:  # the last L % 16 outputs (an empty loop here measured 0.3 ms of 1.2:
            for k in range(yn.shape[0]):  # the views it takes of the shared wt count references)
                _one_filter(xs, wt, b, yn, k, L // _LANES * _LANES, L, OW)
    return simd


@overload(_dw_image, **_OVERLOAD)
def _dw_image_overload(xs, dyn, part_n, dbp_n, OW):
    # part_n (K, C, 9) and dbp_n (K,): one image's sums of the products and of dyn (K, L)
    if xs.dtype != types.float32:
        def scalar(xs, dyn, part_n, dbp_n, OW):
            part_n[...] = 0
            dbp_n[...] = 0
            for k in range(dyn.shape[0]):
                _dw_one(xs, dyn, part_n, dbp_n, k, 0, dyn.shape[1], OW)
        return scalar

    def simd(xs, dyn, part_n, dbp_n, OW):
        K, L = dyn.shape
        sums = np.empty((2, 10), np.float32)
        for k0 in range(0, K - 1, 2):
            _dw_tiles(xs, dyn, part_n, dbp_n, k0, 2, sums, OW)
        if K % 2:
            _dw_tiles(xs, dyn, part_n, dbp_n, K - 1, 1, sums, OW)
        if L % _LANES:
            for k in range(K):                  # add the last L % 16 outputs
                _dw_one(xs, dyn, part_n, dbp_n, k, L // _LANES * _LANES, L, OW)
    return simd


# ------------------------------------------------------------------------------------ kernels
@cpu_kernel
def _forward_kernel(x, wt, b, y, pt, pl):
    # x: (N, C, H, W), wt: (K, 9C), b: (K,) -> y: (N, K, OH, OW)
    # y[n, k, p] = b[k] + sum_{c,i,j} wt[k, 9c + 3i + j] * xs[c, j, p + i*OW]  (p = oh*OW + ow)
    N = x.shape[0]
    K, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    S = _copy_length(OH, OW)
    for n in prange(N):
        xs = _shifted_copies(x, n, pt, pl, OH, OW, S)
        _forward_image(xs, wt, b, y[n].reshape(K, OH * OW), OW)


@cpu_kernel
def _backward_kernel(dy, x, part, dbp, pt, pl):
    # dy: (N, K, OH, OW), x: (N, C, H, W) -> per-image partials in x's dtype
    #   part (N, K, C, 9): part[n, k, c, 3i + j] = sum_p dy[n, k, p] * xs_n[c, j, p + i*OW]
    #   dbp (N, K):        dbp[n, k] = sum_p dy[n, k, p]
    N = x.shape[0]
    K, OH, OW = dy.shape[1], dy.shape[2], dy.shape[3]
    S = _copy_length(OH, OW)
    for n in prange(N):
        xs = _shifted_copies(x, n, pt, pl, OH, OW, S)
        _dw_image(xs, dy[n].reshape(K, OH * OW), part[n], dbp[n], OW)


def forward(x, w, b, g, y):
    """y (N, K, OH, OW) = conv(x, w) + b, written in place."""
    bias = np.zeros(g.K, x.dtype) if b is None else np.ascontiguousarray(b)
    wt = np.ascontiguousarray(w).reshape(g.K, g.C * 9)
    _forward_kernel.for_size(y.size * g.C)(x, wt, bias, y, g.pt, g.pl)
    return y


def backward(dy, x, g, dw, db):
    """dw (K, C, 3, 3) and, if db is not None, db (K,), written in place."""
    part = np.empty((g.N, g.K, g.C, 9), x.dtype)
    dbp = np.empty((g.N, g.K), x.dtype)
    _backward_kernel.for_size(dy.size * g.C)(np.ascontiguousarray(dy), x, part, dbp, g.pt, g.pl)
    # float64 sums over the images, in image order (numpy reduces axis 0 row by row)
    dw.reshape(g.K, g.C * 9)[...] = part.reshape(g.N, g.K * g.C * 9).sum(axis=0,
                                                                        dtype=np.float64
                                                                        ).reshape(g.K, -1)
    if db is not None:
        db[...] = dbp.sum(axis=0, dtype=np.float64)
    return dw, db
