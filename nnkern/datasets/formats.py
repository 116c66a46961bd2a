"""Readers for the on-disk formats of the image data sets: IDX, CIFAR pickles, SVHN .mat.

Each reader takes one file and returns NumPy arrays exactly as stored (no layout change); the
loaders in ``nnkern.datasets.loaders`` turn them into (N, C, H, W) uint8 images and int64
labels. Every problem with a file (bad header, truncated data, unexpected content) is a
``ValueError`` whose message starts with the file's path.
"""

import gzip
import os
import pickle
import zlib

import numpy as np

# -- IDX (MNIST, Fashion-MNIST) --------------------------------------------------------------
# Header: two zero bytes, a dtype code, the number of dimensions n; then n big-endian uint32
# sizes; then the data, big-endian, C order (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path):
    """The content of ``path``, gunzipped when the name ends in .gz or the gzip magic is there."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from None
    elif str(path).endswith(".gz"):
        raise ValueError(f"{path}: the name ends in .gz but the file is not gzip-compressed")
    return data


def read_idx(path):
    """Read one IDX file (gzipped or raw) into an array of its stored shape and dtype.

    The result is a writable array in native byte order. Raises ``ValueError`` naming the file
    on a bad magic number, an unknown dtype code, or a data size that does not match the header
    (truncated file or trailing bytes).
    """
    path = os.fspath(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file: {len(data)} bytes, shorter than the 4-byte "
                         "magic number")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"{path}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000 "
                         "followed by a dtype code in {08,09,0b,0c,0d,0e} and a nonzero number "
                         "of dimensions, e.g. 0x00000803 for uint8 images)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes, "
                         f"the file has {len(data)}")
    shape = tuple(int(n) for n in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "trailing bytes after the data"
        raise ValueError(f"{path}: {what}: header says shape {shape} of {dtype.name} "
                         f"({expected} bytes with the header), the file has {len(data)} bytes")
    array = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a writable, native-order copy


# -- CIFAR-10 / CIFAR-100 python pickles --------------------------------------------------------
# The batches are Python 2 pickles of a dict {b"data": uint8 ndarray (N, 3072), b"labels": list
# of int, ...}. Unpickling may call any importable function, so only the globals needed to
# rebuild plain NumPy arrays are allowed; everything else is refused before it is looked up.
def _numpy_globals():
    try:
        from numpy._core import multiarray, numeric  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core import multiarray, numeric
    allowed = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[module, "_reconstruct"] = multiarray._reconstruct
        allowed[module, "scalar"] = multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[module, "_frombuffer"] = numeric._frombuffer
    allowed["numpy", "ndarray"] = np.ndarray
    allowed["numpy", "dtype"] = np.dtype
    return allowed


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside RestrictedUnpickler's allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only builtin containers and NumPy arrays/dtypes/scalars.

    Any other global (a function or class the pickle asks for) raises ``ForbiddenGlobal`` (an
    ``pickle.UnpicklingError``) before it is imported, so loading a crafted file cannot run code.
    """

    _allowed = None

    def find_class(self, module, name):
        if RestrictedUnpickler._allowed is None:
            RestrictedUnpickler._allowed = _numpy_globals()
        try:
            return RestrictedUnpickler._allowed[module, name]
        except KeyError:
            raise ForbiddenGlobal(
                f"refusing to load global {module}.{name}: only NumPy arrays, dtypes and "
                "builtin containers are allowed in a data-set pickle") from None


def read_pickle(path):
    """Load one data-set pickle (e.g. a CIFAR batch) with ``RestrictedUnpickler``.

    ``encoding="bytes"`` keeps Python 2 strings as bytes, so dict keys are ``b"data"`` etc., as
    the CIFAR page documents. Raises ``ValueError`` naming the file on any unpickling error.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, encoding="bytes").load()
        except ForbiddenGlobal as e:
            raise ValueError(f"{path}: {e}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
                AttributeError, MemoryError) as e:
            raise ValueError(f"{path}: not a readable pickle "
                             f"(truncated or corrupt: {type(e).__name__}: {e})") from None


def read_cifar_batch(path, label_keys=(b"labels",)):
    """One CIFAR batch as (x (N, 3, 32, 32) uint8, {key: int64 labels (N,)} for ``label_keys``).

    The stored rows are 3072 bytes: the 1024 red values of the 32x32 image in row-major order,
    then green, then blue, i.e. already channel-major, so a reshape gives NCHW.
    """
    path = os.fspath(path)
    batch = read_pickle(path)
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 \
            or data.dtype != np.uint8:
        got = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
               else type(data).__name__)
        raise ValueError(f"{path}: expected 'data' to be a uint8 array of shape (N, 3072), "
                         f"got {got}")
    x = np.ascontiguousarray(data).reshape(-1, 3, 32, 32)
    labels = {}
    for key in label_keys:
        value = batch.get(key, batch.get(key.decode()))
        if value is None:
            raise ValueError(f"{path}: no {key.decode()!r} entry (keys: "
                             f"{sorted(k.decode() if isinstance(k, bytes) else k for k in batch)})")
        y = np.asarray(value)
        if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != len(x):
            raise ValueError(f"{path}: {key.decode()!r} must be {len(x)} integer labels, got "
                             f"{y.dtype} array of shape {y.shape}")
        labels[key] = y.astype(np.int64)
    return x, labels


# -- SVHN cropped digits (MATLAB v5 .mat) ------------------------------------------------------
def read_svhn_mat(path):
    """One SVHN ``*_32x32.mat`` file as (x (N, 3, 32, 32) uint8, y (N,) int64 in 0..9).

    The file holds X (32, 32, 3, N) uint8 as (H, W, C, N) and y (N, 1) with digits 1..10, where
    10 means the digit 0. Needs SciPy (``scipy.io.loadmat``), which nnkern does not require.
    """
    path = os.fspath(path)
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError(f"reading SVHN ({path}) needs SciPy to parse MATLAB files: "
                          "pip install scipy") from None
    try:
        mat = loadmat(path)
    except Exception as e:  # scipy raises a mix of ValueError, TypeError, MatReadError...
        raise ValueError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {e})") \
            from None
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"{path}: expected variables 'X' and 'y', found "
                         f"{sorted(k for k in mat if not k.startswith('__'))}")
    xs, ys = mat["X"], mat["y"]
    if xs.ndim != 4 or xs.shape[:3] != (32, 32, 3) or xs.dtype != np.uint8:
        raise ValueError(f"{path}: expected X of shape (32, 32, 3, N) uint8, got {xs.dtype} "
                         f"{xs.shape}")
    y = ys.reshape(-1)
    if y.dtype.kind not in "iuf" or len(y) != xs.shape[3]:
        raise ValueError(f"{path}: expected y of shape ({xs.shape[3]}, 1), got {ys.dtype} "
                         f"{ys.shape}")
    y = y.astype(np.int64)
    if y.min() < 1 or y.max() > 10:
        raise ValueError(f"{path}: SVHN labels must be 1..10 (10 is the digit 0), got values "
                         f"{y.min()}..{y.max()}")
    y[y == 10] = 0
    x = np.ascontiguousarray(xs.transpose(3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
    return x, y
