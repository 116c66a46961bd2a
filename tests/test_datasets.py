"""nnkern.datasets: file formats, search order, embedded subset, preprocessing.

Every file a loader reads here is written by the test itself with an independent writer (IDX
headers by hand, CIFAR batches as Python 2's cPickle writes them, SVHN with scipy.io.savemat).
"""

import configparser
import fnmatch
import gzip
import os
import pickle
import struct

import numpy as np
import pytest

import nnkern
from nnkern import datasets as D
from nnkern.datasets import loaders, preprocessing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBIAN_FMNIST = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(autouse=True)
def no_outside_data(monkeypatch):
    """Loaders see only what a test puts there: no $NNKERN_DATA, no system directories."""
    monkeypatch.delenv("NNKERN_DATA", raising=False)
    monkeypatch.setattr(loaders, "SYSTEM_DIRS", {})


# -- writers -------------------------------------------------------------------------------------
_IDX_CODES = {"uint8": 0x08, "int8": 0x09, "int16": 0x0B, "int32": 0x0C, "float32": 0x0D,
              "float64": 0x0E}


def idx_bytes(array):
    array = np.asarray(array)
    header = bytes([0, 0, _IDX_CODES[array.dtype.name], array.ndim])
    header += b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_file(path, data, gz=False):
    path = str(path) + (".gz" if gz else "")
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(data)
    return path


def fake_images(rng, n, shape=(28, 28)):
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def write_idx_set(directory, rng, n_train=30, n_test=12, gz=(True, False, False, True)):
    """Four IDX files (some gzipped, some raw); returns the arrays written."""
    os.makedirs(directory, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": fake_images(rng, n_train),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
              "t10k-images-idx3-ubyte": fake_images(rng, n_test),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8)}
    for (name, array), g in zip(arrays.items(), gz):
        write_file(os.path.join(directory, name), idx_bytes(array), gz=g)
    return arrays


def py2_pickle(obj):
    """Protocol-2 bytes as Python 2's cPickle writes the CIFAR batches: str values as
    SHORT_BINSTRING/BINSTRING, arrays through numpy.core.multiarray._reconstruct."""
    out = bytearray(b"\x80\x02")

    def string(b):
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else \
            (b"T" + struct.pack("<i", len(b)) + b)

    def integer(v):
        return b"J" + struct.pack("<i", v)

    def emit(o):
        if isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                emit(k)
                emit(v)
            out.extend(b"u")
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                emit(v)
            out.extend(b"e")
        elif isinstance(o, bytes):
            out.extend(string(o))
        elif isinstance(o, int):
            out.extend(integer(o))
        elif isinstance(o, np.ndarray) and o.dtype == np.uint8:
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
                       + string(b"b") + b"\x87R(K\x01(" + b"".join(map(integer, o.shape))
                       + b"tcnumpy\ndtype\n" + string(b"u1") + b"K\x00K\x01\x87R(K\x03"
                       + string(b"|") + b"NNN" + integer(-1) + integer(-1) + b"K\x00tb\x89"
                       + string(o.tobytes()) + b"tb")
        else:
            raise TypeError(type(o))

    emit(obj)
    out.extend(b".")
    return bytes(out)


def cifar_batch(rng, n, label_keys=(b"labels",)):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    batch = {b"batch_label": b"testing batch 1 of 1", b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    for key in label_keys:
        batch[key] = [int(v) for v in rng.integers(0, 100 if b"fine" in key else 10, n)]
    return batch


def write_cifar10(directory, rng, n=4, writer=py2_pickle):
    os.makedirs(directory, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = cifar_batch(rng, n)
        write_file(os.path.join(directory, name), writer(batches[name]))
    return batches


# -- IDX -------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_read_idx_round_trip(tmp_path, rng, dtype, gz):
    a = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = write_file(tmp_path / "a-idx3", idx_bytes(a), gz=gz)
    b = D.read_idx(path)
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative
    assert b.flags.writeable and b.flags.c_contiguous
    np.testing.assert_array_equal(b, a)


def test_read_idx_header_by_hand(tmp_path):
    # 2 images of 1x2, uint8: magic 0x00000803, dims 2, 1, 2
    raw = bytes.fromhex("00000803" "00000002" "00000001" "00000002") + bytes([1, 2, 3, 4])
    path = write_file(tmp_path / "x", raw)
    np.testing.assert_array_equal(D.read_idx(path), [[[1, 2]], [[3, 4]]])


@pytest.mark.parametrize("data, match", [
    (bytes.fromhex("01000801") + b"\x00\x00\x00\x01" + b"\x07", "bad IDX magic number 0x01000801"),
    (bytes.fromhex("00000701") + b"\x00\x00\x00\x01" + b"\x07", "bad IDX magic number"),
    (bytes.fromhex("00000800"), "bad IDX magic number"),
    (b"\x00\x00", "shorter than the 4-byte magic"),
    (bytes.fromhex("00000803") + b"\x00\x00\x00\x02", "truncated IDX header"),
    (idx_bytes(np.zeros((4, 3, 3), np.uint8))[:-5], r"truncated: header says shape \(4, 3, 3\)"),
    (idx_bytes(np.zeros(4, np.uint8)) + b"\x00", "trailing bytes"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_bad_files(tmp_path, data, match, gz):
    path = write_file(tmp_path / "bad-idx", data, gz=gz)
    with pytest.raises(ValueError, match=match) as info:
        D.read_idx(path)
    assert str(info.value).startswith(path)


def test_read_idx_bad_gzip(tmp_path):
    good = gzip.compress(idx_bytes(np.zeros((50, 28, 28), np.uint8)))
    path = write_file(tmp_path / "cut-idx3-ubyte.gz", good[:len(good) // 2])
    with pytest.raises(ValueError, match="cut-idx3-ubyte.gz: corrupt or truncated gzip"):
        D.read_idx(path)
    path = write_file(tmp_path / "plain-idx1-ubyte.gz", idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(ValueError, match="plain-idx1-ubyte.gz: the name ends in .gz but"):
        D.read_idx(path)


def test_load_mnist_round_trip(tmp_path, rng):
    arrays = write_idx_set(tmp_path, rng)
    ds = D.load_mnist(tmp_path)
    (x_train, y_train), (x_test, y_test) = ds
    assert x_train.shape == (30, 1, 28, 28) and x_test.shape == (12, 1, 28, 28)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64 and y_test.dtype == np.int64
    np.testing.assert_array_equal(x_train[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(x_test[:, 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(y_test, arrays["t10k-labels-idx1-ubyte"])
    assert ds.name == "mnist" and ds.source == str(tmp_path) and not ds.embedded
    assert ds.class_names == D.DIGITS and ds.num_classes == 10
    assert ds.x_train is x_train and ds.y_test is y_test
    assert "mnist: 30 train / 12 test, 1x28x28, 10 classes" in ds.summary()


def test_dataset_pickles(tmp_path, rng):
    write_idx_set(tmp_path, rng)
    ds = D.load_fashion_mnist(tmp_path)
    back = pickle.loads(pickle.dumps(ds))
    assert isinstance(back, D.Dataset) and back.source == ds.source
    assert back.class_names == D.FASHION_MNIST_CLASSES
    np.testing.assert_array_equal(back.x_train, ds.x_train)


def test_idx_count_mismatch(tmp_path, rng):
    write_idx_set(tmp_path, rng)
    write_file(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(11, np.uint8)), gz=True)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte has 12 images but .*"
                                         r"t10k-labels-idx1-ubyte.gz has 11 labels"):
        D.load_mnist(tmp_path)


def test_idx_wrong_content(tmp_path, rng):
    write_idx_set(tmp_path, rng)
    write_file(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.full(12, 10, np.uint8)), gz=True)
    with pytest.raises(ValueError, match=r"labels must be in 0..9, got 10"):
        D.load_mnist(tmp_path)
    write_file(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros((12, 2), np.uint8)),
               gz=True)
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz: expected uint8 labels"):
        D.load_mnist(tmp_path)
    write_file(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((30, 784), np.uint8)))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: expected uint8 images"):
        D.load_mnist(tmp_path)


# -- search order ----------------------------------------------------------------------------
def test_search_env_subfolder_then_root(tmp_path, rng, monkeypatch):
    in_root = write_idx_set(tmp_path, rng, n_train=5)
    monkeypatch.setenv("NNKERN_DATA", str(tmp_path))
    assert len(D.load_mnist().y_train) == 5  # the root itself
    write_idx_set(tmp_path / "mnist", rng, n_train=7)
    ds = D.load_mnist()  # a subfolder named after the set wins over the root
    assert len(ds.y_train) == 7 and ds.source == str(tmp_path / "mnist")
    assert in_root  # (root files still there, just not used)


def test_search_env_path_list_and_tilde(tmp_path, rng, monkeypatch):
    write_idx_set(tmp_path / "b" / "fashion-mnist", rng, n_train=9)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NNKERN_DATA", os.pathsep.join([str(tmp_path / "a"), "~/b"]))
    ds = D.load_fashion_mnist(allow_embedded=False)
    assert len(ds.y_train) == 9 and ds.source == str(tmp_path / "b" / "fashion-mnist")


def test_search_explicit_path_wins(tmp_path, rng, monkeypatch):
    write_idx_set(tmp_path / "env" / "mnist", rng, n_train=5)
    write_idx_set(tmp_path / "mine", rng, n_train=8)
    monkeypatch.setenv("NNKERN_DATA", str(tmp_path / "env"))
    assert len(D.load_mnist().y_train) == 5
    assert len(D.load_mnist(tmp_path / "mine").y_train) == 8
    assert len(D.load_mnist(str(tmp_path / "mine")).y_train) == 8
    # a path holding the set's subfolder works too
    assert len(D.load_mnist(tmp_path / "env").y_train) == 5


def test_search_explicit_path_does_not_fall_back(tmp_path, rng, monkeypatch):
    write_idx_set(tmp_path / "env" / "fashion-mnist", rng)
    monkeypatch.setenv("NNKERN_DATA", str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError) as info:
        D.load_fashion_mnist(tmp_path / "nowhere")
    message = str(info.value)
    assert f"{tmp_path / 'nowhere'} (path argument): no such directory" in message
    assert str(tmp_path / "env") not in message


def test_search_env_before_system_dir(tmp_path, rng, monkeypatch):
    write_idx_set(tmp_path / "debian", rng, n_train=6)
    monkeypatch.setattr(loaders, "SYSTEM_DIRS", {"fashion-mnist": (str(tmp_path / "debian"),)})
    ds = D.load_fashion_mnist(allow_embedded=False)
    assert len(ds.y_train) == 6 and ds.source == str(tmp_path / "debian")
    write_idx_set(tmp_path / "env" / "fashion_mnist", rng, n_train=4)
    monkeypatch.setenv("NNKERN_DATA", str(tmp_path / "env"))
    assert len(D.load_fashion_mnist().y_train) == 4


def test_missing_lists_every_place(tmp_path, rng, monkeypatch):
    partial = tmp_path / "env" / "mnist"
    write_idx_set(partial, rng)
    os.remove(partial / "t10k-labels-idx1-ubyte.gz")
    monkeypatch.setenv("NNKERN_DATA", str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError) as info:
        D.load_mnist()
    message = str(info.value)
    assert message.startswith("MNIST not found. Searched:")
    assert f"{partial} ($NNKERN_DATA): missing t10k-labels-idx1-ubyte.gz" in message
    for sub in ("MNIST", os.path.join("MNIST", "raw")):
        assert f"{tmp_path / 'env' / sub} ($NNKERN_DATA): no such directory" in message
    assert f"{tmp_path / 'env'} ($NNKERN_DATA): none of the files" in message
    assert "yann.lecun.com" in message and "never downloads" in message


def test_missing_without_env(monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"(?s)CIFAR-10 not found.*\$NNKERN_DATA is not "
                                                r"set.*cifar-10-python.tar.gz"):
        D.load_cifar10()
    monkeypatch.setattr(loaders, "SYSTEM_DIRS", {"fashion-mnist": ("/no/such/dir",)})
    with pytest.raises(FileNotFoundError, match=r"(?s)/no/such/dir \(system package\): no such "
                                                r"directory.*apt install dataset-fashion-mnist"):
        D.load_fashion_mnist(allow_embedded=False)


def test_fashion_mnist_falls_back_to_embedded(tmp_path):
    ds = D.load_fashion_mnist()
    assert ds.embedded and ds.name == "fashion-mnist-small"
    assert ds.source.endswith("fashion_mnist_small.npz") and "embedded subset" in ds.summary()
    with pytest.raises(FileNotFoundError):
        D.load_fashion_mnist(allow_embedded=False)
    with pytest.raises(FileNotFoundError):  # an explicit path never falls back
        D.load_fashion_mnist(tmp_path)


# -- CIFAR -------------------------------------------------------------------------------------
def test_py2_pickle_writer_matches_cifar_layout():
    # The start of the real data_batch_1, minus memo opcodes: proof the writer is faithful.
    b = py2_pickle({b"data": np.zeros((1, 2), np.uint8)})
    assert b.startswith(b"\x80\x02}(U\x04datacnumpy.core.multiarray\n_reconstruct\n"
                        b"cnumpy\nndarray\nK\x00\x85U\x01b\x87R")


def test_load_cifar10_round_trip(tmp_path, rng):
    batches = write_cifar10(tmp_path / "cifar-10-batches-py", rng)
    ds = D.load_cifar10(tmp_path)
    (x_train, y_train), (x_test, y_test) = ds
    assert x_train.shape == (20, 3, 32, 32) and x_test.shape == (4, 3, 32, 32)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
    data = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    # row layout: 1024 red (row-major 32x32), 1024 green, 1024 blue
    n, c, h, w = 13, 2, 5, 30
    assert x_train[n, c, h, w] == data[n, c * 1024 + h * 32 + w]
    np.testing.assert_array_equal(x_train.reshape(20, -1), data)
    np.testing.assert_array_equal(
        y_train, sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), []))
    np.testing.assert_array_equal(y_test, batches["test_batch"][b"labels"])
    assert ds.class_names == D.CIFAR10_CLASSES and ds.source == str(tmp_path /
                                                                    "cifar-10-batches-py")


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_load_cifar10_python3_pickles(tmp_path, rng, protocol, monkeypatch):
    batches = write_cifar10(tmp_path / "c10", rng, n=3,
                            writer=lambda b: pickle.dumps(b, protocol=protocol))
    monkeypatch.setenv("NNKERN_DATA", str(tmp_path / "c10"))
    x_test = D.load("cifar-10").x_test
    np.testing.assert_array_equal(x_test.reshape(3, -1), batches["test_batch"][b"data"])


def test_load_cifar100(tmp_path, rng):
    directory = tmp_path / "cifar-100-python"
    directory.mkdir()
    keys = (b"fine_labels", b"coarse_labels")
    train, test = cifar_batch(rng, 6, keys), cifar_batch(rng, 3, keys)
    write_file(directory / "train", py2_pickle(train))
    write_file(directory / "test", py2_pickle(test))
    fine = D.load_cifar100(tmp_path)
    np.testing.assert_array_equal(fine.y_train, train[b"fine_labels"])
    np.testing.assert_array_equal(fine.y_test, test[b"fine_labels"])
    assert fine.name == "cifar100" and fine.class_names[:2] == ("0", "1")
    assert len(fine.class_names) == 100
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    write_file(directory / "meta", py2_pickle(meta))
    coarse = D.load("cifar100", tmp_path, label_mode="coarse")
    np.testing.assert_array_equal(coarse.y_train, train[b"coarse_labels"])
    assert coarse.class_names[3] == "coarse3" and coarse.num_classes == 20
    assert D.load_cifar100(tmp_path).class_names[99] == "fine99"
    with pytest.raises(ValueError, match="label_mode must be 'fine' or 'coarse', got 'both'"):
        D.load_cifar100(tmp_path, label_mode="both")


_SIDE_EFFECTS = []


def _side_effect(value):
    _SIDE_EFFECTS.append(value)
    return value


class _Evil:
    def __reduce__(self):
        return _side_effect, ("ran",)


@pytest.mark.parametrize("payload, name", [
    (_Evil(), "test_datasets._side_effect"),
    (os.getcwd, "posix.getcwd"),
    ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _Evil()}, "_side_effect"),
])
def test_cifar_pickle_cannot_run_code(tmp_path, payload, name):
    path = write_file(tmp_path / "data_batch_1", pickle.dumps(payload, protocol=4))
    with pytest.raises(ValueError, match=f"data_batch_1: refusing to load global .*{name}"):
        D.read_cifar_batch(path)
    assert _SIDE_EFFECTS == []


def test_cifar_bad_batches(tmp_path, rng):
    good = py2_pickle(cifar_batch(rng, 2))
    path = write_file(tmp_path / "test_batch", good[:len(good) // 2])
    with pytest.raises(ValueError, match="test_batch: not a readable pickle"):
        D.read_cifar_batch(path)
    path = write_file(tmp_path / "b2", pickle.dumps({b"data": np.zeros((2, 3000), np.uint8)}))
    with pytest.raises(ValueError, match=r"b2: expected 'data' to be a uint8 array of shape "
                                         r"\(N, 3072\), got uint8 array of shape \(2, 3000\)"):
        D.read_cifar_batch(path)
    path = write_file(tmp_path / "b3", pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}))
    with pytest.raises(ValueError, match="b3: no 'labels' entry"):
        D.read_cifar_batch(path)
    path = write_file(tmp_path / "b4", pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="b4: expected a pickled dict, got list"):
        D.read_cifar_batch(path)


# -- SVHN --------------------------------------------------------------------------------------
def write_svhn(path, rng, n):
    scipy_io = pytest.importorskip("scipy.io")
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)
    y[0] = 10
    scipy_io.savemat(str(path), {"X": x, "y": y})
    return x, y


def test_load_svhn(tmp_path, rng, monkeypatch):
    directory = tmp_path / "svhn"
    directory.mkdir()
    x, y = write_svhn(directory / "train_32x32.mat", rng, 7)
    xt, yt = write_svhn(directory / "test_32x32.mat", rng, 3)
    monkeypatch.setenv("NNKERN_DATA", str(tmp_path))
    ds = D.load_svhn()
    assert ds.x_train.shape == (7, 3, 32, 32) and ds.x_train.dtype == np.uint8
    assert ds.x_train.flags.c_contiguous and ds.y_train.dtype == np.int64
    n, c, h, w = 4, 1, 7, 19
    assert ds.x_train[n, c, h, w] == x[h, w, c, n]
    np.testing.assert_array_equal(ds.x_test, xt.transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(ds.y_train, np.where(y[:, 0] == 10, 0, y[:, 0]))
    assert ds.y_train[0] == 0 and ds.y_train.max() <= 9
    with pytest.raises(FileNotFoundError, match="missing extra_32x32.mat"):
        D.load_svhn(extra=True)
    xe, _ = write_svhn(directory / "extra_32x32.mat", rng, 2)
    both = D.load("svhn", extra=True)
    assert both.name == "svhn-extra" and len(both.y_train) == 9
    np.testing.assert_array_equal(both.x_train[7:], xe.transpose(3, 2, 0, 1))


def test_svhn_bad_files(tmp_path, rng):
    scipy_io = pytest.importorskip("scipy.io")
    scipy_io.savemat(str(tmp_path / "a.mat"), {"X": np.zeros((32, 32, 3, 2), np.uint8)})
    with pytest.raises(ValueError, match=r"a.mat: expected variables 'X' and 'y', found \['X'\]"):
        D.read_svhn_mat(tmp_path / "a.mat")
    scipy_io.savemat(str(tmp_path / "b.mat"), {"X": np.zeros((28, 28, 1, 2), np.uint8),
                                               "y": np.ones((2, 1), np.uint8)})
    with pytest.raises(ValueError, match=r"b.mat: expected X of shape \(32, 32, 3, N\)"):
        D.read_svhn_mat(tmp_path / "b.mat")
    scipy_io.savemat(str(tmp_path / "c.mat"), {"X": np.zeros((32, 32, 3, 2), np.uint8),
                                               "y": np.zeros((2, 1), np.uint8)})
    with pytest.raises(ValueError, match=r"c.mat: SVHN labels must be 1..10"):
        D.read_svhn_mat(tmp_path / "c.mat")
    write_file(tmp_path / "d.mat", b"not a mat file at all" * 10)
    with pytest.raises(ValueError, match="d.mat: not a readable MATLAB file"):
        D.read_svhn_mat(tmp_path / "d.mat")


def test_svhn_without_scipy(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # makes `from scipy.io import` fail
    with pytest.raises(ImportError, match="pip install scipy"):
        D.read_svhn_mat(tmp_path / "train_32x32.mat")


# -- load() --------------------------------------------------------------------------------------
def test_load_by_name(tmp_path, rng):
    write_idx_set(tmp_path, rng, n_train=40)
    for name in ("mnist", "MNIST", " mnist "):
        assert D.load(name, tmp_path).name == "mnist"
    for name in ("fashion-mnist", "fashion_mnist", "FMNIST", "FashionMNIST"):
        assert D.load(name, tmp_path).class_names == D.FASHION_MNIST_CLASSES
    small = D.load("fashion_mnist_small")
    assert small.embedded and len(small.y_train) == 6000
    assert D.NAMES == ("mnist", "fashion-mnist", "fashion-mnist-small", "cifar10", "cifar100",
                       "svhn")
    with pytest.raises(ValueError, match="unknown data set 'imagenet'; known: mnist, "):
        D.load("imagenet")
    with pytest.raises(ValueError, match="'fashion-mnist-small' is the embedded subset; it "
                                         "takes no path"):
        D.load("fashion-mnist-small", tmp_path)
    with pytest.raises(TypeError, match="name must be a string"):
        D.load(3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'label_mode'"):
        D.load("mnist", tmp_path, label_mode="fine")


def test_load_subset():
    full = D.load("fashion-mnist-small")
    ds = D.load("fashion-mnist-small", subset=500)
    assert len(ds.y_train) == 500 and len(ds.y_test) == 500
    assert np.all(np.bincount(ds.y_train) == 50) and np.all(np.bincount(ds.y_test) == 50)
    again = D.load("fashion-mnist-small", subset=500)
    np.testing.assert_array_equal(ds.x_train, again.x_train)  # deterministic
    # original order kept: the subset is a subsequence of the full split
    position = {row.tobytes(): i for i, row in enumerate(full.x_train)}
    index = np.array([position[row.tobytes()] for row in ds.x_train])
    assert np.all(np.diff(index) > 0)
    ds = D.load("fashion-mnist-small", subset=(123, None))
    assert len(ds.y_train) == 123 and len(ds.y_test) == 1000 and ds.embedded
    assert len(D.load("fashion-mnist-small", subset=10**6).y_train) == 6000
    with pytest.raises(TypeError, match="subset must be None, an int or a pair"):
        D.load("fashion-mnist-small", subset=0.5)
    with pytest.raises(ValueError, match="subset sizes must be >= 1"):
        D.load("fashion-mnist-small", subset=(0, 5))


# -- embedded subset -----------------------------------------------------------------------------
def test_embedded_subset():
    ds = D.load_fashion_mnist_small()
    (x_train, y_train), (x_test, y_test) = ds
    assert x_train.shape == (6000, 1, 28, 28) and x_test.shape == (1000, 1, 28, 28)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64 and y_test.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(y_train, minlength=10), [600] * 10)
    np.testing.assert_array_equal(np.bincount(y_test, minlength=10), [100] * 10)
    assert x_train.max() == 255 and 0.2 < x_train.mean() / 255 < 0.4  # Fashion-MNIST mean .286
    assert np.all(x_train.reshape(6000, -1).max(1) > 0)  # no blank images
    assert len(np.unique(x_train.reshape(6000, -1), axis=0)) == 6000
    assert ds.class_names[9] == "Ankle boot" and ds.embedded
    text = D.embedded_license()
    assert "Zalando SE" in text and "Permission is hereby granted" in text
    assert "arXiv:1708.07747" in text


def test_embedded_file_is_packaged():
    """setup.cfg's package_data pattern matches the shipped file; the licence file is beside it."""
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    patterns = config["options.package_data"]["nnkern"].split()
    relative = f"datasets/data/{loaders.EMBEDDED_FILE}"
    assert any(fnmatch.fnmatch(relative, p) for p in patterns)
    package = os.path.dirname(nnkern.__file__)
    assert os.path.isfile(os.path.join(package, relative))
    with open(os.path.join(package, "datasets", "data", "LICENSE-fashion-mnist.txt")) as f:
        assert f.read().strip() == D.embedded_license().strip()


# -- preprocessing: to_float, Standardizer -------------------------------------------------------
def test_to_float():
    x = np.array([[0, 51, 128, 255]], np.uint8)
    y = D.to_float(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, np.float32([[0, 0.2, 128 / 255, 1]]))
    assert D.to_float(x, np.float64)[0, 2] == 128 / 255
    with pytest.raises(TypeError, match="to_float: x must be uint8 .*got float32"):
        D.to_float(y)
    with pytest.raises(TypeError, match="to_float: dtype must be float32 or float64"):
        D.to_float(x, np.int32)
    with pytest.raises(TypeError, match="to_float: x must be a numpy array, got list"):
        D.to_float([1, 2])


def _correlated(rng, n, shape):
    """Features with different means, scales and correlations."""
    d = int(np.prod(shape))
    mix = rng.standard_normal((d, d)) * rng.uniform(0.2, 3, d)
    z = rng.standard_normal((n, d)) @ mix + rng.uniform(-5, 5, d)
    return z.reshape((n, *shape))


@pytest.mark.parametrize("mode, axes", [("global", None), ("channel", (0, 2, 3)),
                                        ("feature", 0)])
def test_standardizer_statistics_from_train_only(rng, mode, axes):
    x_train = _correlated(rng, 300, (3, 4, 5)).astype(np.float32)
    x_test = x_train[:50] * 3 + 7  # a different distribution
    std = D.Standardizer(mode)
    y_train = std.fit_transform(x_train)
    mean = x_train.astype(np.float64).mean(axis=axes)
    var = x_train.astype(np.float64).var(axis=axes)
    np.testing.assert_allclose(std.mean, mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(std.var, var, rtol=1e-12)
    np.testing.assert_allclose(std.std, np.sqrt(var + 1e-8), rtol=1e-12)
    assert y_train.dtype == np.float32 and y_train.shape == x_train.shape
    np.testing.assert_allclose(y_train.mean(axis=axes, dtype=np.float64), 0, atol=1e-5)
    np.testing.assert_allclose(y_train.std(axis=axes, dtype=np.float64), 1, rtol=1e-5)
    y_test = std.transform(x_test)  # uses the training statistics
    keep = () if mode == "global" else \
        ((None, slice(None), None, None) if mode == "channel" else (None,))
    expected = (x_test - mean[keep]) / np.sqrt(var[keep] + 1e-8)
    np.testing.assert_allclose(y_test, expected, rtol=1e-5, atol=1e-5)
    own = D.Standardizer(mode).fit_transform(x_test)  # what test statistics would give
    assert np.abs(y_test - own).max() > 1


def test_standardizer_uint8_chunks_and_dtype(rng, monkeypatch):
    x = rng.integers(0, 256, size=(64, 3, 6, 6), dtype=np.uint8)
    for mode in D.Standardizer.MODES:
        whole = D.Standardizer(mode, dtype=np.float64).fit(x)
        monkeypatch.setattr(preprocessing, "_CHUNK_ELEMENTS", 300)  # 3 examples per chunk
        chunked = D.Standardizer(mode, dtype=np.float64).fit(x)
        monkeypatch.undo()
        np.testing.assert_allclose(chunked.mean, whole.mean, rtol=1e-13)
        np.testing.assert_allclose(chunked.var, whole.var, rtol=1e-12)
        from_float = D.Standardizer(mode, dtype=np.float64).fit(x.astype(np.float64))
        y = whole.transform(x)
        assert y.dtype == np.float64
        np.testing.assert_allclose(y, from_float.transform(x.astype(np.float64)), rtol=1e-12)
    x_float = x.astype(np.float32)
    before = x_float.copy()
    D.Standardizer("global").fit_transform(x_float)
    np.testing.assert_array_equal(x_float, before)  # input untouched


def test_standardizer_constant_input_and_state(rng):
    x = np.full((10, 1, 2, 2), 5, np.uint8)
    y = D.Standardizer("global", eps=1e-8).fit_transform(x)
    np.testing.assert_array_equal(y, 0)
    std = D.Standardizer("channel", eps=0.5).fit(rng.standard_normal((20, 3, 2, 2)))
    clone = D.Standardizer("channel").load_state_dict(std.state_dict())
    assert clone.eps == 0.5
    x_new = rng.standard_normal((4, 3, 2, 2))
    np.testing.assert_array_equal(clone.transform(x_new), std.transform(x_new))
    with pytest.raises(ValueError, match="state is for mode 'channel', this standardizer has "
                                         "mode 'global'"):
        D.Standardizer("global").load_state_dict(std.state_dict())
    assert repr(std) == "Standardizer(mode='channel', eps=0.5, fitted=True)"


def test_standardizer_errors(rng):
    with pytest.raises(ValueError, match="mode must be one of .*got 'pixel'"):
        D.Standardizer("pixel")
    with pytest.raises(ValueError, match="eps must be a number >= 0, got -1"):
        D.Standardizer(eps=-1)
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got float16"):
        D.Standardizer(dtype=np.float16)
    with pytest.raises(RuntimeError, match=r"Standardizer.transform: call fit\(x_train\) first"):
        D.Standardizer().transform(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="Standardizer.fit: x must be a numpy array, got list"):
        D.Standardizer().fit([[1.0, 2.0]])
    with pytest.raises(TypeError, match="x must have an integer or float dtype, got bool"):
        D.Standardizer().fit(np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match=r"x is empty: shape \(0, 3\)"):
        D.Standardizer().fit(np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match=r"at least 2 dimensions \(N, ...\), got shape \(3,\)"):
        D.Standardizer().fit(np.zeros(3, np.float32))
    bad = np.ones((4, 3), np.float32)
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="Standardizer.fit: x contains NaN or infinite"):
        D.Standardizer().fit(bad)
    channel = D.Standardizer("channel").fit(rng.standard_normal((5, 3, 2, 2)))
    with pytest.raises(ValueError, match=r"fitted on 3 channels \(axis 1\), got x of shape "
                                         r"\(5, 1, 2, 2\)"):
        channel.transform(np.zeros((5, 1, 2, 2)))
    feature = D.Standardizer("feature").fit(rng.standard_normal((5, 1, 2, 2)))
    with pytest.raises(ValueError, match=r"fitted on examples of shape \(1, 2, 2\), got x of "
                                         r"shape \(5, 1, 3, 3\)"):
        feature.transform(np.zeros((5, 1, 3, 3)))


# -- preprocessing: whitening --------------------------------------------------------------------
def test_zca_identity_covariance_on_training_data(rng):
    x = _correlated(rng, 4000, (3, 2, 2))
    zca = D.ZCAWhitening(eps=1e-9, dtype=np.float64)
    y = zca.fit_transform(x)
    assert y.shape == x.shape and y.dtype == np.float64
    flat = y.reshape(len(y), -1)
    np.testing.assert_allclose(flat.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(flat.T @ flat / len(y), np.eye(12), atol=1e-6)
    # float32 output, eps = 1e-2 (default): covariance U diag(S / (S + eps)) U^T exactly
    zca = D.ZCAWhitening()
    flat = zca.fit_transform(x).reshape(len(x), -1).astype(np.float64)
    u, s = zca.components, zca.eigenvalues
    np.testing.assert_allclose(flat.T @ flat / len(x), (u * (s / (s + 1e-2))) @ u.T, atol=1e-5)


def test_zca_matches_seed_formulas_with_svd(rng):
    """S2 eq 2.7-2.9 computed with np.linalg.svd, plus ZCA = X_w U^T; test data uses the
    training mean and map."""
    x_train = _correlated(rng, 500, (2, 3, 3))
    x_test = _correlated(rng, 40, (2, 3, 3))
    xc = x_train.reshape(500, -1) - x_train.reshape(500, -1).mean(0)
    u, s, _ = np.linalg.svd(xc.T @ xc / 500)  # Sigma = (1/n) X X^T for X as (D, n)
    eps = 0.1
    mean = x_train.reshape(500, -1).mean(0)
    test_c = x_test.reshape(40, -1) - mean
    x_w = test_c @ u / np.sqrt(s + eps)  # eq 2.9
    zca = D.ZCAWhitening(eps=eps, dtype=np.float64).fit(x_train)
    np.testing.assert_allclose(zca.eigenvalues, s, rtol=1e-10)
    np.testing.assert_allclose(zca.matrix, zca.matrix.T, atol=1e-12)
    np.testing.assert_allclose(zca.transform(x_test).reshape(40, -1), x_w @ u.T, atol=1e-9)
    pca = D.PCAWhitening(eps=eps, dtype=np.float64).fit(x_train)
    y = pca.transform(x_test)
    assert y.shape == (40, 18)
    np.testing.assert_allclose(np.abs(y), np.abs(x_w), atol=1e-9)  # eigenvector signs are free
    assert D.Whitening("pca", eps).fit(x_train).transform(x_test).dtype == np.float32


def test_whitening_chunks_and_uint8(rng, monkeypatch):
    x = rng.integers(0, 256, size=(50, 1, 3, 3), dtype=np.uint8)
    whole = D.ZCAWhitening(eps=1.0, dtype=np.float64)
    y_whole = whole.fit_transform(x)
    monkeypatch.setattr(preprocessing, "_CHUNK_ELEMENTS", 20)  # 2 examples per chunk
    chunked = D.ZCAWhitening(eps=1.0, dtype=np.float64)
    np.testing.assert_allclose(chunked.fit_transform(x), y_whole, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(chunked.matrix, whole.matrix, rtol=1e-10, atol=1e-14)


def test_whitening_errors(rng):
    with pytest.raises(ValueError, match="mode must be one of .*got 'svd'"):
        D.Whitening("svd")
    with pytest.raises(ValueError, match="ZCAWhitening: eps must be a number >= 0"):
        D.ZCAWhitening(eps=float("nan"))
    with pytest.raises(RuntimeError, match=r"ZCAWhitening.transform: call fit\(x_train\) first"):
        D.ZCAWhitening().transform(np.zeros((2, 3)))
    zca = D.ZCAWhitening().fit(rng.standard_normal((30, 1, 2, 2)))
    with pytest.raises(ValueError, match=r"fitted on examples of shape \(1, 2, 2\), got x of "
                                         r"shape \(3, 4\)"):
        zca.transform(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="zero eigenvalues and eps=0"):
        D.ZCAWhitening(eps=0).fit(np.ones((5, 3)))
    with pytest.raises(ValueError, match="20000 features per example is too many"):
        D.ZCAWhitening().fit(np.zeros((1, 20000), np.uint8))
    assert repr(zca) == "ZCAWhitening(mode='zca', eps=0.01, fitted=True)"


# -- preprocessing: padding, one-hot, splits -------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_pad(rng, dtype):
    x = (rng.random((5, 1, 28, 28)) * 200 + 1).astype(dtype)
    y = D.pad(x, 2)
    assert y.shape == (5, 1, 32, 32) and y.dtype == dtype
    np.testing.assert_array_equal(y[:, :, 2:30, 2:30], x)
    assert y[:, :, :2].sum() == 0 and y[:, :, 30:].sum() == 0
    assert y[:, :, :, :2].sum() == 0 and y[:, :, :, 30:].sum() == 0
    np.testing.assert_array_equal(D.pad_to(x, 32), y)
    np.testing.assert_array_equal(D.pad_to(x, (32, 32)), y)
    z = D.pad(x, (1, 3), value=7)
    assert z.shape == (5, 1, 30, 34) and z[0, 0, 0, 0] == 7
    np.testing.assert_array_equal(z[:, :, 1:29, 3:31], x)


def test_pad_to_odd_and_errors(rng):
    x = rng.random((2, 3, 5, 6)).astype(np.float32)
    y = D.pad_to(x, (8, 9))  # 3 rows: 1 top, 2 bottom; 3 columns: 1 left, 2 right
    assert y.shape == (2, 3, 8, 9)
    np.testing.assert_array_equal(y[:, :, 1:6, 1:7], x)
    assert D.pad(x, 0).shape == x.shape and D.pad(x, 0) is not x
    with pytest.raises(ValueError, match=r"pad: x must be 4-D \(N, C, H, W\), got shape \(5, 6\)"):
        D.pad(x[0, 0], 2)
    with pytest.raises(ValueError, match=r"pad: padding must be >= 0, got \(-1, -1\)"):
        D.pad(x, -1)
    with pytest.raises(TypeError, match="padding must be an int or a pair of ints, got True"):
        D.pad(x, True)
    with pytest.raises(TypeError, match="padding must be an int or a pair of ints, got 2.0"):
        D.pad(x, 2.0)
    with pytest.raises(ValueError, match=r"target size \(4, 9\) is smaller than the images "
                                         r"\(5, 6\)"):
        D.pad_to(x, (4, 9))


def test_one_hot():
    y = D.one_hot(np.array([2, 0, 1, 2]), 4)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    assert D.one_hot([1], 2, dtype=np.float64).dtype == np.float64
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got values 0..3"):
        D.one_hot(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match=r"one_hot: labels must be 1-D \(N,\), got shape"):
        D.one_hot(np.zeros((2, 2), int), 3)
    with pytest.raises(TypeError, match="one_hot: labels must be integers, got dtype float64"):
        D.one_hot(np.array([0.0, 1.0]), 3)
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        D.one_hot(np.array([0]), 0)


def test_train_val_split(rng):
    x = np.arange(1000).reshape(1000, 1) * np.ones((1, 3), int)  # row i holds i
    y = rng.integers(0, 10, 1000)
    (x_tr, y_tr), (x_val, y_val) = D.train_val_split(x, y, 0.1, seed=3)
    assert len(x_tr) == 900 and len(x_val) == 100 and len(y_tr) == 900 and len(y_val) == 100
    ids_tr, ids_val = x_tr[:, 0], x_val[:, 0]
    np.testing.assert_array_equal(np.sort(np.concatenate([ids_tr, ids_val])), np.arange(1000))
    assert np.all(np.diff(ids_tr) > 0) and np.all(np.diff(ids_val) > 0)  # order kept
    np.testing.assert_array_equal(y_tr, y[ids_tr])
    np.testing.assert_array_equal(y_val, y[ids_val])
    (_, _), (again, _) = D.train_val_split(x, y, 0.1, seed=3)
    np.testing.assert_array_equal(again, x_val)
    (_, _), (other, _) = D.train_val_split(x, y, 0.1, seed=4)
    assert not np.array_equal(other, x_val)
    (_, _), (gen, _) = D.train_val_split(x, y, 0.1, seed=np.random.default_rng(3))
    np.testing.assert_array_equal(gen, x_val)
    nnkern.manual_seed(11)
    a = D.train_val_split(x, y, 0.25)[1][0]
    nnkern.manual_seed(11)
    np.testing.assert_array_equal(D.train_val_split(x, y, 0.25)[1][0], a)
    assert len(a) == 250
    assert len(D.train_val_split(x[:7], y[:7], 0.1)[1][0]) == 1  # round(0.7) = 1


def test_train_val_split_stratified():
    y = np.repeat(np.arange(4), [500, 300, 150, 50])  # unbalanced, sorted by class
    x = np.arange(1000)
    (_, y_tr), (x_val, y_val) = D.train_val_split(x, y, 0.1, seed=0, stratify=True)
    np.testing.assert_array_equal(np.bincount(y_val), [50, 30, 15, 5])
    np.testing.assert_array_equal(np.bincount(y_tr), [450, 270, 135, 45])
    # largest remainders: 0.13 * (5, 3, 2) = (0.65, 0.39, 0.26) -> 1 extra for class 0
    idx = D.stratified_indices(np.repeat([0, 1, 2], [5, 3, 2]), 1, np.random.default_rng(0))
    assert len(idx) == 1 and idx[0] < 5
    idx = D.stratified_indices(np.repeat([0, 1, 2], [5, 3, 2]), 5, np.random.default_rng(0))
    np.testing.assert_array_equal(np.bincount(np.repeat([0, 1, 2], [5, 3, 2])[idx]), [3, 1, 1])


def test_train_val_split_errors():
    x, y = np.zeros((10, 2)), np.zeros(10, int)
    for bad in (0, 1, -0.1, 1.5, "0.1"):
        with pytest.raises(ValueError, match="val_fraction must be in"):
            D.train_val_split(x, y, bad)
    with pytest.raises(ValueError, match="gives 0 validation examples"):
        D.train_val_split(x, y, 0.01)
    with pytest.raises(ValueError, match="x has 10 examples but y has 9 labels"):
        D.train_val_split(x, y[:9])
    with pytest.raises(TypeError, match="labels must be integers, got dtype float64"):
        D.train_val_split(x, y.astype(float))
    with pytest.raises(TypeError, match="seed must be None, an int or a numpy Generator"):
        D.train_val_split(x, y, seed=1.5)


# -- the full Debian Fashion-MNIST -------------------------------------------------------------
@pytest.mark.slow
def test_full_debian_fashion_mnist(monkeypatch):
    if not os.path.isdir(DEBIAN_FMNIST):
        pytest.skip(f"{DEBIAN_FMNIST} not installed (apt install dataset-fashion-mnist)")
    monkeypatch.setattr(loaders, "SYSTEM_DIRS", {"fashion-mnist": (DEBIAN_FMNIST,)})
    ds = D.load_fashion_mnist(allow_embedded=False)
    assert ds.source == DEBIAN_FMNIST and ds.name == "fashion-mnist" and not ds.embedded
    (x_train, y_train), (x_test, y_test) = ds
    assert x_train.shape == (60000, 1, 28, 28) and x_test.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(y_test), [1000] * 10)
    # the embedded subset is exactly the full set at its recorded positions
    small = D.load_fashion_mnist_small()
    with np.load(small.source) as npz:
        train_index, test_index = npz["train_index"], npz["test_index"]
    np.testing.assert_array_equal(small.x_train, x_train[train_index])
    np.testing.assert_array_equal(small.y_train, y_train[train_index])
    np.testing.assert_array_equal(small.x_test, x_test[test_index])
    np.testing.assert_array_equal(small.y_test, y_test[test_index])


@pytest.mark.slow
def test_embedded_file_rebuilds_identically(capsys):
    """tools/make_embedded_fmnist.py --check: a rebuild from the Debian files matches."""
    if not os.path.isdir(DEBIAN_FMNIST):
        pytest.skip(f"{DEBIAN_FMNIST} not installed (apt install dataset-fashion-mnist)")
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "make_embedded_fmnist", os.path.join(ROOT, "tools", "make_embedded_fmnist.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--check"]) == 0
    assert "content identical to a rebuild" in capsys.readouterr().out
