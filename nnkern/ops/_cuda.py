"""Shared CUDA helpers: how kernels compile, launch configurations, device allocation.

Kernel-writing rules (ANCHORS §4.4, NUMBA_NOTES §2):
* one thread per output element (``cuda.grid(1)`` then a bounds check), grid-stride loops for
  large arrays; launch shapes come from :func:`grid_1d` only, and are cached per size;
* float32 end to end: constants as ``x.dtype.type(c)`` (compiles to f32 for float32 arrays:
  the compile-only PTX test checks float32 kernels contain no ``.f64`` instruction), scalars
  converted to the array dtype on the host before launch;
* reductions write per-block partials that a second kernel combines in a fixed order: no
  floating-point atomics, so two runs give identical bits;
* gradients w.r.t. inputs in gather form (one thread per dx element), never scatter + atomics;
* shared arrays have compile-time shapes (module constants), one declaration per line (a
  simulator requirement), and a comment on each ``cuda.syncthreads()``;
* no warp intrinsics (the simulator lacks them).
"""

import atexit
import functools
import json
import math
import os

import numpy as np
from numba import cuda

import nnkern._jit  # noqa: F401  (sets Numba's cache directory before any kernel is decorated)
from nnkern._validate import _is_c_contiguous
from nnkern.backend import as_cuda_array

THREADS = 256          #: threads per block for 1-D elementwise kernels
MAX_BLOCKS = 65_535     #: grid-stride loops cover larger arrays with at most this many blocks


def kernel(fn):
    """Decorator for a CUDA kernel: compiled per argument types on first launch, cached.

    With ``NNKERN_RECORD_CUDA_SIGNATURES=<file>`` (set by tests/run.sh for the simulator run),
    every launch's argument types are recorded to that file, so that a later process without
    the simulator can compile each one for a real GPU (``tests/test_cuda_compile.py``): the
    simulator runs kernels as Python and checks no types.
    """
    compiled = cuda.jit(cache=True)(fn)
    if _RECORD_PATH:
        return _Recorder(compiled, fn)
    return compiled


_RECORD_PATH = os.environ.get("NNKERN_RECORD_CUDA_SIGNATURES")
_recorded = set()


def _arg_type(a):
    """A JSON-able description of a kernel argument's Numba type."""
    if isinstance(a, (bool, np.bool_)):
        return ["scalar", "|b1"]
    if isinstance(a, np.generic):
        return ["scalar", a.dtype.str]
    if isinstance(a, int):
        return ["scalar", "<i8"]
    if isinstance(a, float):
        return ["scalar", "<f8"]
    if hasattr(a, "shape") and hasattr(a, "dtype"):
        return ["array", np.dtype(a.dtype).str, len(a.shape), "C" if _is_c_contiguous(a) else "A"]
    raise TypeError(f"cannot record a kernel argument of type {type(a).__name__}")


class _Recorder:
    """Wraps a kernel: ``k[grid, block](*args)`` records the argument types, then launches."""

    def __init__(self, compiled, fn):
        self._compiled, self._fn = compiled, fn

    def __getitem__(self, config):
        launch = self._compiled[config]

        def record_and_launch(*args):
            key = (self._fn.__module__, self._fn.__qualname__,
                   json.dumps([_arg_type(a) for a in args]))
            _recorded.add(key)
            return launch(*args)
        return record_and_launch

    def __getattr__(self, name):
        return getattr(self._compiled, name)


@atexit.register
def _write_recorded():
    if not (_RECORD_PATH and _recorded):
        return
    existing = set()
    if os.path.exists(_RECORD_PATH):
        with open(_RECORD_PATH) as f:
            existing = {tuple(json.loads(line)) for line in f if line.strip()}
    with open(_RECORD_PATH, "w") as f:
        for key in sorted(existing | _recorded):
            f.write(json.dumps(list(key)) + "\n")


def device_function(fn):
    """Decorator for a scalar helper called from kernels (inlined into its callers)."""
    return cuda.jit(device=True, inline="always")(fn)


@functools.lru_cache(maxsize=4096)
def grid_1d(n, threads=THREADS):
    """(blocks, threads) covering n elements (grid-stride loops take over past MAX_BLOCKS)."""
    return (max(1, min(math.ceil(n / threads), MAX_BLOCKS)), threads)


def empty(shape, dtype):
    return cuda.device_array(tuple(int(s) for s in shape), np.dtype(dtype))


def empty_like(a):
    return cuda.device_array(a.shape, a.dtype)


@kernel
def _fill_kernel(flat, value):
    # flat: (n,) <- value
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, flat.size, step):
        flat[i] = value


def fill(a, value):
    """Set every element of the contiguous device array ``a`` to ``value``; returns ``a``."""
    flat = a.reshape(a.size)
    _fill_kernel[grid_1d(a.size)](flat, a.dtype.type(value))
    return a


def zeros(shape, dtype):
    return fill(empty(shape, dtype), 0)


def device_array(a):
    """A Numba device array for ``a`` (zero-copy for CuPy/PyTorch tensors), or None."""
    return None if a is None else as_cuda_array(a)


def to_host_scalar(a):
    """The single value of a 1-element device array, as a Python float (synchronises)."""
    return float(a.copy_to_host().reshape(-1)[0])


def host_sum(partials):
    """Exactly rounded sum of a small device array of per-block partials, on the host.

    Copying a few hundred partials back costs less than another launch where the result is
    needed on the host anyway (losses); ``math.fsum`` makes it independent of order."""
    return math.fsum(partials.copy_to_host().reshape(-1).tolist())
