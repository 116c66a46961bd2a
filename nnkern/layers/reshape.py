"""Flatten: (N, C, H, W) -> (N, C*H*W), a view."""

import math

import numpy as np

from nnkern import functional as F
from nnkern.layers.base import Layer


class Flatten(Layer):
    def _forward(self, x, training):
        self._x_shape = x.shape
        if type(x) is np.ndarray and x.ndim >= 2 and x.size:  # contiguous (_prepare_input)
            return x.reshape(x.shape[0], -1)
        return F.flatten_forward(x)

    def _backward(self, dy):
        shape = self._x_shape
        if type(dy) is np.ndarray and dy.ndim == 2 and dy.shape[0] == shape[0] \
                and dy.size == math.prod(shape) and dy.size:
            return dy.reshape(shape)
        return F.flatten_backward(dy, shape)

    def output_shape(self, input_shape):
        return (input_shape[0], math.prod(input_shape[1:]))
