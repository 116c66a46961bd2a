"""NumPy reference for conv2d: the executable spec, slow and obvious on purpose.

The input is zero-padded explicitly (np.pad, per side) and the convolution is a sum over the
KH*KW kernel taps: tap (i, j) reads the strided slice of the padded input starting at
(i*dh, j*dw), and contributes w[:, :, i, j] (K, C) times it. Backward runs the same loop:
dw[:, :, i, j] correlates dy with that slice, dx scatters w[:, :, i, j].T @ dy back into it.
"""

import numpy as np

from nnkern.ops._ref import into
from nnkern.ops.conv2d._geometry import conv_geometry


def _tap(g, i, j):
    """The (rows, cols) slices of the padded input read by kernel tap (i, j) for all outputs."""
    rows = slice(i * g.dh, i * g.dh + g.sh * (g.OH - 1) + 1, g.sh)
    cols = slice(j * g.dw, j * g.dw + g.sw * (g.OW - 1) + 1, g.sw)
    return rows, cols


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, *, out=None):
    g = conv_geometry("conv2d_forward", x.shape, w.shape, stride, padding, dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (g.pt, g.pb), (g.pl, g.pr)))
    y = np.zeros((g.N, g.K, g.OH, g.OW), x.dtype)
    for i in range(g.KH):
        for j in range(g.KW):
            rows, cols = _tap(g, i, j)
            # y[n, k, oh, ow] += sum_c w[k, c, i, j] * xp[n, c, oh*sh + i*dh, ow*sw + j*dw]
            y += np.einsum("kc,nchw->nkhw", w[:, :, i, j], xp[:, :, rows, cols])
    if b is not None:
        y += b[None, :, None, None]
    return into(out, y.astype(x.dtype))


def conv2d_backward(dy, x, w, stride=1, padding=0, dilation=1, *, has_bias=True, need_dx=True,
                    out=None):
    g = conv_geometry("conv2d_backward", x.shape, w.shape, stride, padding, dilation)
    out = (None, None, None) if out is None else out
    xp = np.pad(x, ((0, 0), (0, 0), (g.pt, g.pb), (g.pl, g.pr)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for i in range(g.KH):
        for j in range(g.KW):
            rows, cols = _tap(g, i, j)
            # dw[k, c, i, j] = sum_{n, oh, ow} dy[n, k, oh, ow] * xp[n, c, oh*sh + i*dh, ...]
            dw[:, :, i, j] = np.einsum("nkhw,nchw->kc", dy, xp[:, :, rows, cols])
            # dxp[n, c, oh*sh + i*dh, ow*sw + j*dw] += sum_k w[k, c, i, j] * dy[n, k, oh, ow]
            dxp[:, :, rows, cols] += np.einsum("kc,nkhw->nchw", w[:, :, i, j], dy)
    dx = None
    if need_dx:  # the gradient of the padding is dropped
        dx = into(out[0], dxp[:, :, g.pt:g.pt + g.H, g.pl:g.pl + g.W].astype(x.dtype))
    dw = into(out[1], dw.astype(x.dtype))
    db = None
    if has_bias:
        db = into(out[2], dy.sum(axis=(0, 2, 3), dtype=np.float64).astype(x.dtype))
    return dx, dw, db
