"""Dense (fully connected, "linear") op: y = x @ w.T + b.

Shapes: x (N, I), w (O, I) as in PyTorch, b (O,) or None -> y (N, O).
Backward (seed catalogue §1.1): dx = dy @ w, dw = dy.T @ x, db = sum_n dy.
"""

from nnkern import _validate as v
from nnkern.backend import device_of
from nnkern.ops._dispatch import impl


def _check(op, x, w, b):
    v.check_array(op, "x", x, ndim=2, layout="2-D (N, in_features)")
    v.check_array(op, "w", w, ndim=2, layout="2-D (out_features, in_features)", dtype=x.dtype)
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"{op}: x has {x.shape[1]} features but w (shape {tuple(w.shape)}) "
                         f"expects {w.shape[1]}")
    if b is not None:
        v.check_array(op, "b", b, ndim=1, layout="1-D (out_features,)", dtype=x.dtype)
        v.check_shape(op, "b", b, (w.shape[0],), "one bias per output feature")


def dense_forward(x, w, b=None, *, out=None):
    """y = x @ w.T + b. Returns y (N, O), written into ``out`` when given."""
    _check("dense_forward", x, w, b)
    v.check_out("dense_forward", "out", out, (x.shape[0], w.shape[0]), x.dtype)
    device = device_of(x, w, b, out, names=("x", "w", "b", "out"))
    return impl(__name__, device).dense_forward(x, w, b, out=out)


def dense_backward(dy, x, w, *, has_bias=True, need_dx=True, out=None):
    """Gradients of dense_forward. Returns (dx, dw, db).

    dx is None when ``need_dx`` is False (the first layer needs no input gradient), db is None
    when ``has_bias`` is False. ``out`` is an optional tuple (dx, dw, db) of buffers (entries may
    be None).
    """
    op = "dense_backward"
    _check(op, x, w, None)
    v.check_array(op, "dy", dy, ndim=2, layout="2-D (N, out_features)", dtype=x.dtype)
    v.check_shape(op, "dy", dy, (x.shape[0], w.shape[0]), "(N, out_features) of the forward")
    out = (None, None, None) if out is None else tuple(out)
    for name, buf, shape in zip(("dx", "dw", "db"), out, (x.shape, w.shape, (w.shape[0],))):
        v.check_out(op, f"out {name}", buf, shape, x.dtype)
    device = device_of(dy, x, w, *out, names=("dy", "x", "w", "out dx", "out dw", "out db"))
    return impl(__name__, device).dense_backward(dy, x, w, has_bias=has_bias, need_dx=need_dx,
                                                 out=out)
