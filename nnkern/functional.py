"""``nnkern.functional``: every op as a stateless ``<op>_forward`` / ``<op>_backward`` pair.

Like ``torch.nn.functional``, but each backward is explicit. Every function validates its
arguments (``TypeError``/``ValueError`` naming what was expected and what came), then dispatches
by the arrays' device to the Numba CPU kernels (``@njit(parallel=True)``) or the CUDA kernels
(``@cuda.jit``). Forward functions return what their backward needs (e.g. batch norm's mean and
inv_std, max pooling's argmax); backward functions return one gradient per differentiable input,
in order. Optional ``out=`` buffers let callers reuse memory.

Op packages are imported on first use, so ``import nnkern`` compiles nothing.
"""

import importlib

_PACKAGES = {
    "dense": ["dense"],
    "conv2d": ["conv2d"],
    "pool2d": ["max_pool2d", "avg_pool2d", "global_avg_pool2d"],
    "flatten": ["flatten"],
    "batch_norm": ["batch_norm"],
    "activation": ["relu", "leaky_relu", "prelu", "elu", "selu", "sigmoid", "tanh", "softmax",
                   "log_softmax"],
    "dropout": ["dropout"],
    "shift_scale": ["shift", "scale"],
    "loss": ["softmax_cross_entropy", "mse", "binary_cross_entropy", "hinge"],
}

_WHERE = {f"{op}_{half}": f"nnkern.ops.{package}"
          for package, ops in _PACKAGES.items() for op in ops for half in ("forward", "backward")}

__all__ = sorted(_WHERE)


def __getattr__(name):
    package = _WHERE.get(name)
    if package is None:
        raise AttributeError(f"module 'nnkern.functional' has no attribute {name!r}")
    fn = getattr(importlib.import_module(package), name)
    globals()[name] = fn  # later look-ups skip __getattr__
    return fn


def __dir__():
    return __all__
