"""Small helpers shared by the layer modules."""

import numpy as np

from nnkern import init as initializers
from nnkern.backend import CPU
from nnkern.ops import _dispatch


def make_rng(rng):
    """An explicit numpy Generator, or nnkern's default one (seeded by nnkern.manual_seed)."""
    if rng is None:
        return initializers.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, "
                    f"got {type(rng).__name__}")


def init_array(init, shape, rng, dtype, **kwargs):
    array = initializers.get(init)(tuple(shape), rng, np.dtype(dtype), **kwargs)
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"initializer {init!r} returned shape {array.shape}, expected {shape}")
    return np.ascontiguousarray(array, dtype=dtype)


def check_positive_int(cls, name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{cls}: {name} must be a positive int, got {v!r}")
    return int(v)


def check_input_rank(layer, x, ranks, layout):
    if len(x.shape) not in ranks:
        raise ValueError(f"{type(layer).__name__}: input must be {layout}, "
                         f"got shape {tuple(x.shape)}")


def check_features(layer, what, got, expected, shape):
    if got != expected:
        raise ValueError(f"{type(layer).__name__}: expected input with {expected} {what}, got "
                         f"{got} (input shape {tuple(shape)})")


def cpu_backend(package):
    """The CPU backend module of op package ``nnkern.ops.<package>`` (its NumPy reference under
    ``NNKERN_BACKEND=ref``). Layers call it directly on their fast path: once a call with the
    same per-sample shape, dtype and parameters went through the validating op, the checks
    would only repeat themselves."""
    hit = _BACKENDS.get(package)
    if hit is None or hit[0] is not _dispatch._CPU_MODULE:
        hit = _BACKENDS[package] = (_dispatch._CPU_MODULE,
                                    _dispatch.impl(f"nnkern.ops.{package}", CPU))
    return hit[1]


_BACKENDS = {}  # package -> (the _dispatch mode it was looked up in, module)


def fusion():
    """True when the CPU backends are the Numba ones, which have the fused kernels (bias +
    ReLU, batch norm + ReLU); not under ``NNKERN_BACKEND=ref``."""
    return _dispatch._CPU_MODULE == "cpu"
