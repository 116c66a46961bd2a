"""Numba CPU kernels for the losses (formulas in ``nnkern/ops/loss/__init__.py``).

Forward kernels write float64 partial sums, one per row (cross-entropy, hinge) or one per fixed
block of ``_BLOCK`` elements (MSE, BCE: any rank, flattened); the wrapper adds them in a fixed
order (NumPy's pairwise sum), so the loss is bit-identical whatever the thread count. Loss
terms are evaluated in float64 (inputs promoted), except the softmax's exponentials, which are
the probabilities themselves and are computed in the logits' dtype (float32: the vectorisable
``nnkern.ops._vmath.vexp``), then summed in float64. Gradients are computed in the input's
dtype with typed constants (Numba ignores NEP 50: a bare ``0.5`` would promote float32 to
float64).
"""

import numpy as np
from numba import prange

from nnkern._jit import cpu_kernel
from nnkern.ops._vmath import row_max, vexp

#: Elements per float64 partial sum of the element-wise losses (fixed: determinism).
_BLOCK = 4096
_LOG_MIN = -100.0   # torch clamps BCE's logs at -100, so p = 0 or 1 gives a finite loss
_EPS = float(np.float32(1e-12))  # torch's floor on p (1 - p) in the BCE gradient (a C++
                                 # float constant: 9.9999999600e-13 in float64 too)


def _labels(labels):
    """Labels as int64 for the kernels: one compile per float dtype, not per label dtype too.

    The range [0, C) was checked by the caller (nnkern.ops.loss), so uint64 cannot wrap here.
    """
    return labels.astype(np.int64, copy=False)


def _mean_of(partial, count):
    return float(partial.sum() / count)


def _blocks(size):
    return (size + _BLOCK - 1) // _BLOCK


# ---------------------------------------------------------------- softmax cross-entropy


@cpu_kernel
def _softmax_ce_fwd_kernel(x, labels, probs, row_loss):
    # x: (N, C), labels: (N,) int64 -> probs: (N, C) = softmax(x), row_loss: (N,) float64
    # row_loss[n] = logsumexp(x[n]) - x[n, y_n] with logsumexp = m + log(sum_j exp(x[n, j] - m)),
    # m = max_j x[n, j]: every exponent is <= 0, so nothing overflows for any finite logits.
    # Separate loops over the (L1-resident) row: exp alone vectorises, the float64 sum too.
    n_, c_ = x.shape
    for n in prange(n_):
        m = row_max(x[n])
        for j in range(c_):
            probs[n, j] = vexp(x[n, j] - m)  # float32: a vectorisable polynomial
        s = np.float64(0.0)   # (not 0.0: under NUMBA_DISABLE_JIT, NEP 50 would make it float32)
        for j in range(c_):
            s += probs[n, j]
        inv_s = x.dtype.type(1.0 / s)
        for j in range(c_):
            probs[n, j] *= inv_s
        y = labels[n]
        if 0 <= y < c_:
            row_loss[n] = m + np.log(s) - x[n, y]
        else:  # a flag for unvalidated labels: valid rows give >= 0 (m >= x[n, y], s >= 1) or NaN
            row_loss[n] = -np.inf


@cpu_kernel
def _softmax_ce_bwd_kernel(probs, labels, inv_n, dx):
    # probs: (N, C), labels: (N,) -> dx: (N, C) = (probs - onehot(labels)) / N; inv_n = 1/N typed
    n_, c_ = probs.shape
    one = probs.dtype.type(1.0)
    for n in prange(n_):
        for j in range(c_):
            dx[n, j] = probs[n, j] * inv_n
        y = labels[n]
        dx[n, y] = (probs[n, y] - one) * inv_n   # p - 1 is exact for p near 1 (Sterbenz)


def softmax_cross_entropy_forward(logits, labels):
    """(loss, probs). A label outside [0, C) makes the loss -inf or NaN (so a caller that did
    not check the labels checks them only when the loss is not >= 0)."""
    n, c = logits.shape
    probs = np.empty_like(logits)
    row_loss = np.empty(n, np.float64)
    _softmax_ce_fwd_kernel.for_size(n * c)(logits, _labels(labels), probs, row_loss)
    return _mean_of(row_loss, n), probs


def softmax_cross_entropy_backward(probs, labels, *, out=None):
    n = probs.shape[0]
    dx = np.empty_like(probs) if out is None else out
    inv_n = probs.dtype.type(1.0 / n)
    _softmax_ce_bwd_kernel.for_size(probs.size)(probs, _labels(labels), inv_n, dx)
    return dx


# ---------------------------------------------------------------- mean squared error


@cpu_kernel
def _mse_fwd_kernel(p, t, partial):
    # p, t: (M,) flattened -> partial: (B,) float64, partial[b] = sum of (p - t)^2 over block b
    size = p.shape[0]
    for b in prange(partial.shape[0]):
        acc = 0.0
        for i in range(b * _BLOCK, min(size, (b + 1) * _BLOCK)):
            d = np.float64(p[i]) - np.float64(t[i])
            acc += d * d
        partial[b] = acc


@cpu_kernel
def _mse_bwd_kernel(p, t, scale, dp):
    # p, t: (M,) -> dp: (M,) = (p - t) * scale, scale = 2 / numel typed
    for i in prange(p.shape[0]):
        dp[i] = (p[i] - t[i]) * scale


def mse_forward(pred, target):
    p, t = pred.reshape(-1), target.reshape(-1)
    partial = np.empty(_blocks(p.size), np.float64)
    _mse_fwd_kernel.for_size(p.size)(p, t, partial)
    return _mean_of(partial, p.size)


def mse_backward(pred, target, *, out=None):
    dp = np.empty_like(pred) if out is None else out
    scale = pred.dtype.type(2.0 / pred.size)
    _mse_bwd_kernel.for_size(pred.size)(pred.reshape(-1), target.reshape(-1), scale,
                                        dp.reshape(-1))
    return dp


# ---------------------------------------------------------------- binary cross-entropy


@cpu_kernel
def _bce_fwd_kernel(p, t, partial):
    # p (probabilities), t: (M,) -> partial: (B,) float64 block sums of
    # -(t log p + (1 - t) log(1 - p)), each log clamped at -100 (log(0) = -inf -> -100)
    size = p.shape[0]
    for b in prange(partial.shape[0]):
        acc = 0.0
        for i in range(b * _BLOCK, min(size, (b + 1) * _BLOCK)):
            pi = np.float64(p[i])
            ti = np.float64(t[i])
            log_p = max(np.log(pi), _LOG_MIN)
            log_1mp = max(np.log1p(-pi), _LOG_MIN)
            acc -= ti * log_p + (1.0 - ti) * log_1mp
        partial[b] = acc


@cpu_kernel
def _bce_logits_fwd_kernel(x, t, partial):
    # x (logits), t: (M,) -> partial: (B,) float64 block sums of
    # log(1 + e^x) - x t = max(x, 0) - x t + log1p(exp(-|x|))   (no overflow for any x)
    size = x.shape[0]
    for b in prange(partial.shape[0]):
        acc = 0.0
        for i in range(b * _BLOCK, min(size, (b + 1) * _BLOCK)):
            xi = np.float64(x[i])
            acc += max(xi, 0.0) - xi * np.float64(t[i]) + np.log1p(np.exp(-abs(xi)))
        partial[b] = acc


@cpu_kernel
def _bce_bwd_kernel(p, t, inv_numel, dp):
    # p, t: (M,) -> dp: (M,) = (p - t) / max(p (1 - p), 1e-12) / numel   (torch's floor)
    one = p.dtype.type(1.0)
    eps = p.dtype.type(_EPS)
    for i in prange(p.shape[0]):
        dp[i] = (p[i] - t[i]) / max((one - p[i]) * p[i], eps) * inv_numel


@cpu_kernel
def _bce_logits_bwd_kernel(x, t, inv_numel, dx):
    # x, t: (M,) -> dx: (M,) = (sigmoid(x) - t) / numel; sigmoid from e = exp(-|x|) <= 1
    one = x.dtype.type(1.0)
    for i in prange(x.shape[0]):
        e = np.exp(-abs(x[i]))
        sig = one / (one + e) if x[i] >= 0 else e / (one + e)
        dx[i] = (sig - t[i]) * inv_numel


def binary_cross_entropy_forward(pred, target, *, from_logits=False):
    p, t = pred.reshape(-1), target.reshape(-1)
    partial = np.empty(_blocks(p.size), np.float64)
    kernel = _bce_logits_fwd_kernel if from_logits else _bce_fwd_kernel
    kernel.for_size(p.size)(p, t, partial)
    return _mean_of(partial, p.size)


def binary_cross_entropy_backward(pred, target, *, from_logits=False, out=None):
    dp = np.empty_like(pred) if out is None else out
    inv_numel = pred.dtype.type(1.0 / pred.size)
    kernel = _bce_logits_bwd_kernel if from_logits else _bce_bwd_kernel
    kernel.for_size(pred.size)(pred.reshape(-1), target.reshape(-1), inv_numel, dp.reshape(-1))
    return dp


# ---------------------------------------------------------------- multiclass hinge


@cpu_kernel
def _hinge_fwd_kernel(s, labels, margin, row_loss):
    # s: (N, C), labels: (N,) -> row_loss: (N,) float64
    # row_loss[n] = sum_{j != y} max(0, margin - s[n, y] + s[n, j]) / C   (torch MultiMarginLoss)
    n_, c_ = s.shape
    for n in prange(n_):
        y = labels[n]
        base = margin - np.float64(s[n, y])
        acc = 0.0
        for j in range(c_):
            z = base + s[n, j]
            if j != y and z > 0.0:
                acc += z
        row_loss[n] = acc / c_


@cpu_kernel
def _hinge_bwd_kernel(s, labels, margin, g, ds):
    # s: (N, C), labels: (N,) -> ds: (N, C); g = 1/(N C) typed. Each active term
    # (z = margin - s_y + s_j > 0; none at the kink z = 0, as in torch) adds g to ds[n, j] and -g
    # to ds[n, y]. z is formed exactly as in the forward, so both agree on which terms are active.
    n_, c_ = s.shape
    zero = s.dtype.type(0.0)
    for n in prange(n_):
        y = labels[n]
        base = margin - np.float64(s[n, y])
        active = 0
        for j in range(c_):
            z = base + s[n, j]
            if j != y and z > 0.0:
                ds[n, j] = g
                active += 1
            else:
                ds[n, j] = zero
        ds[n, y] = -(s.dtype.type(active) * g)


def hinge_forward(scores, labels, *, margin=1.0):
    n, c = scores.shape
    row_loss = np.empty(n, np.float64)
    _hinge_fwd_kernel.for_size(n * c)(scores, _labels(labels), float(margin), row_loss)
    return _mean_of(row_loss, n)


def hinge_backward(scores, labels, *, margin=1.0, out=None):
    n, c = scores.shape
    ds = np.empty_like(scores) if out is None else out
    g = scores.dtype.type(1.0 / (n * c))
    _hinge_bwd_kernel.for_size(n * c)(scores, _labels(labels), float(margin), g, ds)
    return ds
