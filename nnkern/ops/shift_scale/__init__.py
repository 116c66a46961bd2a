"""Learnable shifting and scaling layers of seed 000 (Bui 2018, §5): the ops.

    shift: y = x + b     dx = dy,      db = sum of dy over the broadcast dims
    scale: y = w * x     dx = w * dy,  dw = sum of x * dy over the broadcast dims

``mode`` says how the parameter is shared (its shape for an input x of shape (N, ...)):
  "element"  x.shape[1:]  one parameter per feature / element of a sample, shared over N
  "channel"  (C,)         C = x.shape[1]; shared over N and every axis after 1 (H, W of an
                          (N, C, H, W) input). On an (N, F) input channel-wise is element-wise,
                          shape (F,), as the thesis does after dense layers.
  "layer"    (1,)         one scalar for the whole layer
x is at least 2-D ((N, F), (N, C, H, W), ...), float32 or float64, C-contiguous, and the
parameter shares its dtype. Parameter gradients accumulate in float64 in a fixed order
(deterministic for any thread count) and are returned in x's dtype.

``shift_backward`` returns ``dy`` itself as dx (no copy: dx aliases dy) unless an ``out`` dx
buffer is given, into which dy is copied. Backward ``out`` is a pair (dx, dparam), entries
may be None.
"""

from nnkern import _validate as v
from nnkern.backend import device_of
from nnkern.ops._dispatch import impl

MODES = ("element", "channel", "layer")


def param_shape(x_shape, mode):
    """Shape of a shift/scale parameter of ``mode`` for an input of shape ``x_shape``."""
    if mode == "element":
        return tuple(x_shape[1:])
    if mode == "channel":
        return (x_shape[1],)
    return (1,)


def _check(op, x, p, pname, mode, xname="x"):
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"{op}: mode must be one of 'element', 'channel', 'layer', "
                         f"got {mode!r}")
    v.check_array(op, xname, x)
    if len(x.shape) < 2:
        raise ValueError(f"{op}: {xname} must be at least 2-D ((N, F) or (N, C, H, W)), "
                         f"got shape {tuple(x.shape)}")
    v.check_array(op, pname, p, dtype=x.dtype)
    shape = param_shape(x.shape, mode)
    why = {"element": f"mode 'element': one per element of a sample, {xname}.shape[1:]",
           "channel": f"mode 'channel': one per channel, C = {xname}.shape[1]",
           "layer": "mode 'layer': one scalar"}[mode]
    v.check_shape(op, pname, p, shape, why)


def shift_forward(x, b, mode, *, out=None):
    """y = x + b, b broadcast over x as ``mode`` says."""
    op = "shift_forward"
    _check(op, x, b, "b", mode)
    v.check_out(op, "out", out, x.shape, x.dtype)
    device = device_of(x, b, out, names=("x", "b", "out"))
    return impl(__name__, device).shift_forward(x, b, mode, out=out)


def shift_backward(dy, b, mode, *, out=None):
    """Returns (dx, db): dx = dy (dy itself unless ``out`` gives a dx buffer), db = sum of dy
    over the broadcast dims."""
    op = "shift_backward"
    _check(op, dy, b, "b", mode, xname="dy")
    dx_out, db_out = (None, None) if out is None else tuple(out)
    v.check_out(op, "out dx", dx_out, dy.shape, dy.dtype)
    v.check_out(op, "out db", db_out, b.shape, dy.dtype)
    device = device_of(dy, b, dx_out, db_out, names=("dy", "b", "out dx", "out db"))
    return impl(__name__, device).shift_backward(dy, b, mode, out=(dx_out, db_out))


def scale_forward(x, w, mode, *, out=None):
    """y = w * x, w broadcast over x as ``mode`` says."""
    op = "scale_forward"
    _check(op, x, w, "w", mode)
    v.check_out(op, "out", out, x.shape, x.dtype)
    device = device_of(x, w, out, names=("x", "w", "out"))
    return impl(__name__, device).scale_forward(x, w, mode, out=out)


def scale_backward(dy, x, w, mode, *, out=None):
    """Returns (dx, dw): dx = w * dy, dw = sum of x * dy over the broadcast dims."""
    op = "scale_backward"
    _check(op, x, w, "w", mode)
    v.check_array(op, "dy", dy, dtype=x.dtype)
    v.check_shape(op, "dy", dy, x.shape, "the shape of x")
    dx_out, dw_out = (None, None) if out is None else tuple(out)
    v.check_out(op, "out dx", dx_out, x.shape, x.dtype)
    v.check_out(op, "out dw", dw_out, w.shape, x.dtype)
    device = device_of(dy, x, w, dx_out, dw_out, names=("dy", "x", "w", "out dx", "out dw"))
    return impl(__name__, device).scale_backward(dy, x, w, mode, out=(dx_out, dw_out))
