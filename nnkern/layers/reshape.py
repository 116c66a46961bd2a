"""Flatten: (N, C, H, W) -> (N, C*H*W), a view."""

import math

from nnkern import functional as F
from nnkern.layers.base import Layer


class Flatten(Layer):
    def _forward(self, x, training):
        self._x_shape = x.shape
        return F.flatten_forward(x)

    def _backward(self, dy):
        return F.flatten_backward(dy, self._x_shape)

    def output_shape(self, input_shape):
        return (input_shape[0], math.prod(input_shape[1:]))
