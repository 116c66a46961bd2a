"""CUDA kernels for 2-D pooling (same names, signatures and semantics as ``cpu.py``).

The batch is seen as P = N*C independent planes, (N, C, H, W) -> (P, H, W) (a free reshape).
Pooling forwards and all backwards run one thread per element of their result on a 3-D launch
from :func:`_grid_3d`: threadIdx.x along the contiguous width (OW for y, W for dx), threadIdx.y
along the height, threadIdx.z plus a grid-stride loop along the planes, PLANES = 4 planes per
thread in the window kernels (independent loads per tap: HBM needs many bytes in flight). No
integer division unravels a flat index, and a warp reads and writes consecutive addresses.
Window geometry (PyTorch's, see ``__init__``): output (oh, ow) covers input rows
oh*sh - ph + i*dh for i < kh (columns alike); taps outside the input are skipped.
Input gradients are gathers: each dx thread finds the outputs that read its element and sums
their gradients in output order (PyTorch CPU's scatter order), so overlapping windows need no
atomics and two runs give the same bits.
"""

import functools
import math

import numpy as np
from numba import cuda

from nnkern.ops._cuda import THREADS, device_array, device_function, empty, fill, grid_1d, kernel
from nnkern.ops.pool2d.cpu import _geometry

MAX_GRID_YZ = 65_535      #: CUDA's limit on gridDim.y and gridDim.z
PLANES = 4                 #: planes per thread in the window kernels (_plane_group)
EXTENT_PLANES = 8          #: planes per thread in the argmax-extent pass of the max backward
INT32_MAX = 2**31 - 1


def _pow2_at_least(n):
    return 1 << max(0, int(n) - 1).bit_length()


@functools.lru_cache(maxsize=1024)
def _grid_3d(nx, ny, nz, max_x=32):
    """(grid, block) covering an (nz, ny, nx) index space, x fastest; z grid-strided.

    The block takes up to ``max_x`` threads along x, then fills up to THREADS along y and z
    (powers of two fitted to the sizes, so that small planes leave few threads idle). Kernels
    loop over z with the grid's z size as stride, so gridDim.z may stop at CUDA's 65535.
    """
    tx = min(max_x, _pow2_at_least(nx))
    ty = min(THREADS // tx, _pow2_at_least(ny))
    tz = min(THREADS // (tx * ty), _pow2_at_least(nz))
    gy = -(-ny // ty)
    if gy > MAX_GRID_YZ:
        raise ValueError(f"pool2d (cuda): {ny} rows exceed the launch limit of "
                         f"{MAX_GRID_YZ * ty}")
    return (-(-nx // tx), gy, min(-(-nz // tz), MAX_GRID_YZ)), (tx, ty, tz)


def _planes(a):
    """(N, C, ...) -> (N*C, ...) view of a contiguous device array."""
    return a.reshape(a.shape[0] * a.shape[1], *a.shape[2:])


@device_function
def _plane_group(p, lanes, p_):
    # The other planes of a thread's group p, p + lanes, p + 2*lanes, p + 3*lanes (PLANES = 4
    # independent loads per tap keep HBM busy). Planes past the end are clamped to the last
    # plane: their loads are valid and their results are not stored (_store_group).
    last = p_ - 1
    return min(p + lanes, last), min(p + 2 * lanes, last), min(p + 3 * lanes, last)


@device_function
def _store_group(out, p, p1, p2, p3, lanes, i, j, v0, v1, v2, v3):
    # out[q, i, j] = v for the planes of the group that exist
    p_ = out.shape[0]
    out[p, i, j] = v0
    if p + lanes < p_:
        out[p1, i, j] = v1
    if p + 2 * lanes < p_:
        out[p2, i, j] = v2
    if p + 3 * lanes < p_:
        out[p3, i, j] = v3


_workspaces = {}


def _workspace(name, shape, dtype):
    """A scratch device array reused across calls (no allocation per call).

    Safe because every kernel runs on the default stream, in launch order: a later call's
    kernels only touch the scratch after the earlier call's kernels are done with it.
    """
    key = (name, tuple(shape), np.dtype(dtype).str)
    a = _workspaces.get(key)
    if a is None:
        if len(_workspaces) >= 64:
            _workspaces.clear()
        a = _workspaces[key] = empty(shape, dtype)
    return a


# ---------------------------------------------------------------------------------- max pool

@device_function
def _take_max(v, best, where, idx):
    # PyTorch's update `v > best or isnan(v)`; where < 0: the first real tap starts the scan
    # (PyTorch starts at -inf with argmax on the first real tap: the same result)
    if where < 0 or v > best or math.isnan(v):
        return v, idx
    return best, where


@kernel
def _max_pool2d_fwd_kernel(x, y, argmax, kh, kw, sh, sw, ph, pw, dh, dw):
    # x: (P, H, W) -> y: (P, OH, OW), argmax: (P, OH, OW) int32 flat index h*W + w
    # y = max over the window's taps inside the input, scanned in row-major order with
    # PyTorch's update `v > best or isnan(v)`: the first maximum wins ties, a NaN wins over
    # numbers and a later NaN over an earlier one; padding never wins. A (dilated) window
    # without a tap inside the input gives -inf and argmax -1.
    # Each thread takes one (oh, ow) in PLANES planes at once (_plane_group): PLANES
    # independent loads per tap.
    ow, oh, z = cuda.grid(3)
    lanes = cuda.gridsize(3)[2]
    p_, h_, w_ = x.shape
    oh_, ow_ = y.shape[1], y.shape[2]
    if ow >= ow_ or oh >= oh_:
        return
    h0 = oh * sh - ph
    w0 = ow * sw - pw
    neg_inf = x.dtype.type(-math.inf)
    for p in range(z, p_, PLANES * lanes):
        p1, p2, p3 = _plane_group(p, lanes, p_)
        best0 = best1 = best2 = best3 = neg_inf
        where0 = where1 = where2 = where3 = -1
        for i in range(kh):
            h = h0 + i * dh
            if h >= 0 and h < h_:
                for j in range(kw):
                    w = w0 + j * dw
                    if w >= 0 and w < w_:
                        v0 = x[p, h, w]
                        v1 = x[p1, h, w]
                        v2 = x[p2, h, w]
                        v3 = x[p3, h, w]
                        idx = h * w_ + w
                        best0, where0 = _take_max(v0, best0, where0, idx)
                        best1, where1 = _take_max(v1, best1, where1, idx)
                        best2, where2 = _take_max(v2, best2, where2, idx)
                        best3, where3 = _take_max(v3, best3, where3, idx)
        y[p, oh, ow] = best0
        argmax[p, oh, ow] = where0
        if p + lanes < p_:
            y[p1, oh, ow] = best1
            argmax[p1, oh, ow] = where1
        if p + 2 * lanes < p_:
            y[p2, oh, ow] = best2
            argmax[p2, oh, ow] = where2
        if p + 3 * lanes < p_:
            y[p3, oh, ow] = best3
            argmax[p3, oh, ow] = where3


@kernel
def _argmax_extent_kernel(argmax, w_, ext):
    # argmax: (P, OH, OW) int32 -> ext: (4, max(OH, OW)) int32 running minima (pre-filled with
    # INT32_MAX): ext[0, oh] = min row, ext[1, oh] = -(max row) of the argmax entries of output
    # row oh over all planes and columns; ext[2, ow], ext[3, ow] the same for columns.
    # max_pool2d_backward gets no window geometry (only argmax and x_shape), so it finds the
    # outputs that can point at an input row from these extents instead: exact for any argmax.
    # Each thread reduces its (oh, ow) over planes z, z + Z, ...; the block then merges its
    # threads per row and per column in shared memory and makes one integer atomic min per
    # row/column. Integer minima are exact, so the atomics' order does not change the result.
    row_lo = cuda.shared.array(THREADS, np.int32)
    row_nhi = cuda.shared.array(THREADS, np.int32)
    col_lo = cuda.shared.array(THREADS, np.int32)
    col_nhi = cuda.shared.array(THREADS, np.int32)
    tx, ty, tz = cuda.threadIdx.x, cuda.threadIdx.y, cuda.threadIdx.z
    bx, by, bz = cuda.blockDim.x, cuda.blockDim.y, cuda.blockDim.z
    ow, oh, p0 = cuda.grid(3)
    p_step = cuda.gridsize(3)[2]
    p_, oh_, ow_ = argmax.shape
    r_lo = INT32_MAX
    r_nhi = INT32_MAX
    c_lo = INT32_MAX
    c_nhi = INT32_MAX
    if ow < ow_ and oh < oh_:  # no early return: every thread must reach syncthreads
        for p in range(p0, p_, p_step):
            a = argmax[p, oh, ow]
            if a >= 0:  # -1: a window without input elements points nowhere
                r = a // w_
                c = a - r * w_
                r_lo = min(r_lo, r)
                r_nhi = min(r_nhi, -r)
                c_lo = min(c_lo, c)
                c_nhi = min(c_nhi, -c)
    t = (tz * by + ty) * bx + tx
    row_lo[t] = r_lo
    row_nhi[t] = r_nhi
    col_lo[t] = c_lo
    col_nhi[t] = c_nhi
    cuda.syncthreads()  # every thread's extents are in shared memory
    if tx == 0 and tz == 0 and oh < oh_:  # one thread per output row of the block
        lo = INT32_MAX
        nhi = INT32_MAX
        for z in range(bz):
            for x in range(bx):
                lo = min(lo, row_lo[(z * by + ty) * bx + x])
                nhi = min(nhi, row_nhi[(z * by + ty) * bx + x])
        cuda.atomic.min(ext, (0, oh), np.int32(lo))
        cuda.atomic.min(ext, (1, oh), np.int32(nhi))
    if ty == 0 and tz == 0 and ow < ow_:  # one thread per output column of the block
        lo = INT32_MAX
        nhi = INT32_MAX
        for z in range(bz):
            for y in range(by):
                lo = min(lo, col_lo[(z * by + y) * bx + tx])
                nhi = min(nhi, col_nhi[(z * by + y) * bx + tx])
        cuda.atomic.min(ext, (2, ow), np.int32(lo))
        cuda.atomic.min(ext, (3, ow), np.int32(nhi))


@kernel
def _argmax_ranges_kernel(ext, h_, w_, oh_, ow_, ranges):
    # ext: (4, max(OH, OW)) int32 from _argmax_extent_kernel -> ranges: (2, H + W) int32
    # For input row h (index h) and input column w (index H + w): the first and the last
    # output row (column) whose argmax extent contains it; first > last when none does.
    # Every output pointing at (h, w) then lies in ranges[:, h] x ranges[:, H + w].
    i = cuda.grid(1)
    if i >= h_ + w_:
        return
    if i < h_:
        pos, n, lo_row = i, oh_, 0
    else:
        pos, n, lo_row = i - h_, ow_, 2
    first = n
    last = -1
    for o in range(n):
        if ext[lo_row, o] <= pos and -ext[lo_row + 1, o] >= pos:
            first = min(first, o)
            last = o
    ranges[0, i] = first
    ranges[1, i] = last


@kernel
def _max_pool2d_bwd_kernel(dy, argmax, ranges, dx):
    # dy, argmax: (P, OH, OW); ranges: (2, H + W) int32 -> dx: (P, H, W)
    # dx[p, h, w] = sum of dy[p, oh, ow] over the outputs with argmax[p, oh, ow] = h*W + w.
    # Gather form (no atomics): the candidates are the outputs in rows ranges[:, h] and
    # columns ranges[:, H + w], summed in increasing (oh, ow), PyTorch CPU's scatter order.
    # Entries -1 (empty windows) and indices outside the plane never match. PLANES planes
    # per thread, as in the forward.
    w, h, z = cuda.grid(3)
    lanes = cuda.gridsize(3)[2]
    p_, h_, w_ = dx.shape
    if w >= w_ or h >= h_:
        return
    idx = h * w_ + w
    oh0 = ranges[0, h]
    oh1 = ranges[1, h] + 1
    ow0 = ranges[0, h_ + w]
    ow1 = ranges[1, h_ + w] + 1
    zero = dx.dtype.type(0)
    for p in range(z, p_, PLANES * lanes):
        p1, p2, p3 = _plane_group(p, lanes, p_)
        acc0 = acc1 = acc2 = acc3 = zero
        for oh in range(oh0, oh1):
            for ow in range(ow0, ow1):
                a0 = argmax[p, oh, ow]
                a1 = argmax[p1, oh, ow]
                a2 = argmax[p2, oh, ow]
                a3 = argmax[p3, oh, ow]
                if a0 == idx:
                    acc0 += dy[p, oh, ow]
                if a1 == idx:
                    acc1 += dy[p1, oh, ow]
                if a2 == idx:
                    acc2 += dy[p2, oh, ow]
                if a3 == idx:
                    acc3 += dy[p3, oh, ow]
        _store_group(dx, p, p1, p2, p3, lanes, h, w, acc0, acc1, acc2, acc3)


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
                       out=None):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = _geometry(
        x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    shape = (x.shape[0], x.shape[1], oh, ow)
    y_out, argmax_out = (None, None) if out is None else out
    y = empty(shape, x.dtype) if y_out is None else y_out
    argmax = empty(shape, np.int32) if argmax_out is None else argmax_out
    _max_pool2d_fwd_kernel[_grid_3d(ow, oh, -(-shape[0] * shape[1] // PLANES))](
        _planes(device_array(x)), _planes(device_array(y)), _planes(device_array(argmax)),
        kh, kw, sh, sw, ph, pw, dh, dw)
    return y, argmax


def max_pool2d_backward(dy, argmax, x_shape, *, out=None):
    # Three small passes find, for each input row and column, which outputs can point at it
    # (the backward has no window geometry); then one gather pass writes dx. argmax entries
    # outside the plane are ignored here (cpu.py raises): checking them would cost a
    # device-to-host copy and a synchronisation per call.
    n_, c_, h_, w_ = x_shape
    dx = empty(x_shape, dy.dtype) if out is None else out
    dy_p, argmax_p = _planes(device_array(dy)), _planes(device_array(argmax))
    p_, oh_, ow_ = dy_p.shape
    ext = fill(_workspace("ext", (4, max(oh_, ow_)), np.int32), INT32_MAX)
    _argmax_extent_kernel[_grid_3d(ow_, oh_, -(-p_ // EXTENT_PLANES))](argmax_p, w_, ext)
    ranges = _workspace("ranges", (2, h_ + w_), np.int32)
    _argmax_ranges_kernel[grid_1d(h_ + w_)](ext, h_, w_, oh_, ow_, ranges)
    _max_pool2d_bwd_kernel[_grid_3d(w_, h_, -(-p_ // PLANES))](dy_p, argmax_p, ranges,
                                                 _planes(device_array(dx)))
    return dx


# ---------------------------------------------------------------------------------- avg pool

@kernel
def _avg_pool2d_fwd_kernel(x, y, kh, kw, sh, sw, ph, pw, count_include_pad):
    # x: (P, H, W) -> y: (P, OH, OW), y = (sum of the window's taps inside the input) / divisor;
    # the divisor is the window clipped to the padded input [-p, size + p) with
    # count_include_pad, else clipped to the input (PyTorch's rule, also in ceil mode).
    # PLANES planes per thread, as in the max forward.
    ow, oh, z = cuda.grid(3)
    lanes = cuda.gridsize(3)[2]
    p_, h_, w_ = x.shape
    oh_, ow_ = y.shape[1], y.shape[2]
    if ow >= ow_ or oh >= oh_:
        return
    h0 = oh * sh - ph
    w0 = ow * sw - pw
    h_stop = min(h0 + kh, h_ + ph)
    w_stop = min(w0 + kw, w_ + pw)
    h_lo, h_hi = max(h0, 0), min(h_stop, h_)
    w_lo, w_hi = max(w0, 0), min(w_stop, w_)
    if count_include_pad:
        div = (h_stop - h0) * (w_stop - w0)
    else:
        div = (h_hi - h_lo) * (w_hi - w_lo)
    zero = x.dtype.type(0)
    d = x.dtype.type(div)
    for p in range(z, p_, PLANES * lanes):
        p1, p2, p3 = _plane_group(p, lanes, p_)
        acc0 = acc1 = acc2 = acc3 = zero
        for h in range(h_lo, h_hi):
            for w in range(w_lo, w_hi):
                acc0 += x[p, h, w]
                acc1 += x[p1, h, w]
                acc2 += x[p2, h, w]
                acc3 += x[p3, h, w]
        if div > 0:  # always, with PyTorch's window rules; no 0/0 if not
            acc0 /= d
            acc1 /= d
            acc2 /= d
            acc3 /= d
        _store_group(y, p, p1, p2, p3, lanes, oh, ow, acc0, acc1, acc2, acc3)


@kernel
def _avg_pool2d_bwd_kernel(dy, dx, kh, kw, sh, sw, ph, pw, count_include_pad):
    # dy: (P, OH, OW) -> dx: (P, H, W), dx[h, w] = sum of dy[oh, ow] / divisor(oh, ow) over
    # the windows covering (h, w): oh*sh - ph <= h < oh*sh - ph + kh, i.e.
    # ceil((h + ph - kh + 1) / sh) <= oh <= floor((h + ph) / sh) (columns alike). Gather form,
    # summed in increasing (oh, ow); PLANES planes per thread share the window arithmetic.
    w, h, z = cuda.grid(3)
    lanes = cuda.gridsize(3)[2]
    p_, h_, w_ = dx.shape
    oh_, ow_ = dy.shape[1], dy.shape[2]
    if w >= w_ or h >= h_:
        return
    a = h + ph - kh + 1
    oh0 = 0 if a <= 0 else (a + sh - 1) // sh
    oh1 = min(oh_, (h + ph) // sh + 1)
    b = w + pw - kw + 1
    ow0 = 0 if b <= 0 else (b + sw - 1) // sw
    ow1 = min(ow_, (w + pw) // sw + 1)
    zero = dx.dtype.type(0)
    one = dx.dtype.type(1)
    for p in range(z, p_, PLANES * lanes):
        p1, p2, p3 = _plane_group(p, lanes, p_)
        acc0 = acc1 = acc2 = acc3 = zero
        for oh in range(oh0, oh1):
            start = oh * sh - ph
            stop = min(start + kh, h_ + ph)
            fh = stop - start if count_include_pad else min(stop, h_) - max(start, 0)
            for ow in range(ow0, ow1):
                start_w = ow * sw - pw
                stop_w = min(start_w + kw, w_ + pw)
                fw = stop_w - start_w if count_include_pad else min(stop_w, w_) - max(start_w, 0)
                g = one / dx.dtype.type(fh * fw)  # one division for the group's planes
                acc0 += dy[p, oh, ow] * g
                acc1 += dy[p1, oh, ow] * g
                acc2 += dy[p2, oh, ow] * g
                acc3 += dy[p3, oh, ow] * g
        _store_group(dx, p, p1, p2, p3, lanes, h, w, acc0, acc1, acc2, acc3)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                       count_include_pad=True, *, out=None):
    (kh, kw), (sh, sw), (ph, pw), _, (oh, ow) = _geometry(x.shape, kernel_size, stride, padding,
                                                          1, ceil_mode)
    y = empty((x.shape[0], x.shape[1], oh, ow), x.dtype) if out is None else out
    _avg_pool2d_fwd_kernel[_grid_3d(ow, oh, -(-x.shape[0] * x.shape[1] // PLANES))](
        _planes(device_array(x)), _planes(device_array(y)), kh, kw, sh, sw, ph, pw,
        bool(count_include_pad))
    return y


def avg_pool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, *, out=None):
    (kh, kw), (sh, sw), (ph, pw), _, _ = _geometry(x_shape, kernel_size, stride, padding, 1,
                                                   ceil_mode)
    dx = empty(x_shape, dy.dtype) if out is None else out
    _avg_pool2d_bwd_kernel[_grid_3d(x_shape[3], x_shape[2],
                                    -(-x_shape[0] * x_shape[1] // PLANES))](
        _planes(device_array(dy)), _planes(device_array(dx)), kh, kw, sh, sw, ph, pw,
        bool(count_include_pad))
    return dx


# --------------------------------------------------------------------------- global avg pool

@kernel
def _global_avg_pool2d_fwd_kernel(x, y):
    # x: (P, L) with L = H*W -> y: (P,), y[p] = mean of x[p]
    # A block of (G, THREADS // G) threads: G threads per plane (threadIdx.x, chosen on the host
    # from L) stride along it, coalesced, summing in the array dtype; a shared-memory tree
    # (pairwise, log2 G levels) then adds their sums. Blocks stride over groups of planes.
    buf = cuda.shared.array(THREADS, x.dtype)
    lane = cuda.threadIdx.x
    g = cuda.blockDim.x
    rows = cuda.blockDim.y
    t = cuda.threadIdx.y * g + lane
    p_, l_ = x.shape
    zero = x.dtype.type(0)
    d = x.dtype.type(l_)
    # the loop bounds are the same for the whole block, so every thread meets each syncthreads
    for base in range(cuda.blockIdx.x * rows, p_, cuda.gridDim.x * rows):
        p = base + cuda.threadIdx.y
        acc = zero
        if p < p_:
            for i in range(lane, l_, g):
                acc += x[p, i]
        buf[t] = acc
        cuda.syncthreads()  # all partial sums of this group of planes are written
        s = g // 2
        while s > 0:
            if lane < s:
                buf[t] += buf[t + s]
            cuda.syncthreads()  # this tree level is complete before the next one reads it
            s //= 2
        if lane == 0 and p < p_:
            y[p] = buf[t] / d
        # no syncthreads needed before the next group: a thread next writes only buf[t], which
        # no other thread reads before the next group's first syncthreads


@kernel
def _global_avg_pool2d_bwd_kernel(dy, dx):
    # dy: (P,) -> dx: (P, L), dx[p, :] = dy[p] / L
    l, _, p0 = cuda.grid(3)
    p_step = cuda.gridsize(3)[2]
    p_, l_ = dx.shape
    if l >= l_:
        return
    d = dx.dtype.type(l_)
    for p in range(p0, p_, p_step):
        dx[p, l] = dy[p] / d


@functools.lru_cache(maxsize=1024)
def _global_launch(p_, l_):
    """(grid, block) for the global-average forward: G = threads per plane, a power of two
    giving each thread about 4 elements (at most THREADS), THREADS // G planes per block."""
    g = min(THREADS, _pow2_at_least(-(-l_ // 4)))
    rows = THREADS // g
    return (max(1, min(-(-p_ // rows), MAX_GRID_YZ)), 1, 1), (g, rows, 1)


def global_avg_pool2d_forward(x, *, out=None):
    y = empty(x.shape[:2], x.dtype) if out is None else out
    p_, l_ = x.shape[0] * x.shape[1], x.shape[2] * x.shape[3]
    _global_avg_pool2d_fwd_kernel[_global_launch(p_, l_)](
        device_array(x).reshape(p_, l_), device_array(y).reshape(p_))
    return y


def global_avg_pool2d_backward(dy, x_shape, *, out=None):
    dx = empty(x_shape, dy.dtype) if out is None else out
    p_, l_ = x_shape[0] * x_shape[1], x_shape[2] * x_shape[3]
    _global_avg_pool2d_bwd_kernel[_grid_3d(l_, 1, p_, max_x=THREADS)](
        device_array(dy).reshape(p_), device_array(dx).reshape(p_, l_))
    return dx
