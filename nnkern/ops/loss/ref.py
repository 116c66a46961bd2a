"""NumPy reference for the losses: the executable spec, slow and obvious on purpose.

Everything is computed in float64; losses come back as Python floats, gradients in the input's
dtype. The formulas are in the package docstring (``nnkern/ops/loss/__init__.py``).
"""

import numpy as np

from nnkern.ops._ref import into

_LOG_MIN = -100.0   # torch clamps BCE's logs at -100 so p = 0 or 1 gives a finite loss
_EPS = float(np.float32(1e-12))  # torch's floor on p (1 - p) in the BCE gradient (a C++
                                 # float constant: 9.9999999600e-13 in float64 too)


def softmax_cross_entropy_forward(logits, labels):
    x = logits.astype(np.float64)
    n = x.shape[0]
    m = x.max(axis=1, keepdims=True)                           # stable log-sum-exp
    lse = m + np.log(np.exp(x - m).sum(axis=1, keepdims=True))
    loss = sum(lse[i, 0] - x[i, labels[i]] for i in range(n)) / n
    probs = np.exp(x - lse)
    return float(loss), probs.astype(logits.dtype)


def softmax_cross_entropy_backward(probs, labels, *, out=None):
    n, c = probs.shape
    onehot = np.zeros((n, c))
    onehot[np.arange(n), labels] = 1.0
    return into(out, ((probs.astype(np.float64) - onehot) / n).astype(probs.dtype))


def mse_forward(pred, target):
    d = pred.astype(np.float64) - target.astype(np.float64)
    return float(np.mean(d * d))


def mse_backward(pred, target, *, out=None):
    d = pred.astype(np.float64) - target.astype(np.float64)
    return into(out, (2.0 * d / d.size).astype(pred.dtype))


def binary_cross_entropy_forward(pred, target, *, from_logits=False):
    x = pred.astype(np.float64)
    t = target.astype(np.float64)
    if from_logits:
        # log(1 + e^x) - x t, written so that exp never overflows
        terms = np.maximum(x, 0.0) - x * t + np.log1p(np.exp(-np.abs(x)))
    else:
        with np.errstate(divide="ignore"):  # log(0) = -inf, clamped to -100 below
            log_p = np.maximum(np.log(x), _LOG_MIN)
            log_1mp = np.maximum(np.log1p(-x), _LOG_MIN)
        terms = -(t * log_p + (1.0 - t) * log_1mp)
    return float(np.mean(terms))


def binary_cross_entropy_backward(pred, target, *, from_logits=False, out=None):
    x = pred.astype(np.float64)
    t = target.astype(np.float64)
    if from_logits:
        e = np.exp(-np.abs(x))                   # sigmoid without overflow
        sig = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        grad = (sig - t) / x.size
    else:
        grad = (x - t) / np.maximum(x * (1.0 - x), _EPS) / x.size
    return into(out, grad.astype(pred.dtype))


def _hinge_terms(scores, labels, margin):
    """(N, C) matrix of margin - s[n, y_n] + s[n, j], with the j = y_n entries set to 0."""
    s = scores.astype(np.float64)
    n = s.shape[0]
    z = margin - s[np.arange(n), labels][:, None] + s
    z[np.arange(n), labels] = 0.0
    return z


def hinge_forward(scores, labels, *, margin=1.0):
    z = _hinge_terms(scores, labels, margin)
    n, c = z.shape
    return float(np.maximum(z, 0.0).sum() / c / n)


def hinge_backward(scores, labels, *, margin=1.0, out=None):
    z = _hinge_terms(scores, labels, margin)
    n, c = z.shape
    active = (z > 0).astype(np.float64)           # subgradient 0 at the kink z = 0
    ds = active.copy()
    ds[np.arange(n), labels] = -active.sum(axis=1)
    return into(out, (ds / (n * c)).astype(scores.dtype))
