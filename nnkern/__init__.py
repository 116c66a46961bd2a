"""nnkern: Numba-accelerated neural-network kernels (CPU and CUDA) with a small layer/model API.

    import nnkern
    from nnkern.layers import Dense, ReLU
    model = nnkern.Sequential(Dense(784, 100), ReLU(), Dense(100, 10))

``nnkern.functional`` holds the kernels as forward/backward pairs, ``nnkern.layers`` the layers,
``nnkern.losses``, ``nnkern.optim`` and ``nnkern.fit`` train them. Importing nnkern compiles
nothing: kernels compile (or load from Numba's cache) on first use, or all at once with
``nnkern.warmup()``. ``nnkern.set_num_threads(n)`` sets Numba's and both OpenBLAS pools' thread
counts together; ``NUMBA_NUM_THREADS`` (read when Numba is imported) is their maximum
(``nnkern.runtime``).
"""

__version__ = "0.1.0"

import os  # noqa: E402

# OpenBLAS's threads busy-wait for ~0.1 s after each multi-threaded BLAS call, on the cores
# nnkern's kernels need next. nnkern's own GEMMs run single-threaded (nnkern.runtime.matmul;
# not yet the 1x1 and float64 conv paths), but the user's may not. 2**16 cycles, then sleep;
# setdefault: the user's own setting wins. Read when NumPy loads OpenBLAS, so it only takes
# effect if nnkern is imported before NumPy. (Numba's threads: nnkern/_jit.py.)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")

from nnkern import datasets, functional, init, layers, losses, models, optim  # noqa: E402
from nnkern.backend import cuda_available, to_device  # noqa: E402
from nnkern.init import manual_seed  # noqa: E402
from nnkern.model import Sequential, load, save  # noqa: E402
from nnkern.runtime import get_num_threads, set_num_threads, thread_info, warmup  # noqa: E402
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
           "warmup", "set_num_threads", "get_num_threads", "thread_info", "__version__"]
