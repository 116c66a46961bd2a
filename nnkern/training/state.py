"""Lossless storage of nested training state (dicts, lists, numbers, arrays) in one ``.npz``.

A checkpoint is a NumPy ``.npz`` archive without pickle: every array of the state goes into its
own archive entry under a prefix ("model/0.weight", "optimizer/3", "callbacks/1/0", ...), and
everything else into one JSON header (entry ``__header__``, UTF-8 bytes) in which each array is
replaced by a reference ``{"__array__": "<entry name>"}``. The encoding round-trips exactly:

* arrays keep their dtype and shape; NumPy scalars come back as NumPy scalars of their dtype;
* Python floats are written with ``repr`` (exact); nan/inf become ``{"__float__": "nan"}``;
* tuples stay tuples; dicts with non-string keys (e.g. a per-parameter index) keep their keys;
* Python ints of any size (a PCG64 generator state is 128-bit) are plain JSON integers.
"""

import json
import math

import numpy as np

from nnkern.backend import is_cuda_array, to_host
from nnkern.model import atomic_write

HEADER = "__header__"
_MARKERS = ("__array__", "__scalar__", "__float__", "__tuple__", "__dict__")


def pack(obj, arrays, prefix):
    """JSON-able skeleton of ``obj``; its arrays are added to ``arrays`` under ``prefix``."""
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _MARKERS for k in obj):
            return {k: pack(v, arrays, prefix) for k, v in obj.items()}
        return {"__dict__": [[pack(k, arrays, prefix), pack(v, arrays, prefix)]
                             for k, v in obj.items()]}
    if isinstance(obj, list):
        return [pack(v, arrays, prefix) for v in obj]
    if isinstance(obj, tuple):
        return {"__tuple__": [pack(v, arrays, prefix) for v in obj]}
    if isinstance(obj, np.ndarray) or is_cuda_array(obj):
        array = to_host(obj)
        if array.dtype.hasobject:
            raise TypeError("cannot store an object array in a checkpoint (no pickle)")
        name = f"{prefix}{len(arrays)}"
        arrays[name] = np.asarray(array)
        return {"__array__": name}
    if isinstance(obj, np.generic):
        name = f"{prefix}{len(arrays)}"
        arrays[name] = np.asarray(obj)
        return {"__scalar__": name}
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint; state_dict() values "
                    "must be dicts, lists, tuples, numbers, strings, None or arrays")


def unpack(skeleton, arrays):
    """Inverse of :func:`pack`; ``arrays`` maps entry names to arrays."""
    if isinstance(skeleton, list):
        return [unpack(v, arrays) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if len(skeleton) == 1:
        (key, value), = skeleton.items()
        if key == "__array__":
            return np.array(arrays[value])
        if key == "__scalar__":
            return np.asarray(arrays[value])[()]
        if key == "__float__":
            return float(value)
        if key == "__tuple__":
            return tuple(unpack(v, arrays) for v in value)
        if key == "__dict__":
            return {_hashable(unpack(k, arrays)): unpack(v, arrays) for k, v in value}
    return {k: unpack(v, arrays) for k, v in skeleton.items()}


def _hashable(key):
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def write(path, header, arrays):
    """Write ``arrays`` and the JSON ``header`` to ``path`` atomically (temp file + rename)."""
    arrays = dict(arrays)
    arrays[HEADER] = np.frombuffer(json.dumps(header, allow_nan=False).encode(), np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def read(path, expected_format):
    """(header, {entry name: array}) of a file written by :func:`write`."""
    with np.load(path, allow_pickle=False) as archive:
        if HEADER not in archive.files:
            raise ValueError(f"{path}: not an {expected_format} file (no header)")
        header = json.loads(archive[HEADER].tobytes().decode())
        arrays = {k: archive[k] for k in archive.files if k != HEADER}
    if header.get("format") != expected_format:
        raise ValueError(f"{path}: not an {expected_format} file "
                         f"(format {header.get('format')!r})")
    return header, arrays
