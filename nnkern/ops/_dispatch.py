"""Pick an op's backend module by device: ``impl("nnkern.ops.dense", "cpu")`` → its ``cpu`` module.

Backends are imported on first use, so ``import nnkern`` compiles nothing and works without a
GPU. ``NNKERN_BACKEND=ref`` routes CPU arrays to the NumPy references (for debugging and
bisecting a kernel bug).
"""

import importlib
import os

_CPU_MODULE = "ref" if os.environ.get("NNKERN_BACKEND", "auto") == "ref" else "cpu"
_modules = {}


def impl(package, device):
    """The backend module of op package ``package`` for ``device`` ('cpu' or 'cuda')."""
    key = (package, device)
    module = _modules.get(key)
    if module is None:
        module = importlib.import_module(f"{package}.{'cuda' if device == 'cuda' else _CPU_MODULE}")
        _modules[key] = module
    return module
