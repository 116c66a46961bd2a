"""Pooling layers over (N, C, H, W): max, average, and global average."""

import numpy as np

from nnkern import _validate as v
from nnkern import functional as F
from nnkern.layers._common import check_input_rank, cpu_backend
from nnkern.layers.base import Layer


class _Pool2D(Layer):
    def __init__(self, name, kernel_size, stride, padding, dilation=1, ceil_mode=False):
        super().__init__()
        kernel_size = v.pair(name, "kernel_size", kernel_size, 1)
        stride = kernel_size if stride is None else v.pair(name, "stride", stride, 1)
        padding = v.pair(name, "padding", padding, 0)
        dilation = v.pair(name, "dilation", dilation, 1)
        for axis in (0, 1):
            if padding[axis] > (dilation[axis] * (kernel_size[axis] - 1) + 1) // 2:
                raise ValueError(f"{name}: padding {padding} must be at most half the kernel "
                                 f"size {kernel_size} (as in PyTorch)")
        self.config = dict(kernel_size=kernel_size, stride=stride, padding=padding)
        self._dilation = dilation
        self._ceil_mode = bool(ceil_mode)

    def _fast(self, x):
        """True when ``x`` (a CPU array from _prepare_input) has the per-sample shape of a call
        the validating op accepted: the window geometry is then known to be valid."""
        return self._checked is not None and x.shape[1:] == self._checked[0] and x.shape[0] > 0 \
            and type(x) is np.ndarray

    def _validated(self, x, y):
        if type(x) is np.ndarray:
            self._checked = (x.shape[1:], y.shape[1:])

    def _fast_grad(self, dy):
        return self._checked is not None and type(dy) is np.ndarray \
            and dy.shape[1:] == self._checked[1] and dy.shape[0] == self._x_shape[0] \
            and len(self._x_shape) == 4 and self._x_shape[1:] == self._checked[0]

    def output_shape(self, input_shape):
        n, c, h, w = input_shape
        (kh, kw), (sh, sw), (ph, pw) = (self.config[k] for k in ("kernel_size", "stride",
                                                                   "padding"))
        (dh, dw), ceil = self._dilation, self._ceil_mode
        name = type(self).__name__
        return (n, c, v.window_output_size(name, h, kh, sh, ph, dh, ceil, "H"),
                v.window_output_size(name, w, kw, sw, pw, dw, ceil, "W"))


class MaxPool2D(_Pool2D):
    """``MaxPool2D(kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False)``;
    backward routes each gradient to the position of its window's maximum."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__("MaxPool2D", kernel_size, stride, padding, dilation, ceil_mode)
        self.config.update(dilation=self._dilation, ceil_mode=self._ceil_mode)

    def _forward(self, x, training):
        if self._fast(x):
            c = self.config
            y, self._argmax = cpu_backend("pool2d").max_pool2d_forward(
                x, c["kernel_size"], c["stride"], c["padding"], c["dilation"], c["ceil_mode"])
        else:
            check_input_rank(self, x, (4,), "4-D (N, C, H, W)")
            y, self._argmax = F.max_pool2d_forward(x, **self.config)
            self._validated(x, y)
        self._x_shape = x.shape
        return y

    def _backward(self, dy):
        if self._fast_grad(dy):
            return cpu_backend("pool2d").max_pool2d_backward(dy, self._argmax, self._x_shape)
        return F.max_pool2d_backward(dy, self._argmax, self._x_shape)


class AvgPool2D(_Pool2D):
    """``AvgPool2D(kernel_size, stride=None, padding=0, ceil_mode=False,
    count_include_pad=True)`` (PyTorch's defaults: padded zeros count in the divisor)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True):
        super().__init__("AvgPool2D", kernel_size, stride, padding, 1, ceil_mode)
        self.config.update(ceil_mode=self._ceil_mode, count_include_pad=bool(count_include_pad))

    def _forward(self, x, training):
        self._x_shape = x.shape
        c = self.config
        if self._fast(x):
            return cpu_backend("pool2d").avg_pool2d_forward(
                x, c["kernel_size"], c["stride"], c["padding"], c["ceil_mode"],
                c["count_include_pad"])
        check_input_rank(self, x, (4,), "4-D (N, C, H, W)")
        y = F.avg_pool2d_forward(x, **self.config)
        self._validated(x, y)
        return y

    def _backward(self, dy):
        c = self.config
        if self._fast_grad(dy):
            return cpu_backend("pool2d").avg_pool2d_backward(dy, self._x_shape, c["kernel_size"],
                                                 c["stride"], c["padding"], c["ceil_mode"],
                                                 c["count_include_pad"])
        return F.avg_pool2d_backward(dy, self._x_shape, **self.config)


class GlobalAvgPool2D(Layer):
    """Mean over H and W: (N, C, H, W) -> (N, C) (seed 000's all-convolutional head)."""

    def _forward(self, x, training):
        check_input_rank(self, x, (4,), "4-D (N, C, H, W)")
        self._x_shape = x.shape
        return F.global_avg_pool2d_forward(x)

    def _backward(self, dy):
        return F.global_avg_pool2d_backward(dy, self._x_shape)

    def output_shape(self, input_shape):
        return tuple(input_shape[:2])
