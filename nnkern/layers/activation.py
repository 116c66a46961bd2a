"""Activation layers. Each keeps its input x and output y for backward (both are alive anyway:
x is the previous layer's output, y the next layer's input), so no extra memory is held."""

import numpy as np

from nnkern import functional as F
from nnkern.layers._common import check_positive_int, cpu_backend
from nnkern.layers.base import Layer


class _Activation(Layer):
    """y = f(x) elementwise; subclasses name their op in OP and extra arguments in config."""
    OP = ""
    MIN_NDIM = 1

    def _forward(self, x, training):
        self._x = x
        if self._checked is not None and x.ndim >= self.MIN_NDIM and x.size \
                and type(x) is np.ndarray:
            self._y = getattr(cpu_backend("activation"), self.OP + "_forward")(x, **self.config)
            return self._y
        self._y = getattr(F, self.OP + "_forward")(x, **self.config)
        if type(x) is np.ndarray:  # the op validated self.config: later calls skip the checks
            self._checked = True
        return self._y

    def _backward(self, dy):
        x = self._x
        if self._checked is not None and type(dy) is np.ndarray and type(x) is np.ndarray \
                and dy.shape == x.shape and dy.dtype == x.dtype:
            return getattr(cpu_backend("activation"), self.OP + "_backward")(dy, x, self._y,
                                                                            **self.config)
        return getattr(F, self.OP + "_backward")(dy, x, self._y, **self.config)


class ReLU(_Activation):
    """max(0, x); the derivative at 0 is taken as 0 (as PyTorch)."""
    OP = "relu"


class LeakyReLU(_Activation):
    """x if x >= 0 else negative_slope * x (seed default slope 0.01)."""
    OP = "leaky_relu"

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.config = dict(negative_slope=float(negative_slope))


class ELU(_Activation):
    """x if x > 0 else alpha * (exp(x) - 1)."""
    OP = "elu"

    def __init__(self, alpha=1.0):
        super().__init__()
        self.config = dict(alpha=float(alpha))


class SELU(_Activation):
    """scale * ELU(x, alpha) with the self-normalising constants (scale ≈ 1.0507, alpha ≈
    1.67326, to full precision as in PyTorch)."""
    OP = "selu"


class Sigmoid(_Activation):
    OP = "sigmoid"


class Tanh(_Activation):
    OP = "tanh"


class Softmax(_Activation):
    """Softmax over axis 1 (features of (N, F), or channels at each position of (N, C, H, W)).
    For training a classifier use losses.SoftmaxCrossEntropy on the logits instead: fused,
    and stable."""
    OP = "softmax"
    MIN_NDIM = 2


class PReLU(Layer):
    """``PReLU(num_parameters=1, init=0.25)``: a learnable leaky slope, one shared or one per
    channel (axis 1)."""

    def __init__(self, num_parameters=1, init=0.25, *, dtype="float32"):
        super().__init__()
        num_parameters = check_positive_int("PReLU", "num_parameters", num_parameters)
        self.config = dict(num_parameters=num_parameters, init=float(init))
        self.weight = self.add_parameter("weight", np.full(num_parameters, init, np.dtype(dtype)))

    def _forward(self, x, training):
        self._x = x
        return F.prelu_forward(x, self.weight.data)

    def _backward(self, dy):
        dx, _ = F.prelu_backward(dy, self._x, self.weight.data, out=(None, self.weight.grad))
        return dx
