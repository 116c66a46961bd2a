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

import functools
import math

import numpy as np
from numba import cuda

import nnkern._jit  # noqa: F401  (sets Numba's cache directory before any kernel is decorated)
from nnkern.backend import as_cuda_array

THREADS = 256          #: threads per block for 1-D elementwise kernels
MAX_BLOCKS = 65_535     #: grid-stride loops cover larger arrays with at most this many blocks


def kernel(fn):
    """Decorator for a CUDA kernel: compiled per argument types on first launch, cached."""
    return cuda.jit(cache=True)(fn)


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
