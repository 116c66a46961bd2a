"""2-D pooling ops: max, average and global average pooling over (N, C, H, W).

Semantics are PyTorch's ``F.max_pool2d`` / ``F.avg_pool2d``:
* output size floor((H + 2*pad - dilation*(k-1) - 1) / stride) + 1 (ceil with ``ceil_mode``,
  the last window must start inside the input or the left padding);
* padding at most half the kernel, ``padding <= kernel_size // 2`` per axis (what PyTorch
  enforces; with dilation this is stricter than half the effective kernel);
* max: padded positions never win; ties go to the first maximum in row-major window order;
  a NaN wins over any number and a later NaN over an earlier one (PyTorch CPU's
  ``val > maxval || isnan(val)``). ``argmax`` is int32, the flat index h*W + w into the input
  plane. A dilated window that holds no input element at all gives -inf and argmax -1 (its
  gradient goes nowhere; PyTorch writes an out-of-plane index there);
* avg: the divisor is the window clipped to the padded input with ``count_include_pad``,
  clipped to the real input without it (also in ceil mode);
* global average: y[n, c] = mean over (h, w) of x[n, c], shape (N, C) as Keras'
  GlobalAveragePooling2D; dx = dy / (H*W) broadcast.
"""

import numbers

import numpy as np

from nnkern import _validate as v
from nnkern.backend import device_of
from nnkern.ops._dispatch import impl

_NCHW = "4-D (N, C, H, W)"


def _check_bool(op, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def _check_x_shape(op, x_shape):
    """The forward input's shape given to a backward: 4 positive ints (N, C, H, W)."""
    if not isinstance(x_shape, (tuple, list)) or len(x_shape) != 4 or not all(
            isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in x_shape):
        raise TypeError(f"{op}: x_shape must be a tuple of 4 ints (N, C, H, W), got {x_shape!r}")
    x_shape = tuple(int(n) for n in x_shape)
    if x_shape[0] == 0:
        raise ValueError(f"{op}: x_shape has an empty batch: {x_shape}")
    if min(x_shape) < 1:
        raise ValueError(f"{op}: x_shape must have positive sizes, got {x_shape}")
    return x_shape


def _window(op, x_shape, kernel_size, stride, padding, dilation, ceil_mode):
    """Validate the pooling parameters; returns (kernel, stride, padding, dilation, (OH, OW))."""
    kernel = v.pair(op, "kernel_size", kernel_size, minimum=1)
    stride = kernel if stride is None else v.pair(op, "stride", stride, minimum=1)
    padding = v.pair(op, "padding", padding, minimum=0)
    dilation = v.pair(op, "dilation", dilation, minimum=1)
    ceil_mode = _check_bool(op, "ceil_mode", ceil_mode)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{op}: padding must be at most half the kernel size, i.e. <= "
                         f"({kernel[0] // 2}, {kernel[1] // 2}) for kernel_size {kernel}, "
                         f"got padding {padding}")
    out_hw = tuple(v.window_output_size(op, x_shape[2 + a], kernel[a], stride[a], padding[a],
                                        dilation[a], ceil_mode, axis="HW"[a]) for a in range(2))
    return kernel, stride, padding, dilation, out_hw


def _check_argmax(op, name, a, shape, what):
    """An argmax array (or buffer): int32, C-contiguous, of the given shape."""
    if not hasattr(a, "dtype") or not hasattr(a, "shape"):
        raise TypeError(f"{op}: {name} must be an array, got {type(a).__name__}")
    if np.dtype(a.dtype) != np.int32:
        raise TypeError(f"{op}: {name} must have dtype int32 (as max_pool2d_forward returns), "
                        f"got {a.dtype}")
    v.check_shape(op, name, a, shape, what)
    if not v._is_c_contiguous(a):
        raise ValueError(f"{op}: {name} must be C-contiguous, got a strided view")


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
                       out=None):
    """Max pooling. Returns (y, argmax), both (N, C, OH, OW); argmax int32 = h*W + w.

    ``out`` is an optional pair (y, argmax) of buffers (entries may be None).
    """
    op = "max_pool2d_forward"
    v.check_array(op, "x", x, ndim=4, layout=_NCHW)
    kernel, stride, padding, dilation, (oh, ow) = _window(op, x.shape, kernel_size, stride,
                                                          padding, dilation, ceil_mode)
    shape = (x.shape[0], x.shape[1], oh, ow)
    y_out, argmax_out = (None, None) if out is None else tuple(out)
    v.check_out(op, "out y", y_out, shape, x.dtype)
    if argmax_out is not None:
        _check_argmax(op, "out argmax", argmax_out, shape, "the shape of the result")
    device = device_of(x, y_out, argmax_out, names=("x", "out y", "out argmax"))
    return impl(__name__, device).max_pool2d_forward(x, kernel, stride, padding, dilation,
                                                     ceil_mode, out=(y_out, argmax_out))


def max_pool2d_backward(dy, argmax, x_shape, *, out=None):
    """Gradient of max pooling: dx[n, c].flat[argmax[n, c, i, j]] += dy[n, c, i, j]."""
    op = "max_pool2d_backward"
    x_shape = _check_x_shape(op, x_shape)
    v.check_array(op, "dy", dy, ndim=4, layout=_NCHW)
    _check_argmax(op, "argmax", argmax, dy.shape, "the shape of dy")
    if tuple(dy.shape[:2]) != x_shape[:2]:
        raise ValueError(f"{op}: dy has (N, C) = {tuple(dy.shape[:2])} but x_shape has "
                         f"{x_shape[:2]}")
    v.check_out(op, "out", out, x_shape, dy.dtype)
    device = device_of(dy, argmax, out, names=("dy", "argmax", "out"))
    return impl(__name__, device).max_pool2d_backward(dy, argmax, x_shape, out=out)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                       count_include_pad=True, *, out=None):
    """Average pooling. Returns y (N, C, OH, OW)."""
    op = "avg_pool2d_forward"
    v.check_array(op, "x", x, ndim=4, layout=_NCHW)
    kernel, stride, padding, _, (oh, ow) = _window(op, x.shape, kernel_size, stride, padding, 1,
                                                   ceil_mode)
    count_include_pad = _check_bool(op, "count_include_pad", count_include_pad)
    v.check_out(op, "out", out, (x.shape[0], x.shape[1], oh, ow), x.dtype)
    device = device_of(x, out, names=("x", "out"))
    return impl(__name__, device).avg_pool2d_forward(x, kernel, stride, padding, ceil_mode,
                                                     count_include_pad, out=out)


def avg_pool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, *, out=None):
    """Gradient of average pooling: each window spreads dy / divisor over its input elements."""
    op = "avg_pool2d_backward"
    x_shape = _check_x_shape(op, x_shape)
    v.check_array(op, "dy", dy, ndim=4, layout=_NCHW)
    kernel, stride, padding, _, (oh, ow) = _window(op, x_shape, kernel_size, stride, padding, 1,
                                                   ceil_mode)
    count_include_pad = _check_bool(op, "count_include_pad", count_include_pad)
    v.check_shape(op, "dy", dy, (x_shape[0], x_shape[1], oh, ow),
                  "(N, C, OH, OW) of the forward with these pooling parameters")
    v.check_out(op, "out", out, x_shape, dy.dtype)
    device = device_of(dy, out, names=("dy", "out"))
    return impl(__name__, device).avg_pool2d_backward(dy, x_shape, kernel, stride, padding,
                                                      ceil_mode, count_include_pad, out=out)


def global_avg_pool2d_forward(x, *, out=None):
    """y[n, c] = mean over (h, w) of x[n, c, h, w]; y is (N, C)."""
    op = "global_avg_pool2d_forward"
    v.check_array(op, "x", x, ndim=4, layout=_NCHW)
    v.check_out(op, "out", out, x.shape[:2], x.dtype)
    device = device_of(x, out, names=("x", "out"))
    return impl(__name__, device).global_avg_pool2d_forward(x, out=out)


def global_avg_pool2d_backward(dy, x_shape, *, out=None):
    """dx[n, c, h, w] = dy[n, c] / (H*W)."""
    op = "global_avg_pool2d_backward"
    x_shape = _check_x_shape(op, x_shape)
    v.check_array(op, "dy", dy, ndim=2, layout="2-D (N, C)")
    v.check_shape(op, "dy", dy, x_shape[:2], "(N, C) of x_shape")
    v.check_out(op, "out", out, x_shape, dy.dtype)
    device = device_of(dy, out, names=("dy", "out"))
    return impl(__name__, device).global_avg_pool2d_backward(dy, x_shape, out=out)
