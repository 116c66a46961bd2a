"""Dropout (inverted, PyTorch convention): p is the probability of DROPPING an element.

    y = x * mask / (1 - p),   mask[i] = 1 with probability 1 - p, else 0
    dx = dy * mask / (1 - p)

The functional op always drops (it is the training-time op; layers skip it in eval). p = 0
is the identity, p = 1 gives zeros (scale 0, no division by zero). With ``spatial=True``
(SpatialDropout2D, Tompson et al. 2015) x is (N, C, H, W) and whole channels are dropped: the
mask is (N, C), broadcast over H x W. Otherwise the mask has x's shape. mask is uint8 (0/1).

The mask is a pure function of (seed, p, element index), the same on every device and for any
thread count ("counter-based", like Philox in cuRAND/JAX; here splitmix64, Steele et al. 2014):

    G  = 0x9E3779B97F4A7C15, M1 = 0xBF58476D1CE4E5B9, M2 = 0x94D049BB133111EB
    mix(z) = z ^= z >> 30; z *= M1; z ^= z >> 27; z *= M2; z ^= z >> 31     (uint64, mod 2^64)
    key    = mix(seed + G)                    (splitmix64's first output from state seed)
    r(i)   = mix(key + (i + 1) * G)           (the i-th output of splitmix64 from state key)
    u(i)   = (r(i) >> 40) / 2^24              (top 24 bits: a uniform in [0, 1), exact in
                                               float32 and float64)
    keep i iff u(i) >= p, i.e. iff (r(i) >> 40) >= ceil(p * 2^24)   (integer compare)

i is the flat C-order index into x (or into the (N, C) mask when ``spatial``: i = n*C + c).
Only uint64 multiply, add, xor and shifts: a CUDA kernel computes the identical mask. The
keep probability is 1 - ceil(p 2^24) / 2^24, within 6e-8 of 1 - p.

seed: an int in [0, 2**63). Callers draw a new seed per step (e.g. from their own
``np.random.Generator``); the same seed gives the same mask.
"""

import numbers

import numpy as np

from nnkern import _validate as v
from nnkern.backend import device_of
from nnkern.ops._dispatch import impl

SEED_LIMIT = 1 << 63


def _check_p(op, p):
    return v.check_float(op, "p", p, low=0.0, high=1.0)


def _check_spatial(op, spatial):
    if not isinstance(spatial, (bool, np.bool_)):
        raise TypeError(f"{op}: spatial must be True or False, got {type(spatial).__name__} "
                        f"{spatial!r}")
    return bool(spatial)


def _check_seed(op, seed):
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{op}: seed must be an int in [0, 2**63), got {type(seed).__name__} "
                        f"{seed!r}")
    seed = int(seed)
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{op}: seed must be in [0, 2**63), got {seed}")
    return seed


def mask_shape(x_shape, spatial):
    """Shape of the mask for an input of shape ``x_shape``."""
    return tuple(x_shape[:2]) if spatial else tuple(x_shape)


def dropout_forward(x, p, seed, *, spatial=False, out=None):
    """Returns (y, mask). ``out`` is an optional pair (y, mask) of buffers (entries may be
    None): y like x, mask uint8 of shape ``mask_shape(x.shape, spatial)``."""
    op = "dropout_forward"
    spatial = _check_spatial(op, spatial)
    if spatial:
        v.check_array(op, "x", x, ndim=4, layout="4-D (N, C, H, W) for spatial dropout")
    else:
        v.check_array(op, "x", x)
        if len(x.shape) < 1:
            raise ValueError(f"{op}: x must be at least 1-D, got shape {tuple(x.shape)}")
    p = _check_p(op, p)
    seed = _check_seed(op, seed)
    y_out, mask_out = (None, None) if out is None else tuple(out)
    v.check_out(op, "out y", y_out, x.shape, x.dtype)
    if mask_out is not None:
        _check_mask(op, "out mask", mask_out, mask_shape(x.shape, spatial), spatial)
    device = device_of(x, y_out, mask_out, names=("x", "out y", "out mask"))
    return impl(__name__, device).dropout_forward(x, p, seed, spatial=spatial,
                                                  out=(y_out, mask_out))


def dropout_backward(dy, mask, p, *, spatial=False, out=None):
    """dx = dy * mask / (1 - p) (0 where p = 1)."""
    op = "dropout_backward"
    spatial = _check_spatial(op, spatial)
    if spatial:
        v.check_array(op, "dy", dy, ndim=4, layout="4-D (N, C, H, W) for spatial dropout")
    else:
        v.check_array(op, "dy", dy)
        if len(dy.shape) < 1:
            raise ValueError(f"{op}: dy must be at least 1-D, got shape {tuple(dy.shape)}")
    _check_mask(op, "mask", mask, mask_shape(dy.shape, spatial), spatial)
    p = _check_p(op, p)
    v.check_out(op, "out", out, dy.shape, dy.dtype)
    device = device_of(dy, mask, out, names=("dy", "mask", "out"))
    return impl(__name__, device).dropout_backward(dy, mask, p, spatial=spatial, out=out)


def _check_mask(op, name, mask, shape, spatial):
    if not hasattr(mask, "dtype") or not hasattr(mask, "shape"):
        raise TypeError(f"{op}: {name} must be an array, got {type(mask).__name__}")
    if np.dtype(mask.dtype) != np.uint8:
        raise TypeError(f"{op}: {name} must have dtype uint8 (as returned by "
                        f"dropout_forward), got {mask.dtype}")
    v.check_shape(op, name, mask, shape,
                  "(N, C) of the (N, C, H, W) input" if spatial else "the shape of the input")
    if not v._is_c_contiguous(mask):
        raise ValueError(f"{op}: {name} must be C-contiguous, got a strided view of shape "
                         f"{tuple(mask.shape)}")
