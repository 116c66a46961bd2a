"""NumPy reference for dense: the executable spec, slow and obvious on purpose."""

import numpy as np

from nnkern.ops._ref import into


def dense_forward(x, w, b=None, *, out=None):
    # y[n, o] = sum_i x[n, i] w[o, i] + b[o]
    y = np.einsum("ni,oi->no", x, w)
    if b is not None:
        y = y + b
    return into(out, y.astype(x.dtype))


def dense_backward(dy, x, w, *, has_bias=True, need_dx=True, out=None):
    out = (None, None, None) if out is None else out
    dx = into(out[0], np.einsum("no,oi->ni", dy, w).astype(x.dtype)) if need_dx else None
    dw = into(out[1], np.einsum("no,ni->oi", dy, x).astype(x.dtype))
    db = into(out[2], dy.sum(axis=0, dtype=np.float64).astype(x.dtype)) if has_bias else None
    return dx, dw, db
