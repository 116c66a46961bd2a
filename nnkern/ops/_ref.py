"""Shared glue for the NumPy reference implementations (``nnkern/ops/*/ref.py``)."""

import numpy as np


def into(out, value, dtype=None):
    """Return ``value`` (cast to ``dtype`` when given), or copy it into ``out`` and return that:
    how every reference honours the ``out=`` argument of the kernels it specifies."""
    if dtype is not None:
        value = np.asarray(value).astype(dtype)
    if out is None:
        return value
    out[...] = value
    return out
