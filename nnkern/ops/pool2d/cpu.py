"""Numba CPU kernels for 2-D pooling.

Every kernel sees the batch as P = N*C independent planes, (N, C, H, W) -> (P, H, W) (a free
reshape of a contiguous array), and runs ``prange`` over planes (or fixed chunks of planes):
each iteration owns its planes of y / dx, so overlapping windows never race and the results do
not depend on the thread count.
Window geometry (PyTorch's, see ``__init__``): output (oh, ow) covers input rows
h0 + i*dh for i < kh with h0 = oh*sh - ph (columns alike); taps outside the input are skipped.
"""

import numpy as np
from numba import prange

from nnkern._jit import cpu_inline, cpu_kernel
from nnkern._validate import window_output_size

#: Planes are split into at most this many chunks for ``prange`` when a kernel needs scratch
#: memory: one allocation per chunk instead of per plane.
_CHUNKS = 256


def _pair(value):
    return (value, value) if isinstance(value, (int, np.integer)) else tuple(value)


def _geometry(x_shape, kernel_size, stride, padding, dilation, ceil_mode):
    k, p, d = _pair(kernel_size), _pair(padding), _pair(dilation)
    s = k if stride is None else _pair(stride)
    o = tuple(window_output_size("cpu", x_shape[2 + a], k[a], s[a], p[a], d[a], ceil_mode)
              for a in range(2))
    return k, s, p, d, o


def _planes(a):
    """(N, C, ...) -> (N*C, ...) view."""
    return a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])


# ---------------------------------------------------------------------------------- max pool

@cpu_inline
def _taps(n_out, size, k, s, p, d):
    # Per output position o along one axis: the first tap inside the input, first[o], and the
    # number of taps inside it, count[o]; taps are o*s - p + t*d for t < k. Computed once per
    # call so the per-output loops do no integer division.
    first = np.empty(n_out, np.int64)
    count = np.empty(n_out, np.int64)
    for o in range(n_out):
        start = o * s - p
        t0 = 0 if start >= 0 else (d - 1 - start) // d   # first t with start + t*d >= 0
        t1 = min(k, (size - start + d - 1) // d)          # taps with start + t*d < size
        first[o] = start + t0 * d
        count[o] = max(t1 - t0, 0)
    return first, count


@cpu_inline
def _take_max(x, i, best, where):
    # PyTorch CPU's update `v > best or isnan(v)`, scanning taps in row-major order: the first
    # maximum wins ties, NaN wins over numbers and a later NaN over an earlier one.
    val = x[i]
    if val > best or np.isnan(val):
        return val, i
    return best, where


@cpu_kernel
def _max_pool2d_fwd_kernel(x, y, argmax, kh, kw, sh, sw, ph, pw, dh, dw, w_):
    # x: (P, H*W) -> y: (P, OH, OW), argmax: (P, OH, OW) int32 flat index h*W + w
    # y = max over the window's taps inside the input (padding never wins). Planes are
    # indexed flat (h*W + w): ~1.5x faster than 3-D indexing in these short tap loops.
    p_ = x.shape[0]
    h_ = x.shape[1] // w_
    oh_, ow_ = y.shape[1], y.shape[2]
    h_first, h_count = _taps(oh_, h_, kh, sh, ph, dh)
    w_first, w_count = _taps(ow_, w_, kw, sw, pw, dw)
    for p in prange(p_):
        xp = x[p]
        for oh in range(oh_):
            hb, hn = h_first[oh], h_count[oh]
            for ow in range(ow_):
                wb, wn = w_first[ow], w_count[ow]
                if hn == 0 or wn == 0:
                    # a dilated window can step over the whole input: nothing to take
                    y[p, oh, ow] = -np.inf
                    argmax[p, oh, ow] = -1
                    continue
                where = hb * w_ + wb
                best = xp[where]  # same result as PyTorch's start at -inf (see tests)
                for i in range(hn):
                    row = (hb + i * dh) * w_ + wb
                    for j in range(wn):
                        best, where = _take_max(xp, row + j * dw, best, where)
                y[p, oh, ow] = best
                argmax[p, oh, ow] = where


@cpu_kernel
def _max_pool2d_bwd_kernel(dy, argmax, dx, bad):
    # dy, argmax: (P, L) with L = OH*OW -> dx: (P, H*W); bad: (P,) flags
    # dx[p, argmax[p, l]] += dy[p, l]: a scatter, but only within plane p, which this
    # iteration owns, so overlapping windows accumulate without races (in output order, as
    # PyTorch does). argmax -1 (empty window) adds nothing; other indices outside the plane
    # are flagged for the wrapper instead of writing out of bounds.
    p_, l_ = dy.shape
    hw = dx.shape[1]
    for p in prange(p_):
        for i in range(hw):
            dx[p, i] = 0
        flag = 0
        for l in range(l_):
            idx = argmax[p, l]
            if idx >= 0 and idx < hw:
                dx[p, idx] += dy[p, l]
            elif idx != -1:
                flag = 1
        bad[p] = flag


# The common 2x2 window with stride 2 (no padding, no dilation): the general kernels above
# spend most of their time on window bookkeeping there (~7 GB/s).
#
# Max pooling needs care to vectorise: LLVM's vectorised loop only runs for trip counts of at
# least ~24 here, and an output row of a 32x32 plane has 16 windows, so a loop along an output
# row runs scalar (~1 ns per input element, measured). For such rows (OW < _WIDE_ROWS) each
# plane goes through a scratch buffer in two passes whose inner loops are long or unit-stride:
# forward, (1) the vertical pairs of each row pair along the input row (W long), (2) the
# horizontal pairs over all the plane's outputs in one flat loop. Wide rows loop along the
# output row directly. The results are the same bits either way.

_WIDE_ROWS = 32
#: prange chunks of the 2x2 max kernels: each allocates its scratch once, so few and large
#: (an allocation, ~0.3 µs, is as long as the work on a whole 32x32 plane)
_SCRATCH_CHUNKS = 32


@cpu_kernel
def _max_pool2x2_fwd_kernel(x, y, argmax):
    # x: (P, H, W) -> y, argmax: (P, H // 2, W // 2); argmax int32 flat index h*W + w
    # The general kernel's rule (_take_max) over the candidates a, b, c, d of a window in
    # row-major order: the first maximum wins ties, a NaN wins and a later NaN over an
    # earlier one. Two-pass form (see above): pass 1 takes the rule down each column, top
    # element first; pass 2 combines the two columns: a NaN wins, the later one (larger
    # index: index order is window order) if both are; else the larger value, on a tie the
    # earlier element. That is the sequential rule's result: the last NaN overall is its
    # column's pick and has the larger index; otherwise the first maximum overall is the
    # first maximum of its column and the earlier of two equal column picks.
    p_, _, w_ = x.shape
    oh_, ow_ = y.shape[1], y.shape[2]
    n_out = oh_ * ow_
    wi = np.int32(w_)
    izero = np.int32(0)
    chunks = min(p_, _SCRATCH_CHUNKS)
    for ch in prange(chunks):
        col_v = np.empty(n_out * 2, x.dtype)  # per column of each row pair: the pick ...
        col_i = np.empty(n_out * 2, np.int32)  # ... and its index h*W + w in the plane
        for p in range(ch * p_ // chunks, (ch + 1) * p_ // chunks):
            xp = x[p]
            if ow_ >= _WIDE_ROWS:
                for oh in range(oh_):
                    r0 = xp[2 * oh]
                    r1 = xp[2 * oh + 1]
                    y_run = y[p, oh]
                    a_run = argmax[p, oh]
                    base = 2 * oh * w_
                    for ow in range(ow_):
                        c = 2 * ow
                        best = r0[c]
                        where = base + c
                        v = r0[c + 1]
                        if v > best or v != v:
                            best = v
                            where = base + c + 1
                        v = r1[c]
                        if v > best or v != v:
                            best = v
                            where = base + w_ + c
                        v = r1[c + 1]
                        if v > best or v != v:
                            best = v
                            where = base + w_ + c + 1
                        y_run[ow] = best
                        a_run[ow] = where
                continue
            for oh in range(oh_):  # pass 1: down each column of row pair oh (an odd last
                top = xp[2 * oh]   # column is in no window): (OH, 2 OW) buffers
                bottom = xp[2 * oh + 1]
                v_run = col_v[oh * 2 * ow_:(oh + 1) * 2 * ow_]
                i_run = col_i[oh * 2 * ow_:(oh + 1) * 2 * ow_]
                base = np.int32(2 * oh) * wi
                for w in range(2 * ow_):
                    a = top[w]
                    c = bottom[w]
                    take = (c > a) | (c != c)
                    v_run[w] = c if take else a
                    i_run[w] = base + (wi if take else izero) + np.int32(w)
            y_run = y[p].reshape(n_out)  # pass 2: the two columns of each window
            a_run = argmax[p].reshape(n_out)
            for k in range(n_out):
                vl = col_v[2 * k]
                vr = col_v[2 * k + 1]
                il = col_i[2 * k]
                ir = col_i[2 * k + 1]
                lnan = vl != vl
                rnan = vr != vr
                right = (rnan & (~lnan | (ir > il))) | \
                    (~lnan & ~rnan & ((vr > vl) | ((vr == vl) & (ir < il))))
                y_run[k] = vr if right else vl
                a_run[k] = ir if right else il


@cpu_kernel
def _avg_pool2x2_fwd_kernel(x, y):
    # x: (P, H, W) -> y: (P, H // 2, W // 2), y = ((x00 + x10) + (x01 + x11)) / 4 in float64:
    # the general kernel's column sums then row sum, the same additions in the same order
    p_ = x.shape[0]
    oh_, ow_ = y.shape[1], y.shape[2]
    for p in prange(p_):
        for oh in range(oh_):
            r0 = x[p, 2 * oh]
            r1 = x[p, 2 * oh + 1]
            y_run = y[p, oh]
            for ow in range(ow_):
                c = 2 * ow
                left = np.float64(r0[c]) + np.float64(r1[c])
                right = np.float64(r0[c + 1]) + np.float64(r1[c + 1])
                y_run[ow] = (left + right) / 4.0


@cpu_kernel
def _avg_pool2x2_bwd_kernel(dy, dx):
    # dy: (P, OH, OW) -> dx: (P, H, W), OH = H // 2, OW = W // 2: dx = dy / 4 at the four
    # positions of each window (exact: a power of two), 0 in a last odd row or column
    p_, h_, w_ = dx.shape
    oh_, ow_ = dy.shape[1], dy.shape[2]
    quarter = dx.dtype.type(0.25)
    zero = dx.dtype.type(0)
    for p in prange(p_):
        for oh in range(oh_):
            g_run = dy[p, oh]
            d0 = dx[p, 2 * oh]
            d1 = dx[p, 2 * oh + 1]
            for ow in range(ow_):
                c = 2 * ow
                g = g_run[ow] * quarter
                d0[c] = g
                d0[c + 1] = g
                d1[c] = g
                d1[c + 1] = g
            for w in range(2 * ow_, w_):
                d0[w] = zero
                d1[w] = zero
        for h in range(2 * oh_, h_):
            for w in range(w_):
                dx[p, h, w] = zero


def _is_2x2(kh, kw, sh, sw, ph, pw, dh, dw, x_shape, oh, ow):
    """A 2x2 window with stride 2, no padding or dilation, and floor-mode output size."""
    return (kh == kw == sh == sw == 2 and ph == pw == 0 and dh == dw == 1
            and oh == x_shape[2] // 2 and ow == x_shape[3] // 2)


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
                       out=None):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = _geometry(
        x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    shape = (x.shape[0], x.shape[1], oh, ow)
    y_out, argmax_out = (None, None) if out is None else out
    y = np.empty(shape, x.dtype) if y_out is None else y_out
    argmax = np.empty(shape, np.int32) if argmax_out is None else argmax_out
    if _is_2x2(kh, kw, sh, sw, ph, pw, dh, dw, x.shape, oh, ow):
        _max_pool2x2_fwd_kernel.for_size(x.size)(_planes(x), _planes(y), _planes(argmax))
        return y, argmax
    _max_pool2d_fwd_kernel.for_size(x.size)(x.reshape(shape[0] * shape[1], -1), _planes(y),
                                            _planes(argmax), kh, kw, sh, sw, ph, pw, dh, dw,
                                            x.shape[3])
    return y, argmax


def max_pool2d_backward(dy, argmax, x_shape, *, out=None):
    n_, c_, h_, w_ = x_shape
    dx = np.empty(x_shape, dy.dtype) if out is None else out
    bad = np.empty(n_ * c_, np.uint8)
    # The scatter is also the fastest form for 2x2 windows: a vectorised zero fill plus one
    # scalar add per output, in cache (measured against a two-pass gather: 1.1 vs 1.3 ms on
    # (64, 64, 32, 32) float32, one thread).
    flat = (n_ * c_, -1)
    _max_pool2d_bwd_kernel.for_size(dx.size)(dy.reshape(flat), argmax.reshape(flat),
                                             dx.reshape(flat), bad)
    if bad.any():
        p = int(np.argmax(bad))
        raise ValueError(f"max_pool2d_backward: argmax of plane (n, c) = {divmod(p, c_)} holds "
                         f"indices outside [0, H*W = {h_ * w_}); it must come from "
                         f"max_pool2d_forward on an input of shape {tuple(x_shape)}")
    return dx


# ---------------------------------------------------------------------------------- avg pool

@cpu_inline
def _spans(n_out, size, k, s, p, count_include_pad):
    # Per output position o along one axis: the window's part inside the input, [lo[o], hi[o]),
    # and its divisor factor: the window [o*s - p, o*s - p + k) clipped to the padded input
    # [-p, size + p) with count_include_pad, else clipped to the input (PyTorch's rule; the
    # divisor of a 2-D window is the product of its row and column factors).
    lo = np.empty(n_out, np.int64)
    hi = np.empty(n_out, np.int64)
    factor = np.empty(n_out, np.int64)
    for o in range(n_out):
        start = o * s - p
        stop = min(start + k, size + p)
        lo[o] = max(start, 0)
        hi[o] = min(stop, size)
        factor[o] = stop - start if count_include_pad else hi[o] - lo[o]
    return lo, hi, factor


@cpu_kernel
def _avg_pool2d_fwd_kernel(x, y, kh, kw, sh, sw, ph, pw, count_include_pad):
    # x: (P, H, W) -> y: (P, OH, OW), y = (sum of the window's taps inside the input) / divisor.
    # Separable sum, float64 throughout: per output row, colsum[w] = sum over the window's
    # rows of x[h, w] (contiguous in w, so it vectorises), then y[oh, ow] = sum of colsum over
    # the window's columns. ~2x faster than summing each window on its own.
    p_, h_, w_ = x.shape
    oh_, ow_ = y.shape[1], y.shape[2]
    h_lo, h_hi, h_div = _spans(oh_, h_, kh, sh, ph, count_include_pad)
    w_lo, w_hi, w_div = _spans(ow_, w_, kw, sw, pw, count_include_pad)
    chunks = min(p_, _CHUNKS)
    for c in prange(chunks):
        colsum = np.empty(w_, np.float64)  # scratch, one per chunk of planes
        for p in range(c * p_ // chunks, (c + 1) * p_ // chunks):
            for oh in range(oh_):
                for w in range(w_):
                    colsum[w] = 0.0
                for h in range(h_lo[oh], h_hi[oh]):
                    for w in range(w_):
                        colsum[w] += x[p, h, w]
                for ow in range(ow_):
                    acc = 0.0
                    for w in range(w_lo[ow], w_hi[ow]):
                        acc += colsum[w]
                    div = h_div[oh] * w_div[ow]
                    y[p, oh, ow] = acc / div if div > 0 else 0.0


@cpu_kernel
def _avg_pool2d_bwd_kernel(dy, dx, kh, kw, sh, sw, ph, pw, count_include_pad):
    # dy: (P, OH, OW) -> dx: (P, H, W): every window adds g = dy[oh, ow] / divisor(oh, ow) to
    # each of its input elements. Separable again: per output row, row[w] = sum of g over the
    # windows of that row covering column w, then row is added to each input row the window
    # covers (contiguous in w). A scatter, but only within plane p, which this iteration owns:
    # overlapping windows accumulate without races and in a fixed order.
    p_, h_, w_ = dx.shape
    oh_, ow_ = dy.shape[1], dy.shape[2]
    h_lo, h_hi, h_div = _spans(oh_, h_, kh, sh, ph, count_include_pad)
    w_lo, w_hi, w_div = _spans(ow_, w_, kw, sw, pw, count_include_pad)
    chunks = min(p_, _CHUNKS)
    for c in prange(chunks):
        row = np.empty(w_, dx.dtype)  # scratch, one per chunk of planes
        for p in range(c * p_ // chunks, (c + 1) * p_ // chunks):
            for h in range(h_):
                for w in range(w_):
                    dx[p, h, w] = 0
            for oh in range(oh_):
                for w in range(w_):
                    row[w] = 0
                for ow in range(ow_):
                    div = h_div[oh] * w_div[ow]
                    if div > 0:
                        g = dy[p, oh, ow] / div
                        for w in range(w_lo[ow], w_hi[ow]):
                            row[w] += g
                for h in range(h_lo[oh], h_hi[oh]):
                    for w in range(w_):
                        dx[p, h, w] += row[w]


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                       count_include_pad=True, *, out=None):
    (kh, kw), (sh, sw), (ph, pw), _, (oh, ow) = _geometry(x.shape, kernel_size, stride, padding,
                                                          1, ceil_mode)
    y = np.empty((x.shape[0], x.shape[1], oh, ow), x.dtype) if out is None else out
    if _is_2x2(kh, kw, sh, sw, ph, pw, 1, 1, x.shape, oh, ow):
        _avg_pool2x2_fwd_kernel.for_size(x.size)(_planes(x), _planes(y))
        return y
    _avg_pool2d_fwd_kernel.for_size(x.size)(_planes(x), _planes(y), kh, kw, sh, sw, ph, pw,
                                            bool(count_include_pad))
    return y


def avg_pool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, *, out=None):
    (kh, kw), (sh, sw), (ph, pw), _, (oh, ow) = _geometry(x_shape, kernel_size, stride, padding,
                                                          1, ceil_mode)
    dx = np.empty(x_shape, dy.dtype) if out is None else out
    if _is_2x2(kh, kw, sh, sw, ph, pw, 1, 1, x_shape, oh, ow) \
            and not np.may_share_memory(dx, dy):
        _avg_pool2x2_bwd_kernel.for_size(dx.size)(_planes(dy), _planes(dx))
        return dx
    _avg_pool2d_bwd_kernel.for_size(dx.size)(_planes(dy), _planes(dx), kh, kw, sh, sw, ph, pw,
                                             bool(count_include_pad))
    return dx


# --------------------------------------------------------------------------- global avg pool

@cpu_kernel
def _global_avg_pool2d_fwd_kernel(x, y):
    # x: (P, H*W) -> y: (P,), y[p] = mean of x[p], accumulated in float64 in a fixed order
    p_, hw = x.shape
    for p in prange(p_):
        acc = 0.0
        for i in range(hw):
            acc += x[p, i]
        y[p] = acc / hw


@cpu_kernel
def _global_avg_pool2d_bwd_kernel(dy, dx):
    # dy: (P,) -> dx: (P, H*W), dx[p, :] = dy[p] / (H*W)
    p_, hw = dx.shape
    for p in prange(p_):
        g = dx.dtype.type(dy[p] / hw)
        for i in range(hw):
            dx[p, i] = g


def global_avg_pool2d_forward(x, *, out=None):
    y = np.empty(x.shape[:2], x.dtype) if out is None else out
    _global_avg_pool2d_fwd_kernel.for_size(x.size)(_planes(x).reshape(y.size, -1), y.reshape(-1))
    return y


def global_avg_pool2d_backward(dy, x_shape, *, out=None):
    dx = np.empty(x_shape, dy.dtype) if out is None else out
    _global_avg_pool2d_bwd_kernel.for_size(dx.size)(dy.reshape(-1), dx.reshape(dy.size, -1))
    return dx
