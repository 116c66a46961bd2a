"""2-D convolution (cross-correlation, as torch.nn.functional.conv2d with groups=1).

Shapes: x (N, C, H, W), w (K, C, KH, KW), b (K,) or None -> y (N, K, OH, OW), with
    y[n, k, oh, ow] = b[k] + sum_{c, i, j} w[k, c, i, j] * x̃[n, c, oh*sh + i*dh, ow*sw + j*dw]
where x̃ is x zero-padded (top/left offsets pt, pl) and OH = floor((H + pt + pb - dh*(KH-1) - 1)
/ sh) + 1 (likewise OW). Backward (seed catalogue §1.1):
    dw[k, c, i, j] = sum_{n, oh, ow} dy[n, k, oh, ow] * x̃[n, c, oh*sh + i*dh, ow*sw + j*dw]
    db[k]          = sum_{n, oh, ow} dy[n, k, oh, ow]
    dx             = the transposed convolution of dy with w (each dy value spread back over the
                     input pixels its window read), cropped to the unpadded input.

stride, dilation: int or (h, w) pair, >= 1. padding: int or (h, w) pair >= 0, or "valid" (no
padding) or "same" (stride 1 only; total padding dilation*(k-1), the odd pixel at the bottom/right
as in PyTorch).
"""

from nnkern import _validate as v
from nnkern.backend import device_of
from nnkern.ops._dispatch import impl
from nnkern.ops.conv2d._geometry import conv_geometry


def _check(op, x, w, b, stride, padding, dilation):
    v.check_array(op, "x", x, ndim=4, layout="4-D (N, C, H, W)")
    v.check_array(op, "w", w, ndim=4, layout="4-D (K, C, KH, KW)", dtype=x.dtype)
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"{op}: x has {x.shape[1]} channels but w expects {w.shape[1]} "
                         f"(w has shape {tuple(w.shape)})")
    if b is not None:
        v.check_array(op, "b", b, ndim=1, layout="1-D (K,)", dtype=x.dtype)
        v.check_shape(op, "b", b, (w.shape[0],), "one bias per output channel")
    return conv_geometry(op, x.shape, w.shape, stride, padding, dilation)


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, *, out=None):
    """y = conv2d(x, w) + b. Returns y (N, K, OH, OW), written into ``out`` when given."""
    op = "conv2d_forward"
    g = _check(op, x, w, b, stride, padding, dilation)
    v.check_out(op, "out", out, (g.N, g.K, g.OH, g.OW), x.dtype)
    device = device_of(x, w, b, out, names=("x", "w", "b", "out"))
    return impl(__name__, device).conv2d_forward(x, w, b, stride, padding, dilation, out=out)


def conv2d_backward(dy, x, w, stride=1, padding=0, dilation=1, *, has_bias=True, need_dx=True,
                    out=None):
    """Gradients of conv2d_forward. Returns (dx, dw, db).

    dx is None when ``need_dx`` is False (the first layer needs no input gradient), db is None
    when ``has_bias`` is False. ``out`` is an optional tuple (dx, dw, db) of buffers (entries may
    be None).
    """
    op = "conv2d_backward"
    g = _check(op, x, w, None, stride, padding, dilation)
    v.check_array(op, "dy", dy, ndim=4, layout="4-D (N, K, OH, OW)", dtype=x.dtype)
    v.check_shape(op, "dy", dy, (g.N, g.K, g.OH, g.OW), "(N, K, OH, OW) of the forward")
    out = (None, None, None) if out is None else tuple(out)
    if len(out) != 3:
        raise ValueError(f"{op}: out must be a tuple (dx, dw, db) of buffers or None, "
                         f"got {len(out)} entries")
    for name, buf, shape in zip(("dx", "dw", "db"), out, (x.shape, w.shape, (g.K,))):
        v.check_out(op, f"out {name}", buf, shape, x.dtype)
    device = device_of(dy, x, w, *out, names=("dy", "x", "w", "out dx", "out dw", "out db"))
    return impl(__name__, device).conv2d_backward(dy, x, w, stride, padding, dilation,
                                                  has_bias=has_bias, need_dx=need_dx, out=out)
