"""The only module that knows array types: which device an array lives on, and moving it.

A ``numpy.ndarray`` lives on the CPU. A Numba CUDA device array (``__cuda_ndarray__``, also the
simulator's fake arrays) or anything exposing ``__cuda_array_interface__`` (CuPy, PyTorch CUDA
tensors) lives on the GPU. Ops never copy between devices implicitly: mixing devices in one
call is a ``ValueError``.
"""

import numpy as np

CPU = "cpu"
CUDA = "cuda"
DEVICES = (CPU, CUDA)


def is_cuda_array(a):
    return getattr(a, "__cuda_ndarray__", False) or hasattr(a, "__cuda_array_interface__")


def device_of_array(a):
    """'cpu' or 'cuda' for one array; ``TypeError`` for anything else."""
    if isinstance(a, np.ndarray):
        return CPU
    if is_cuda_array(a):
        return CUDA
    raise TypeError(f"expected a numpy array or a CUDA device array, got {type(a).__name__}")


def device_of(*arrays, names=None):
    """The one device that all given arrays share (``None`` entries are skipped).

    ``names`` (same length as ``arrays``) makes the error name the arguments.
    """
    devices = {}
    for i, a in enumerate(arrays):
        if a is not None:
            label = names[i] if names else f"argument {i}"
            devices.setdefault(device_of_array(a), []).append(label)
    if len(devices) == 1:
        return next(iter(devices))
    if not devices:
        raise ValueError("no arrays given")
    where = "; ".join(f"{', '.join(v)} on {k}" for k, v in devices.items())
    raise ValueError(f"arrays must live on one device, got {where}; "
                     "move them with nnkern.to_device(array, device)")


def check_device(device):
    device = str(device).lower()
    if device.startswith("cuda"):  # "cuda", "cuda:0": nnkern uses the current CUDA device
        return CUDA
    if device != CPU:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return CPU


def cuda_available():
    """True when a CUDA GPU (or the numba-cuda simulator) can run nnkern's CUDA kernels."""
    try:
        from numba import cuda
    except ImportError:  # numba-cuda not installed
        return False
    try:
        return bool(cuda.is_available())
    except Exception:  # a broken driver or toolkit reads as "no GPU", never as a crash
        return False


def to_device(array, device):
    """Return ``array`` on ``device`` ('cpu' or 'cuda'); no copy when it is already there."""
    device = check_device(device)
    current = device_of_array(array)
    if current == device:
        return array
    if device == CPU:
        return array.copy_to_host() if hasattr(array, "copy_to_host") else _foreign_to_host(array)
    if not cuda_available():
        raise RuntimeError("to_device(..., 'cuda'): no CUDA device is available "
                           "(nnkern.cuda_available() is False)")
    from numba import cuda
    return cuda.to_device(np.ascontiguousarray(array))


def to_host(array):
    """A numpy array with the values of ``array`` (itself when it already is one)."""
    return to_device(array, CPU)


def as_cuda_array(array):
    """A Numba device array viewing ``array`` (zero-copy for CuPy/PyTorch CUDA tensors)."""
    if getattr(array, "__cuda_ndarray__", False):
        return array
    from numba import cuda
    return cuda.as_cuda_array(array)


def _foreign_to_host(array):
    return as_cuda_array(array).copy_to_host()
