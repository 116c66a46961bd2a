"""Loss objects for training: ``forward(pred, target) -> float``, then ``backward() -> dpred``.

    loss_fn = SoftmaxCrossEntropy()
    loss = loss_fn(logits, labels)     # Python float, mean over the batch
    dlogits = loss_fn.backward()       # gradient of that mean w.r.t. logits, same shape/dtype

Each object keeps what its backward needs from the last forward (references to the arrays, not
copies: don't modify them in place in between). Semantics are PyTorch's with
``reduction="mean"``: ``CrossEntropyLoss``, ``MSELoss``, ``BCELoss``/``BCEWithLogitsLoss``,
``MultiMarginLoss`` (see :mod:`nnkern.ops.loss` for formulas). Unlike the strict functional ops
(:mod:`nnkern.functional`), these accept targets given as lists or NumPy arrays of another
dtype: class labels go through ``np.asarray``, regression/BCE targets are cast to the
prediction's dtype. Predictions are never converted.
"""

import numpy as np

from nnkern import _validate as v
from nnkern import functional as F
from nnkern.backend import CPU, is_cuda_array

__all__ = ["SoftmaxCrossEntropy", "MSE", "BinaryCrossEntropy", "Hinge"]


def _labels(target):
    """Class labels: lists, tuples and strided arrays become contiguous NumPy arrays."""
    if is_cuda_array(target):
        return target
    return np.ascontiguousarray(target)


def _like(target, pred):
    """A regression/BCE target as a contiguous array in ``pred``'s dtype (host targets only)."""
    if is_cuda_array(target) or not hasattr(pred, "dtype"):
        return target
    dtype = np.dtype(pred.dtype)
    if isinstance(target, np.ndarray) and target.dtype.kind not in "biuf":
        return target  # let the op reject strings, objects, ... with its own message
    return np.ascontiguousarray(target, dtype=dtype)


def _cpu_loss():
    from nnkern.ops._dispatch import impl
    return impl("nnkern.ops.loss", CPU)


def _cpu_scores(pred, labels):
    """True when (pred, labels) are what the checking op accepts on the CPU, tested in one go:
    pred a C-contiguous float (N, C) array, labels N C-contiguous integer class indices (their
    range is checked by the kernel: see ``SoftmaxCrossEntropy._loss``). Anything else takes
    the op's own checks and messages."""
    if type(pred) is not np.ndarray or type(labels) is not np.ndarray or pred.ndim != 2 \
            or labels.ndim != 1 or labels.dtype.kind not in "iu" \
            or pred.dtype not in v.FLOAT_DTYPES:
        return False
    n, c = pred.shape
    return n > 0 and c > 0 and labels.shape[0] == n and pred.flags.c_contiguous \
        and labels.flags.c_contiguous


class _Loss:
    """Shared plumbing: ``__call__`` is ``forward``; ``backward`` needs a forward first."""

    def __init__(self):
        self._saved = None

    def forward(self, pred, target):
        """The mean loss as a Python float; remembers what ``backward`` needs."""
        self._saved = None  # a failed forward must not leave the previous inputs behind
        loss, self._saved = self._loss(pred, target)
        return loss

    def _loss(self, pred, target):
        """(loss, saved): the loss and the tuple that ``_gradient`` takes."""
        raise NotImplementedError

    def _gradient(self, *saved):
        raise NotImplementedError

    def __call__(self, pred, target):
        return self.forward(pred, target)

    def backward(self):
        """dL/dpred for the last forward's inputs (the mean's 1/N included)."""
        if self._saved is None:
            name = type(self).__name__
            raise RuntimeError(f"{name}.backward() called before forward(): call "
                               f"{name}.forward(pred, target) (or the object itself) first")
        return self._gradient(*self._saved)

    def __repr__(self):
        return f"{type(self).__name__}()"


class SoftmaxCrossEntropy(_Loss):
    """Softmax + cross-entropy on logits (N, C) with integer labels (N,), mean over the batch.

    Same as ``torch.nn.CrossEntropyLoss()`` (without ``ignore_index``: every label must be in
    [0, C)). After forward, ``probs`` holds softmax(logits).
    """

    def __init__(self):
        super().__init__()
        self.probs = None

    def _loss(self, pred, target):
        labels = _labels(target)
        if _cpu_scores(pred, labels):  # checked here, once for forward and backward
            cpu = _cpu_loss()
            loss, probs = cpu.softmax_cross_entropy_forward(pred, labels)
            # A label outside [0, C) makes the kernel's loss -inf (or NaN): only then are the
            # labels checked here, by the op, which raises its error (a min and a max of the
            # labels cost more than the kernel at an MLP's 64 x 10).
            if not loss >= 0.0:
                F.softmax_cross_entropy_forward(pred, labels)
            self.probs = probs
            return loss, (probs, labels.astype(np.int64, copy=False), cpu)
        loss, self.probs = F.softmax_cross_entropy_forward(pred, labels)
        return loss, (self.probs, labels, None)

    def _gradient(self, probs, labels, cpu):
        if cpu is not None:
            return cpu.softmax_cross_entropy_backward(probs, labels)
        return F.softmax_cross_entropy_backward(probs, labels)


class MSE(_Loss):
    """Mean squared error over all elements (``torch.nn.MSELoss()``); any shape."""

    def _loss(self, pred, target):
        target = _like(target, pred)
        return F.mse_forward(pred, target), (pred, target)

    def _gradient(self, pred, target):
        return F.mse_backward(pred, target)


class BinaryCrossEntropy(_Loss):
    """Binary cross-entropy, mean over all elements, targets in [0, 1].

    ``from_logits=False``: ``pred`` are sigmoid outputs in [0, 1] (``torch.nn.BCELoss()``);
    ``from_logits=True``: ``pred`` are raw logits (``torch.nn.BCEWithLogitsLoss()``, stable
    for large logits; prefer it to a Sigmoid layer followed by BCE).
    """

    def __init__(self, from_logits=False):
        super().__init__()
        if not isinstance(from_logits, (bool, np.bool_)):
            raise TypeError(f"BinaryCrossEntropy: from_logits must be True or False, got "
                            f"{type(from_logits).__name__} {from_logits!r}")
        self.from_logits = bool(from_logits)

    def _loss(self, pred, target):
        target = _like(target, pred)
        loss = F.binary_cross_entropy_forward(pred, target, from_logits=self.from_logits)
        return loss, (pred, target)

    def _gradient(self, pred, target):
        return F.binary_cross_entropy_backward(pred, target, from_logits=self.from_logits)

    def __repr__(self):
        return f"BinaryCrossEntropy(from_logits={self.from_logits})"


class Hinge(_Loss):
    """Multiclass hinge loss on scores (N, C) with integer labels (N,), mean over the batch.

    ``torch.nn.MultiMarginLoss(p=1, margin=margin)``: per sample
    sum_{j != y} max(0, margin - s_y + s_j) / C. The division by C is PyTorch's; the seed's
    multiclass SVM loss (S2 eq. 2.36) has none, so it equals C times this value.
    """

    def __init__(self, margin=1.0):
        super().__init__()
        self.margin = v.check_float("Hinge", "margin", margin)

    def _loss(self, pred, target):
        labels = _labels(target)
        return F.hinge_forward(pred, labels, margin=self.margin), (pred, labels)

    def _gradient(self, scores, labels):
        return F.hinge_backward(scores, labels, margin=self.margin)

    def __repr__(self):
        return f"Hinge(margin={self.margin})"
