"""CUDA kernels for shift (y = x + b) and scale (y = w * x).

Apply: one grid-stride pass over flat views; element i uses parameter (i // L) % K, with
  element  L = 1, K = F = size / N     (p: x.shape[1:])
  channel  L = H*W..., K = C           (p: (C,)); on (N, F) the same as element
  layer    L = size, K = 1             (p: (1,))

Parameter gradients (``param_grad_sums``, also PReLU's weight gradient) are deterministic: the
work is split by shape alone into tiles, each tile's sum is formed in a fixed order (sequential
per thread, then a pairwise tree in shared memory), and tiles are merged by a second tiny
kernel in a fixed order. No atomics, so two runs give identical bits. Sums accumulate in the
array dtype (no float64 in float32 kernels). The input gradient dx (scale: w * dy; PReLU: dy
or w * dy) is written by the same kernel while it streams x and dy: one launch, not two.
  element  x, dy viewed (N, F): a tile is (a chunk of rows) x (blockDim columns), one thread
           per column summing its chunk's rows (coalesced along F, no shared memory)
  channel  x, dy viewed (N, C, L): a tile is (channel c, a chunk of the N*L elements of c),
           threads striding over the chunk (coalesced along L), then a block tree
  layer    the channel kernel on a (1, 1, size) view
With a single chunk per column/channel the tile kernel writes the result directly (one launch).
"""

import functools

from numba import cuda

from nnkern.ops._cuda import (
    MAX_BLOCKS,
    THREADS,
    device_array,
    device_function,
    empty,
    empty_like,
    grid_1d,
    kernel,
)

#: What ``param_grad_sums`` adds up (as nnkern.ops.shift_scale.cpu): dy, x * dy, x * dy where
#: x <= 0 (PReLU).
SUM_DY, SUM_X_DY, SUM_X_DY_NONPOS = 0, 1, 2
#: The dx the reduction kernels also write: none, w * dy (scale), dy if x > 0 else w * dy (PReLU).
DX_NONE, DX_SCALE, DX_PRELU = 0, 1, 2

_TARGET_BLOCKS = 264    # tiles per reduction: 2 per H100 SM
_MIN_ROWS = 8           # rows per element-mode chunk at least
_MIN_CHUNK = 2048       # elements per channel-mode chunk at least


def _pow2_ceil(n):
    return 1 << max(0, int(n) - 1).bit_length()


def _grid(n):
    """grid_1d(n), with blocks of fewer threads (a warp at least) for arrays smaller than a
    block: no idle threads in tiny launches (and much faster under the simulator)."""
    return grid_1d(n, min(THREADS, max(32, _pow2_ceil(n))))


# ---------------------------------------------------------------- apply: y = x op p


@kernel
def _apply_kernel(x, p, length, count, mul, y):
    # x: (M,) flat, p: (K,) -> y: (M,); y[i] = x[i] * p[k] if mul else x[i] + p[k],
    # k = (i // length) % count (see the module docstring for the three modes)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.shape[0], step):
        k = i // length if length > 1 else i
        k = k % count if count > 1 else 0
        if mul:
            y[i] = x[i] * p[k]
        else:
            y[i] = x[i] + p[k]


def _apply_shape(x, mode):
    """(length, count) of the module docstring for x and a parameter of ``mode``."""
    if mode == "layer":
        return x.size, 1
    if mode == "channel":
        return x.size // (x.shape[0] * x.shape[1]), x.shape[1]
    return 1, x.size // x.shape[0]


def _apply(x, p, mode, y, mul):
    length, count = _apply_shape(x, mode)
    _apply_kernel[_grid(x.size)](x.reshape(x.size), p.reshape(p.size), length, count, mul,
                                   y.reshape(y.size))
    return y


# ---------------------------------------------------------------- parameter-gradient sums


@device_function
def _term(xv, gv, what, zero):
    # the summand: dy, x * dy, or x * dy where x <= 0, else 0 (NaN x gives 0, as the CPU);
    # zero: 0 in the array dtype (a literal 0 would promote float32 to float64)
    if what == SUM_DY:
        return gv
    if what == SUM_X_DY:
        return xv * gv
    return xv * gv if xv <= zero else zero


@device_function
def _dx_value(xv, gv, a, rule, zero):
    # scale: a * dy; PReLU: dy if x > 0 else a * dy (NaN x takes the a * dy branch, as the CPU)
    if rule == DX_SCALE:
        return a * gv
    return gv if xv > zero else a * gv


@kernel
def _sum_cols_kernel(x, dy, w, what, rule, rows, partial, dx):
    # x, dy, dx: (N, F), w: (F,) -> partial: (K, F), partial[k, f] = sum of the term over rows
    # k*rows .. (k+1)*rows - 1 of column f. Tile b = (chunk k, column block): one thread per
    # column, rows summed in order. dx[n, f] = rule(x, dy, w[f]) when rule != DX_NONE.
    n_, f_ = dy.shape
    k_ = partial.shape[0]
    zero = dy.dtype.type(0)
    threads = cuda.blockDim.x
    fb = (f_ + threads - 1) // threads
    for b in range(cuda.blockIdx.x, k_ * fb, cuda.gridDim.x):
        k = b // fb
        f = (b - k * fb) * threads + cuda.threadIdx.x
        if f < f_:
            acc = zero
            a = w[f] if rule != DX_NONE else zero
            for n in range(k * rows, min((k + 1) * rows, n_)):
                xv = x[n, f]
                gv = dy[n, f]
                acc += _term(xv, gv, what, zero)
                if rule != DX_NONE:
                    dx[n, f] = _dx_value(xv, gv, a, rule, zero)
            partial[k, f] = acc


@kernel
def _sum_chan_kernel(x, dy, w, what, rule, chunk, partial, dx):
    # x, dy, dx: (N, C, L), w: (C,) -> partial: (K, C), partial[k, c] = sum of the term over
    # elements k*chunk .. (k+1)*chunk - 1 of channel c's N*L elements (e = n*L + l).
    # Tile b = (c, k): threads stride over the chunk (consecutive threads, consecutive l),
    # then a pairwise tree over the block. dx as in _sum_cols_kernel with w[c].
    sh = cuda.shared.array(THREADS, dy.dtype)
    n_, c_, l_ = dy.shape
    k_ = partial.shape[0]
    nl = n_ * l_
    zero = dy.dtype.type(0)
    t = cuda.threadIdx.x
    threads = cuda.blockDim.x
    for b in range(cuda.blockIdx.x, c_ * k_, cuda.gridDim.x):
        c = b // k_
        k = b - c * k_
        acc = zero
        a = w[c] if rule != DX_NONE else zero
        for e in range(k * chunk + t, min((k + 1) * chunk, nl), threads):
            n = e // l_
            l = e - n * l_
            xv = x[n, c, l]
            gv = dy[n, c, l]
            acc += _term(xv, gv, what, zero)
            if rule != DX_NONE:
                dx[n, c, l] = _dx_value(xv, gv, a, rule, zero)
        sh[t] = acc
        cuda.syncthreads()  # every thread's partial is in shared memory before the tree
        s = threads // 2
        while s > 0:
            if t < s:
                sh[t] += sh[t + s]
            cuda.syncthreads()  # this level is complete before the next one reads it
            s //= 2
        if t == 0:
            partial[k, c] = sh[0]
        # no sync needed here: only thread 0 reads sh[0], and only thread 0 writes it next


@kernel
def _combine_kernel(partial, out):
    # partial: (K, P) -> out: (P,), out[p] = sum over k of partial[k, p] in order k = 0, 1, ...
    start, step = cuda.grid(1), cuda.gridsize(1)
    for p in range(start, partial.shape[1], step):
        acc = partial[0, p]
        for k in range(1, partial.shape[0]):
            acc += partial[k, p]
        out[p] = acc


@functools.lru_cache(maxsize=1024)
def _cols_plan(n, f):
    """(rows per chunk, chunks, blocks, threads) for _sum_cols_kernel on (n, f)."""
    threads = min(THREADS, max(32, _pow2_ceil(f)))
    fb = -(-f // threads)
    chunks = max(1, min(-(-n // _MIN_ROWS), -(-_TARGET_BLOCKS // fb)))
    rows = -(-n // chunks)
    chunks = -(-n // rows)
    return rows, chunks, min(chunks * fb, MAX_BLOCKS), threads


@functools.lru_cache(maxsize=1024)
def _chan_plan(c, nl):
    """(chunk, chunks, blocks, threads) for _sum_chan_kernel on C = c channels of nl elements."""
    chunks = max(1, min(-(-nl // _MIN_CHUNK), -(-_TARGET_BLOCKS // c)))
    chunk = -(-nl // chunks)
    chunks = -(-nl // chunk)
    threads = min(THREADS, _pow2_ceil(chunk))
    return chunk, chunks, min(c * chunks, MAX_BLOCKS), threads


def param_grad_sums(x, dy, mode, what, out, w=None, dx=None, rule=DX_NONE):
    """out = sum of the term ``what`` over the dims a parameter of ``mode`` broadcasts over
    (deterministic, see the module docstring). With ``rule`` != DX_NONE the same pass writes
    ``dx`` (x's shape) from x, dy and the parameter ``w`` (out's shape). Device arrays; x is
    unused for SUM_DY (pass dy). Returns out."""
    w = out if w is None else w
    dx = dy if dx is None else dx  # never written when rule == DX_NONE
    if mode == "element" or (mode == "channel" and len(dy.shape) == 2):
        n = dy.shape[0]
        f = dy.size // n
        rows, chunks, blocks, threads = _cols_plan(n, f)
        partial = out.reshape(1, f) if chunks == 1 else empty((chunks, f), dy.dtype)
        _sum_cols_kernel[blocks, threads](x.reshape(n, f), dy.reshape(n, f), w.reshape(f), what,
                                          rule, rows, partial, dx.reshape(n, f))
    else:
        if mode == "layer":
            shape = (1, 1, dy.size)
        else:
            shape = (dy.shape[0], dy.shape[1], dy.size // (dy.shape[0] * dy.shape[1]))
        c, nl = shape[1], shape[0] * shape[2]
        chunk, chunks, blocks, threads = _chan_plan(c, nl)
        partial = out.reshape(1, c) if chunks == 1 else empty((chunks, c), dy.dtype)
        _sum_chan_kernel[blocks, threads](x.reshape(shape), dy.reshape(shape), w.reshape(c),
                                          what, rule, chunk, partial, dx.reshape(shape))
    if chunks > 1:
        _combine_kernel[grid_1d(partial.shape[1])](partial, out.reshape(out.size))
    return out


# ---------------------------------------------------------------- public functions


def shift_forward(x, b, mode, *, out=None):
    x, b = device_array(x), device_array(b)
    y = empty_like(x) if out is None else device_array(out)
    return _apply(x, b, mode, y, False)


def shift_backward(dy, b, mode, *, out=None):
    dx_out, db_out = (None, None) if out is None else out
    dy, b = device_array(dy), device_array(b)
    if dx_out is None:
        dx = dy  # dx = dy: no copy, the caller gets dy itself back
    else:
        dx = device_array(dx_out)
        dx.copy_to_device(dy)  # device-to-device copy
    db = empty_like(b) if db_out is None else device_array(db_out)
    return dx, param_grad_sums(dy, dy, mode, SUM_DY, db)


def scale_forward(x, w, mode, *, out=None):
    x, w = device_array(x), device_array(w)
    y = empty_like(x) if out is None else device_array(out)
    return _apply(x, w, mode, y, True)


def scale_backward(dy, x, w, mode, *, out=None):
    dx_out, dw_out = (None, None) if out is None else out
    dy, x, w = device_array(dy), device_array(x), device_array(w)
    dx = empty_like(dy) if dx_out is None else device_array(dx_out)
    dw = empty_like(w) if dw_out is None else device_array(dw_out)
    return dx, param_grad_sums(x, dy, mode, SUM_X_DY, dw, w=w, dx=dx, rule=DX_SCALE)

