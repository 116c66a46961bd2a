"""Argument checks shared by every op: validation in Python, math in kernels.

Each check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong shape,
layout or value) with a message that names the op, the argument, what was expected and what
came, so bad input never reaches a kernel.
"""

import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _is_c_contiguous(a):
    if isinstance(a, np.ndarray):
        return a.flags.c_contiguous
    if hasattr(a, "is_c_contiguous"):  # numba device arrays (real and simulated)
        return a.is_c_contiguous()
    strides = a.__cuda_array_interface__.get("strides")
    if strides is None:
        return True
    expected, step = [], np.dtype(a.__cuda_array_interface__["typestr"]).itemsize
    for n in reversed(a.__cuda_array_interface__["shape"]):
        expected.append(step)
        step *= n
    return tuple(strides) == tuple(reversed(expected))


def check_array(op, name, a, *, ndim=None, layout=None, dtype=None):
    """Check one array argument of ``op``.

    ndim: required rank, an int or a tuple of allowed ranks; layout: how to describe the
    expected shape in messages (e.g. "(N, C, H, W)"); dtype: the dtype it must share with the
    other arguments (mismatched dtypes are a TypeError, never a silent cast).
    Also rejects integer/bool arrays, non-contiguous views and arrays with a zero-size axis.
    """
    if not hasattr(a, "dtype") or not hasattr(a, "shape"):
        raise TypeError(f"{op}: {name} must be an array, got {type(a).__name__}")
    if isinstance(a, np.ndarray) or hasattr(a, "__cuda_array_interface__") \
            or getattr(a, "__cuda_ndarray__", False):
        pass
    else:
        raise TypeError(f"{op}: {name} must be a numpy array or a CUDA device array, "
                        f"got {type(a).__name__}")
    if np.dtype(a.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must have dtype float32 or float64, got {a.dtype}")
    if dtype is not None and np.dtype(a.dtype) != np.dtype(dtype):
        raise TypeError(f"{op}: {name} has dtype {a.dtype} but the other arguments are "
                        f"{np.dtype(dtype)}; convert with .astype() first")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if len(a.shape) not in allowed:
            want = layout or " or ".join(f"{n}-D" for n in allowed)
            raise ValueError(f"{op}: {name} must be {want}, got shape {tuple(a.shape)}")
    if any(n == 0 for n in a.shape):
        what = "empty batch" if a.shape and a.shape[0] == 0 else "an axis of size 0"
        raise ValueError(f"{op}: {name} has {what}: shape {tuple(a.shape)}")
    if not _is_c_contiguous(a):
        raise ValueError(f"{op}: {name} must be C-contiguous, got a strided view of shape "
                         f"{tuple(a.shape)}; pass np.ascontiguousarray({name})")


def check_shape(op, name, a, shape, what=None):
    """``a.shape`` must equal ``shape``; ``what`` explains where the expected shape comes from."""
    if tuple(a.shape) != tuple(shape):
        because = f" ({what})" if what else ""
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}{because}, "
                         f"got {tuple(a.shape)}")


def check_out(op, name, out, shape, dtype):
    """An ``out=`` buffer must have exactly the result's shape and dtype, and be contiguous."""
    if out is None:
        return
    check_array(op, name, out, dtype=dtype)
    check_shape(op, name, out, shape, "the shape of the result")


def check_int(op, name, v, minimum=None):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an int, got {type(v).__name__} {v!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {v}")
    return int(v)


def check_float(op, name, v, low=None, high=None, low_open=False, high_open=False):
    """A real number within [low, high] (ends open where asked)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{op}: {name} must be a number, got {type(v).__name__} {v!r}")
    v = float(v)
    bad = (not np.isfinite(v)
           or (low is not None and (v < low or (low_open and v == low)))
           or (high is not None and (v > high or (high_open and v == high))))
    if bad:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        left = "(" if low_open or low is None else "["
        right = ")" if high_open or high is None else "]"
        interval = f"{left}{lo}, {hi}{right}"
        raise ValueError(f"{op}: {name} must be in {interval}, got {v}")
    return v


def pair(op, name, v, minimum=0):
    """An int or a pair of ints → a (h, w) tuple of ints, each >= ``minimum``."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{op}: {name} must be an int or a pair (h, w), got {v!r}")
        return (check_int(op, name, v[0], minimum), check_int(op, name, v[1], minimum))
    v = check_int(op, name, v, minimum)
    return (v, v)


def window_output_size(op, size, kernel, stride, padding, dilation, ceil_mode=False, axis="H"):
    """Output length of a sliding window (conv or pooling) along one axis.

    floor((size + 2*padding - dilation*(kernel-1) - 1) / stride) + 1, or with ceil instead of
    floor when ``ceil_mode``; in ceil mode the last window must start inside the input or the
    left padding (PyTorch's rule), else it is dropped. Fewer than one window is a ValueError.
    """
    span = dilation * (kernel - 1) + 1
    room = size + 2 * padding - span
    if ceil_mode:  # PyTorch: floor((room + stride - 1) / stride) + 1, then the start rule
        out = (room + stride - 1) // stride + 1
        if out > 0 and (out - 1) * stride >= size + padding:
            out -= 1
    else:
        out = room // stride + 1
    if out < 1:
        raise ValueError(f"{op}: the kernel (size {kernel}, dilation {dilation}, span {span}) "
                         f"is larger than the padded input along {axis} "
                         f"({size} + 2*{padding} = {size + 2 * padding})")
    return out
