"""Loss ops: softmax cross-entropy, mean squared error, binary cross-entropy, multiclass hinge.

Every forward returns the loss as a Python float, reduced by the mean and accumulated in float64;
every backward returns the gradient of that loss with respect to the prediction (dL/dpred, with
the 1/N or 1/numel of the mean already applied), in the prediction's dtype. Semantics are
PyTorch's (``CrossEntropyLoss``, ``MSELoss``, ``BCELoss``/``BCEWithLogitsLoss``,
``MultiMarginLoss(p=1)``), each with ``reduction="mean"`` and no weights:

    softmax CE  L = mean_n ( logsumexp(x[n]) - x[n, y_n] )
                dx = (softmax(x) - onehot(y)) / N
    MSE         L = mean_i (p_i - t_i)^2
                dp = 2 (p - t) / numel
    BCE         L = mean_i -(t log p + (1-t) log(1-p))    (each log clamped at >= -100, as in
                dp = (p - t) / max(p (1-p), 1e-12) / numel  torch: p = 0 or 1 stays finite)
    BCE logits  L = mean_i max(x, 0) - x t + log1p(exp(-|x|))
                dx = (sigmoid(x) - t) / numel
    hinge       L = mean_n sum_{j != y_n} max(0, margin - s[n, y_n] + s[n, j]) / C
                ds[n, j] = 1/(N C) where the term is > 0, ds[n, y_n] = -(number of such j)/(N C)

The hinge loss divides by C like ``torch.nn.MultiMarginLoss``; the seed's multiclass SVM loss
(S2 eq. 2.36) does not. We follow PyTorch so losses compare 1:1 (multiply by C for the seed's
value). Unlike ``CrossEntropyLoss`` there is no ``ignore_index``: every label must be a class in
[0, C) (torch's default ignore_index -100 is an error here).
"""

import numbers

import numpy as np

from nnkern import _validate as v
from nnkern.backend import device_of
from nnkern.ops._dispatch import impl


def _check_labels(op, labels, n, c):
    """labels: 1-D integer class indices, one per row of an (N, C) input, each in [0, C)."""
    if not hasattr(labels, "dtype") or not hasattr(labels, "shape"):
        raise TypeError(f"{op}: labels must be an array of integer class indices, "
                        f"got {type(labels).__name__}")
    dtype = np.dtype(labels.dtype)
    if dtype.kind not in "iu":
        raise TypeError(f"{op}: labels must have an integer dtype (class indices), got {dtype}; "
                        "convert with .astype(np.int64)")
    if len(labels.shape) != 1:
        raise ValueError(f"{op}: labels must be 1-D (N,), got shape {tuple(labels.shape)}")
    if labels.shape[0] != n:
        raise ValueError(f"{op}: labels has {labels.shape[0]} entries but the batch has {n} rows")
    if not v._is_c_contiguous(labels):
        raise ValueError(f"{op}: labels must be C-contiguous, got a strided view; "
                         "pass np.ascontiguousarray(labels)")
    if isinstance(labels, np.ndarray):  # device arrays: the CUDA backend checks the range
        low, high = labels.min(), labels.max()
        if low < 0 or high >= c:
            bad = low if low < 0 else high
            raise ValueError(f"{op}: labels must be class indices in [0, {c}) (C = {c}), "
                             f"got label {bad}")


def _check_scores(op, name, x, labels):
    v.check_array(op, name, x, ndim=2, layout="2-D (N, C)")
    _check_labels(op, labels, x.shape[0], x.shape[1])


def _check_pair(op, pred_name, pred, target):
    v.check_array(op, pred_name, pred)
    v.check_array(op, "target", target, dtype=pred.dtype)
    v.check_shape(op, "target", target, pred.shape, f"the shape of {pred_name}")


def _check_unit_interval(op, name, a, hint=""):
    if isinstance(a, np.ndarray):  # device arrays: the CUDA backend checks the range
        low, high = a.min(), a.max()
        if not (low >= 0 and high <= 1):  # also catches NaN
            raise ValueError(f"{op}: {name} must lie in [0, 1]{hint}, got values in "
                             f"[{low:g}, {high:g}]")


def _check_bool(op, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be True or False, got {type(value).__name__} "
                        f"{value!r}")
    return bool(value)


def _check_margin(op, margin):
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real):
        raise TypeError(f"{op}: margin must be a number, got {type(margin).__name__} {margin!r}")
    if not np.isfinite(margin):
        raise ValueError(f"{op}: margin must be finite, got {margin}")
    return float(margin)


# ---------------------------------------------------------------- softmax cross-entropy


def softmax_cross_entropy_forward(logits, labels):
    """Mean softmax cross-entropy of ``logits`` (N, C) against integer ``labels`` (N,).

    Returns (loss, probs): the loss as a Python float, and softmax(logits) (N, C) in the
    logits' dtype, which is what the backward needs. Stable for any finite logits (the
    log-sum-exp subtracts each row's max).
    """
    op = "softmax_cross_entropy_forward"
    _check_scores(op, "logits", logits, labels)
    device = device_of(logits, labels, names=("logits", "labels"))
    return impl(__name__, device).softmax_cross_entropy_forward(logits, labels)


def softmax_cross_entropy_backward(probs, labels, *, out=None):
    """dL/dlogits = (probs - onehot(labels)) / N, from the forward's ``probs`` (N, C)."""
    op = "softmax_cross_entropy_backward"
    _check_scores(op, "probs", probs, labels)
    v.check_out(op, "out", out, probs.shape, probs.dtype)
    device = device_of(probs, labels, out, names=("probs", "labels", "out"))
    return impl(__name__, device).softmax_cross_entropy_backward(probs, labels, out=out)


# ---------------------------------------------------------------- mean squared error


def mse_forward(pred, target):
    """Mean over all elements of (pred - target)^2, as a Python float. Any rank."""
    _check_pair("mse_forward", "pred", pred, target)
    device = device_of(pred, target, names=("pred", "target"))
    return impl(__name__, device).mse_forward(pred, target)


def mse_backward(pred, target, *, out=None):
    """dL/dpred = 2 (pred - target) / numel."""
    op = "mse_backward"
    _check_pair(op, "pred", pred, target)
    v.check_out(op, "out", out, pred.shape, pred.dtype)
    device = device_of(pred, target, out, names=("pred", "target", "out"))
    return impl(__name__, device).mse_backward(pred, target, out=out)


# ---------------------------------------------------------------- binary cross-entropy


def _check_bce(op, pred, target, from_logits):
    from_logits = _check_bool(op, "from_logits", from_logits)
    _check_pair(op, "pred", pred, target)
    if not from_logits:
        _check_unit_interval(op, "pred", pred,
                             " (probabilities; pass from_logits=True for raw scores)")
    _check_unit_interval(op, "target", target)
    return from_logits


def binary_cross_entropy_forward(pred, target, *, from_logits=False):
    """Mean binary cross-entropy, as a Python float. Any rank.

    from_logits=False: ``pred`` are probabilities in [0, 1] (torch ``BCELoss``, logs clamped at
    -100); from_logits=True: ``pred`` are logits (torch ``BCEWithLogitsLoss``, stable form).
    ``target`` in [0, 1], same shape and dtype as ``pred``.
    """
    op = "binary_cross_entropy_forward"
    from_logits = _check_bce(op, pred, target, from_logits)
    device = device_of(pred, target, names=("pred", "target"))
    return impl(__name__, device).binary_cross_entropy_forward(pred, target,
                                                               from_logits=from_logits)


def binary_cross_entropy_backward(pred, target, *, from_logits=False, out=None):
    """dL/dpred: (p - t) / max(p(1-p), 1e-12) / numel, or (sigmoid(x) - t) / numel for logits."""
    op = "binary_cross_entropy_backward"
    from_logits = _check_bce(op, pred, target, from_logits)
    v.check_out(op, "out", out, pred.shape, pred.dtype)
    device = device_of(pred, target, out, names=("pred", "target", "out"))
    return impl(__name__, device).binary_cross_entropy_backward(pred, target,
                                                                from_logits=from_logits, out=out)


# ---------------------------------------------------------------- multiclass hinge


def hinge_forward(scores, labels, *, margin=1.0):
    """Mean multiclass hinge loss (torch ``MultiMarginLoss(p=1, margin)``), as a Python float.

    scores (N, C), labels (N,) integer class indices.
    """
    op = "hinge_forward"
    _check_scores(op, "scores", scores, labels)
    margin = _check_margin(op, margin)
    device = device_of(scores, labels, names=("scores", "labels"))
    return impl(__name__, device).hinge_forward(scores, labels, margin=margin)


def hinge_backward(scores, labels, *, margin=1.0, out=None):
    """Subgradient dL/dscores (0 at the kinks, where a term is exactly 0, as in torch)."""
    op = "hinge_backward"
    _check_scores(op, "scores", scores, labels)
    margin = _check_margin(op, margin)
    v.check_out(op, "out", out, scores.shape, scores.dtype)
    device = device_of(scores, labels, out, names=("scores", "labels", "out"))
    return impl(__name__, device).hinge_backward(scores, labels, margin=margin, out=out)
