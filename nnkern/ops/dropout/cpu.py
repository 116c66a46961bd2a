"""Numba CPU kernels for dropout; the mask function is specified in ``__init__``.

Each element's keep bit is computed from its flat index alone (counter-based), so the flat
``prange`` needs no RNG state and the mask is the same for any thread count or variant.
"""

import numpy as np
from numba import prange

from nnkern._jit import cpu_inline, cpu_kernel

_G = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


def stream_key(seed):
    """key = mix(seed + G): splitmix64's first output from state ``seed`` (host side)."""
    z = (seed + int(_G)) & _MASK64
    z = ((z ^ (z >> 30)) * int(_M1)) & _MASK64
    z = ((z ^ (z >> 27)) * int(_M2)) & _MASK64
    return np.uint64(z ^ (z >> 31))


def keep_threshold(p):
    """Keep element i iff (r(i) >> 40) >= ceil(p * 2^24) (p * 2^24 is exact in float64)."""
    return np.uint64(int(np.ceil(p * (1 << 24))))


def keep_scale(p, dtype):
    """1 / (1 - p) in ``dtype``, 0 for p = 1 (everything is dropped)."""
    return dtype.type(0.0 if p >= 1.0 else 1.0 / (1.0 - p))


@cpu_inline
def _keep(key, i, threshold):
    # splitmix64 output i from state key, top 24 bits compared with the threshold
    z = key + (np.uint64(i) + np.uint64(1)) * _G
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)) >= threshold


@cpu_kernel
def _dropout_fwd_kernel(x, key, threshold, scale, y, mask):
    # x: (M,) -> y: (M,), mask: (M,) uint8; y = x * scale where kept, x * 0 where dropped
    # (x * 0, not 0: NaN/inf inputs give NaN as in torch's x * mask / (1 - p))
    zero = x.dtype.type(0)
    for i in prange(x.shape[0]):
        keep = _keep(key, i, threshold)
        mask[i] = 1 if keep else 0
        y[i] = x[i] * (scale if keep else zero)


@cpu_kernel
def _spatial_dropout_fwd_kernel(x, key, threshold, scale, y, mask):
    # x: (R, L) = (N*C, H*W) -> y: (R, L), mask: (R,) uint8; one keep bit per (n, c) row
    r_, l_ = x.shape
    zero = x.dtype.type(0)
    for r in prange(r_):
        keep = _keep(key, r, threshold)
        mask[r] = 1 if keep else 0
        a = scale if keep else zero
        for l in range(l_):
            y[r, l] = x[r, l] * a


@cpu_kernel
def _dropout_bwd_kernel(dy, mask, scale, dx):
    # dy: (M,), mask: (M,) -> dx: (M,); dx = dy * scale where mask != 0, dy * 0 elsewhere
    zero = dy.dtype.type(0)
    for i in prange(dy.shape[0]):
        dx[i] = dy[i] * (scale if mask[i] != 0 else zero)


@cpu_kernel
def _spatial_dropout_bwd_kernel(dy, mask, scale, dx):
    # dy: (R, L), mask: (R,) -> dx: (R, L)
    r_, l_ = dy.shape
    zero = dy.dtype.type(0)
    for r in prange(r_):
        a = scale if mask[r] != 0 else zero
        for l in range(l_):
            dx[r, l] = dy[r, l] * a


def _rows(a):
    return a.reshape(a.shape[0] * a.shape[1], -1)


def dropout_forward(x, p, seed, *, spatial=False, out=None):
    y_out, mask_out = (None, None) if out is None else out
    y = np.empty_like(x) if y_out is None else y_out
    shape = x.shape[:2] if spatial else x.shape
    mask = np.empty(shape, np.uint8) if mask_out is None else mask_out
    args = (stream_key(seed), keep_threshold(p), keep_scale(p, x.dtype))
    if spatial:
        _spatial_dropout_fwd_kernel.for_size(x.size)(_rows(x), *args, _rows(y),
                                                     mask.reshape(-1))
    else:
        _dropout_fwd_kernel.for_size(x.size)(x.reshape(-1), *args, y.reshape(-1),
                                             mask.reshape(-1))
    return y, mask


def dropout_backward(dy, mask, p, *, spatial=False, out=None):
    dx = np.empty_like(dy) if out is None else out
    scale = keep_scale(p, dy.dtype)
    if spatial:
        _spatial_dropout_bwd_kernel.for_size(dy.size)(_rows(dy), mask.reshape(-1), scale,
                                                      _rows(dx))
    else:
        _dropout_bwd_kernel.for_size(dy.size)(dy.reshape(-1), mask.reshape(-1), scale,
                                              dx.reshape(-1))
    return dx
