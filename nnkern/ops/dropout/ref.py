"""NumPy reference for dropout: the mask function of ``__init__`` in vectorised uint64
NumPy arithmetic (array operations wrap modulo 2^64 silently), then the obvious products."""

import numpy as np

G, M1, M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(M2)
    return z ^ (z >> np.uint64(31))


def keep_mask(seed, p, shape):
    """The uint8 mask for flat indices 0 .. prod(shape)-1, by the formula in __init__."""
    key = _mix(np.array([seed], np.uint64) + np.uint64(G))[0]
    i = np.arange(int(np.prod(shape)), dtype=np.uint64)
    r = _mix(key + (i + np.uint64(1)) * np.uint64(G))
    u = (r >> np.uint64(40)).astype(np.float64) / 2.0**24
    return (u >= p).astype(np.uint8).reshape(shape)


def _scale(p):
    return 0.0 if p == 1.0 else 1.0 / (1.0 - p)


def _broadcast(mask, x):
    return mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))


def dropout_forward(x, p, seed, *, spatial=False, out=None):
    y_out, mask_out = (None, None) if out is None else out
    mask = keep_mask(seed, p, x.shape[:2] if spatial else x.shape)
    y = (x.astype(np.float64) * _broadcast(mask, x) * _scale(p)).astype(x.dtype)
    if y_out is not None:
        y_out[...] = y
        y = y_out
    if mask_out is not None:
        mask_out[...] = mask
        mask = mask_out
    return y, mask


def dropout_backward(dy, mask, p, *, spatial=False, out=None):
    dx = (dy.astype(np.float64) * _broadcast(mask, dy) * _scale(p)).astype(dy.dtype)
    if out is not None:
        out[...] = dx
        dx = out
    return dx
