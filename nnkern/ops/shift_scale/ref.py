"""NumPy reference for shift and scale: broadcasting and sums over axes, in float64."""

import numpy as np

from nnkern.ops._ref import into


def _view(p, x, mode):
    # the parameter reshaped to broadcast against x
    if mode == "element":
        return p.reshape((1,) + x.shape[1:])
    if mode == "channel":
        return p.reshape((1, -1) + (1,) * (x.ndim - 2))
    return p.reshape(())


def _reduce(t, p, mode):
    # sum of t (x's shape) over the axes p is broadcast over, shaped like p
    axes = {"element": (0,), "channel": (0,) + tuple(range(2, t.ndim)),
            "layer": tuple(range(t.ndim))}[mode]
    return t.sum(axis=axes).reshape(p.shape)



def shift_forward(x, b, mode, *, out=None):
    return into(out, x.astype(np.float64) + _view(b.astype(np.float64), x, mode), x.dtype)


def shift_backward(dy, b, mode, *, out=None):
    dx_out, db_out = (None, None) if out is None else out
    dx = dy if dx_out is None else into(dx_out, dy, dy.dtype)
    return dx, into(db_out, _reduce(dy.astype(np.float64), b, mode), dy.dtype)


def scale_forward(x, w, mode, *, out=None):
    return into(out, x.astype(np.float64) * _view(w.astype(np.float64), x, mode), x.dtype)


def scale_backward(dy, x, w, mode, *, out=None):
    dx_out, dw_out = (None, None) if out is None else out
    dy64, x64 = dy.astype(np.float64), x.astype(np.float64)
    dx = into(dx_out, dy64 * _view(w.astype(np.float64), x, mode), x.dtype)
    return dx, into(dw_out, _reduce(x64 * dy64, w, mode), x.dtype)
