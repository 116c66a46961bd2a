"""nnkern: Numba-accelerated neural-network kernels (CPU and CUDA) with a small layer/model API.

    import nnkern
    from nnkern.layers import Dense, ReLU
    model = nnkern.Sequential(Dense(784, 100), ReLU(), Dense(100, 10))

``nnkern.functional`` holds the kernels as forward/backward pairs, ``nnkern.layers`` the layers,
``nnkern.losses``, ``nnkern.optim`` and ``nnkern.fit`` train them. Importing nnkern compiles
nothing: kernels compile (or load from Numba's cache) on first use, or all at once with
``nnkern.warmup()``.
"""

__version__ = "0.1.0"

from nnkern import datasets, functional, init, layers, losses, models, optim  # noqa: E402
from nnkern.backend import cuda_available, to_device  # noqa: E402
from nnkern.init import manual_seed  # noqa: E402
from nnkern.model import Sequential, load, save  # noqa: E402
from nnkern.training import (  # noqa: E402
    Callback,
    Checkpoint,
    EarlyStopping,
    History,
    LambdaCallback,
    evaluate,
    fit,
)

__all__ = ["datasets", "functional", "init", "layers", "losses", "models", "optim",
           "Sequential", "load", "save", "manual_seed", "cuda_available", "to_device", "fit",
           "evaluate", "History", "Callback", "EarlyStopping", "Checkpoint", "LambdaCallback",
           "__version__"]
