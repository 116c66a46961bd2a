"""NumPy reference for the activations: the executable spec, slow and obvious on purpose.

Computed in float64 (whatever the input dtype) with NumPy's own exp/expm1/tanh, then cast to
the input's dtype. Numerically careful where the plain formula would overflow or cancel:
sigmoid in two branches, softmax with the maximum subtracted.
"""

import numpy as np

from nnkern.ops._ref import into
from nnkern.ops.activation import SELU_ALPHA, SELU_SCALE


def _f64(*arrays):
    return [np.asarray(a, np.float64) for a in arrays]


def relu_forward(x, *, out=None):
    (x64,) = _f64(x)
    return into(out, np.where(x64 < 0, 0.0, x64), x.dtype)  # NaN < 0 is False: NaN kept


def relu_backward(dy, x, y, *, out=None):
    dy64, x64 = _f64(dy, x)
    return into(out, np.where(x64 > 0, dy64, 0.0), x.dtype)


def leaky_relu_forward(x, negative_slope=0.01, *, out=None):
    (x64,) = _f64(x)
    return into(out, np.where(x64 > 0, x64, negative_slope * x64), x.dtype)


def leaky_relu_backward(dy, x, y, negative_slope=0.01, *, out=None):
    dy64, x64 = _f64(dy, x)
    return into(out, np.where(x64 > 0, dy64, negative_slope * dy64), x.dtype)


def _channel_view(w, x):
    # weight (1,) or (C,) -> shape broadcasting against x over axis 1
    if w.shape[0] == 1:
        return w.reshape(())
    return w.reshape((1, -1) + (1,) * (x.ndim - 2))


def prelu_forward(x, weight, *, out=None):
    x64, w64 = _f64(x, weight)
    w64 = _channel_view(w64, x64)
    return into(out, np.where(x64 > 0, x64, w64 * x64), x.dtype)


def prelu_backward(dy, x, weight, *, out=None):
    dx_out, dw_out = (None, None) if out is None else out
    dy64, x64, w64 = _f64(dy, x, weight)
    dx = np.where(x64 > 0, dy64, _channel_view(w64, x64) * dy64)
    contrib = np.where(x64 > 0, 0.0, x64 * dy64)
    if weight.shape[0] == 1:
        dw = np.array([contrib.sum()])
    else:
        dw = contrib.sum(axis=tuple(a for a in range(x.ndim) if a != 1))
    return into(dx_out, dx, x.dtype), into(dw_out, dw, x.dtype)


def elu_forward(x, alpha=1.0, *, out=None):
    (x64,) = _f64(x)
    return into(out, np.where(x64 > 0, x64, alpha * np.expm1(np.minimum(x64, 0))), x.dtype)


def elu_backward(dy, x, y, alpha=1.0, *, out=None):
    dy64, x64 = _f64(dy, x)
    return into(out, np.where(x64 > 0, dy64, alpha * np.exp(np.minimum(x64, 0)) * dy64),
                 x.dtype)


def selu_forward(x, *, out=None):
    (x64,) = _f64(x)
    return into(out, SELU_SCALE * elu_forward(x64, SELU_ALPHA), x.dtype)


def selu_backward(dy, x, y, *, out=None):
    dy64, x64 = _f64(dy, x)
    return into(out, SELU_SCALE * elu_backward(dy64, x64, None, SELU_ALPHA), x.dtype)


def sigmoid_forward(x, *, out=None):
    (x64,) = _f64(x)
    z = np.exp(-np.abs(x64))  # in (0, 1]: never overflows
    return into(out, np.where(x64 >= 0, 1.0 / (1.0 + z), z / (1.0 + z)), x.dtype)


def sigmoid_backward(dy, x, y, *, out=None):
    # from x, not y: s (1 - s) with both factors computed without cancellation
    dy64, x64 = _f64(dy, x)
    s_pos = sigmoid_forward(x64)
    s_neg = sigmoid_forward(-x64)
    return into(out, dy64 * s_pos * s_neg, x.dtype)


def tanh_forward(x, *, out=None):
    (x64,) = _f64(x)
    return into(out, np.tanh(x64), x.dtype)


def tanh_backward(dy, x, y, *, out=None):
    dy64, x64 = _f64(dy, x)
    return into(out, dy64 / np.cosh(np.minimum(np.abs(x64), 350.0)) ** 2, x.dtype)


def _log_softmax64(x64):
    m = x64.max(axis=1, keepdims=True)
    return x64 - m - np.log(np.exp(x64 - m).sum(axis=1, keepdims=True))


def softmax_forward(x, *, out=None):
    (x64,) = _f64(x)
    return into(out, np.exp(_log_softmax64(x64)), x.dtype)


def softmax_backward(dy, x, y, *, out=None):
    # full Jacobian per position: dx_i = sum_k y_k (δ_ik - y_i) dy_k, with y recomputed from x
    dy64, x64 = _f64(dy, x)
    y64 = np.exp(_log_softmax64(x64))
    dx = y64 * dy64 - y64 * (y64 * dy64).sum(axis=1, keepdims=True)
    return into(out, dx, x.dtype)


def log_softmax_forward(x, *, out=None):
    (x64,) = _f64(x)
    return into(out, _log_softmax64(x64), x.dtype)


def log_softmax_backward(dy, x, y, *, out=None):
    dy64, x64 = _f64(dy, x)
    p = np.exp(_log_softmax64(x64))
    return into(out, dy64 - p * dy64.sum(axis=1, keepdims=True), x.dtype)
