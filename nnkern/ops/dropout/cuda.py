"""CUDA kernels for dropout; the mask function is specified in ``nnkern/ops/dropout/__init__``.

The keep bit of element i is the same counter-based splitmix64 hash as on the CPU (only uint64
multiply, add, xor and shifts, which wrap modulo 2^64 on the GPU as in Numba's CPU code), so
for a given seed the CUDA mask is bit-identical to the CPU mask. Every kernel is one
grid-stride pass over flat views; the spatial variant computes the (n, c) row's bit in every
thread of the row (a few integer ops, cheaper than a second launch) and the thread at the
row's first position stores the mask byte.

Scalars (stream key, threshold, scale) are computed on the host by the CPU module's helpers,
so both backends derive them identically; the scale is cast to the array dtype there.
"""

import numpy as np
from numba import config, cuda

from nnkern.ops._cuda import (
    THREADS,
    device_array,
    device_function,
    empty,
    empty_like,
    grid_1d,
    kernel,
)
from nnkern.ops.dropout.cpu import keep_scale, keep_threshold, stream_key

_G = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _keep_bits(key, i, threshold):
    # splitmix64 output i (0-based) from state key: mix(key + (i + 1) G), then keep iff the top
    # 24 bits are >= threshold = ceil(p 2^24). All operands uint64 (an int64 mixed in would
    # make Numba compute in float64).
    z = key + (np.uint64(i) + np.uint64(1)) * _G
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)) >= threshold


if config.ENABLE_CUDASIM:
    # The simulator runs kernels as Python on NumPy scalars, which warn on the intended
    # uint64 wrap-around (an error under pytest): same arithmetic, warnings silenced.
    def _keep_sim(key, i, threshold):
        with np.errstate(over="ignore"):
            return _keep_bits(key, i, threshold)

    _keep = device_function(_keep_sim)
else:
    _keep = device_function(_keep_bits)


@kernel
def _dropout_fwd_kernel(x, key, threshold, scale, y, mask):
    # x: (M,) -> y: (M,), mask: (M,) uint8; y = x * scale where kept, x * 0 where dropped
    # (x * 0, not 0: NaN/inf inputs give NaN as in torch's x * mask / (1 - p))
    zero = x.dtype.type(0)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.shape[0], step):
        keep = _keep(key, i, threshold)
        mask[i] = 1 if keep else 0
        y[i] = x[i] * (scale if keep else zero)


@kernel
def _spatial_dropout_fwd_kernel(x, length, key, threshold, scale, y, mask):
    # x: (M,) = (N*C*L,) flat, L = length = H*W -> y: (M,), mask: (N*C,) uint8;
    # element i belongs to row r = i // L, whose keep bit is hash(r)
    zero = x.dtype.type(0)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.shape[0], step):
        r = i // length
        keep = _keep(key, r, threshold)
        if i - r * length == 0:
            mask[r] = 1 if keep else 0
        y[i] = x[i] * (scale if keep else zero)


@kernel
def _dropout_bwd_kernel(dy, mask, length, scale, dx):
    # dy: (M,), mask: (M // length,) -> dx: (M,); dx[i] = dy[i] * scale where mask[i // length]
    # != 0, dy * 0 elsewhere (length 1: element mask; H*W: spatial mask)
    zero = dy.dtype.type(0)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, dy.shape[0], step):
        dx[i] = dy[i] * (scale if mask[i // length] != 0 else zero)


def _flat(a):
    return a.reshape(a.size)


def _pow2_ceil(n):
    return 1 << max(0, int(n) - 1).bit_length()


def _grid(n):
    """grid_1d(n), with blocks of fewer threads (a warp at least) for arrays smaller than a
    block: no idle threads in tiny launches (and much faster under the simulator)."""
    return grid_1d(n, min(THREADS, max(32, _pow2_ceil(n))))


def dropout_forward(x, p, seed, *, spatial=False, out=None):
    y_out, mask_out = (None, None) if out is None else out
    x = device_array(x)
    y = empty_like(x) if y_out is None else device_array(y_out)
    shape = x.shape[:2] if spatial else x.shape
    mask = empty(shape, np.uint8) if mask_out is None else device_array(mask_out)
    args = (stream_key(seed), keep_threshold(p), keep_scale(p, x.dtype))
    if spatial:
        length = x.size // (x.shape[0] * x.shape[1])
        _spatial_dropout_fwd_kernel[_grid(x.size)](_flat(x), length, *args, _flat(y),
                                                     _flat(mask))
    else:
        _dropout_fwd_kernel[_grid(x.size)](_flat(x), *args, _flat(y), _flat(mask))
    return y, mask


def dropout_backward(dy, mask, p, *, spatial=False, out=None):
    dy, mask = device_array(dy), device_array(mask)
    dx = empty_like(dy) if out is None else device_array(out)
    length = dy.size // mask.size
    _dropout_bwd_kernel[_grid(dy.size)](_flat(dy), _flat(mask), length,
                                          keep_scale(p, dy.dtype), _flat(dx))
    return dx
