"""Loaders for MNIST, Fashion-MNIST, CIFAR-10/100 and SVHN from local files (never downloads).

Every loader returns a ``Dataset``: a tuple ``((x_train, y_train), (x_test, y_test))`` with
x uint8 (N, C, H, W) as stored (C = 1 for the MNIST-likes, 3 for CIFAR and SVHN) and y int64
class labels (N,), plus attributes saying what was loaded from where (``name``, ``source``,
``embedded``, ``class_names``). Conversion to float is preprocessing's job (``to_float``).

Where a loader looks, first hit wins:
  1. ``path`` if given — that directory, then its subfolders named after the set. Nothing
     else is searched when ``path`` is given: a wrong explicit path is an error.
  2. each directory in ``$NNKERN_DATA`` (``os.pathsep``-separated): first its subfolders named
     after the set (e.g. ``$NNKERN_DATA/fashion-mnist``), then the directory itself.
  3. where a Debian package installs the set (``/usr/share/datasets/fashion-mnist`` from
     ``dataset-fashion-mnist``; Debian packages no MNIST, CIFAR or SVHN).
If none has the files, ``FileNotFoundError`` lists every place searched and how to get them.
``load_fashion_mnist`` (with no ``path``) then falls back to the small subset that ships with
nnkern, and says so: ``dataset.embedded is True`` and ``dataset.name == "fashion-mnist-small"``.
"""

import importlib.resources
import os

import numpy as np

from nnkern.datasets.formats import read_cifar_batch, read_idx, read_pickle, read_svhn_mat
from nnkern.datasets.preprocessing import stratified_indices

ENV_VAR = "NNKERN_DATA"
EMBEDDED_FILE = "fashion_mnist_small.npz"

DIGITS = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")

# Directories where distribution packages install a set (looked at last). Tests patch this.
SYSTEM_DIRS = {
    "fashion-mnist": ("/usr/share/datasets/fashion-mnist",),  # Debian: dataset-fashion-mnist
}


class Dataset(tuple):
    """``((x_train, y_train), (x_test, y_test))`` plus where it came from.

    Unpacks like a plain tuple. Attributes: ``name`` (e.g. "cifar10", "fashion-mnist-small"),
    ``source`` (the directory or file read), ``embedded`` (True for the subset shipped with
    nnkern), ``class_names`` (tuple of str), ``num_classes``, ``x_train`` ... ``y_test``.
    """

    def __new__(cls, train, test, *, name, source, embedded=False, class_names=None):
        self = super().__new__(cls, (tuple(train), tuple(test)))
        self.name = name
        self.source = str(source)
        self.embedded = bool(embedded)
        self.class_names = tuple(class_names) if class_names is not None else None
        return self

    def __reduce__(self):
        return (_rebuild_dataset, (self[0], self[1], self.name, self.source, self.embedded,
                                   self.class_names))

    x_train = property(lambda self: self[0][0])
    y_train = property(lambda self: self[0][1])
    x_test = property(lambda self: self[1][0])
    y_test = property(lambda self: self[1][1])

    @property
    def num_classes(self):
        if self.class_names is not None:
            return len(self.class_names)
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    def summary(self):
        """One line for logs, e.g. 'fashion-mnist: 60000 train / 10000 test, 1x28x28, 10
        classes, from /usr/share/datasets/fashion-mnist'."""
        c, h, w = self.x_train.shape[1:]
        kind = "embedded subset" if self.embedded else "from"
        return (f"{self.name}: {len(self.x_train)} train / {len(self.x_test)} test, "
                f"{c}x{h}x{w}, {self.num_classes} classes, {kind} {self.source}")

    def __repr__(self):
        return f"<Dataset {self.summary()}>"


def _rebuild_dataset(train, test, name, source, embedded, class_names):
    return Dataset(train, test, name=name, source=source, embedded=embedded,
                   class_names=class_names)


# -- finding files ---------------------------------------------------------------------------
class _Spec:
    """What a data set's directory must contain and where to look for one."""

    def __init__(self, name, title, subdirs, files, howto):
        self.name, self.title, self.subdirs, self.howto = name, title, subdirs, howto
        self.files = files  # {key: tuple of accepted file names, first found wins}


_IDX_FILES = {
    "train_images": ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels-idx1-ubyte.gz"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_NAMES = "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, " \
             "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (gzipped or not)"

_SPECS = {
    "mnist": _Spec(
        "mnist", "MNIST", ("mnist", "MNIST", "MNIST/raw"), _IDX_FILES,
        f"Download {_IDX_NAMES} from http://yann.lecun.com/exdb/mnist/ (or a mirror such as "
        f"https://ossci-datasets.s3.amazonaws.com/mnist/) into ${ENV_VAR}/mnist/, or pass "
        "path=."),
    "fashion-mnist": _Spec(
        "fashion-mnist", "Fashion-MNIST",
        ("fashion-mnist", "fashion_mnist", "FashionMNIST", "FashionMNIST/raw"), _IDX_FILES,
        "On Debian/Ubuntu: sudo apt install dataset-fashion-mnist. Otherwise download "
        f"{_IDX_NAMES} from https://github.com/zalandoresearch/fashion-mnist (folder "
        f"data/fashion) into ${ENV_VAR}/fashion-mnist/, or pass path=."),
    "cifar10": _Spec(
        "cifar10", "CIFAR-10",
        ("cifar-10-batches-py", "cifar10", "cifar10/cifar-10-batches-py"),
        {**{f"data_batch_{i}": (f"data_batch_{i}",) for i in range(1, 6)},
         "test_batch": ("test_batch",)},
        "Download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it "
        f"with tar xzf cifar-10-python.tar.gz -C ${ENV_VAR} (this creates "
        f"${ENV_VAR}/cifar-10-batches-py/), or pass path=."),
    "cifar100": _Spec(
        "cifar100", "CIFAR-100",
        ("cifar-100-python", "cifar100", "cifar100/cifar-100-python"),
        {"train": ("train",), "test": ("test",)},
        "Download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it "
        f"with tar xzf cifar-100-python.tar.gz -C ${ENV_VAR} (this creates "
        f"${ENV_VAR}/cifar-100-python/), or pass path=."),
    "svhn": _Spec(
        "svhn", "SVHN", ("svhn", "SVHN"),
        {"train": ("train_32x32.mat",), "test": ("test_32x32.mat",)},
        "Download train_32x32.mat and test_32x32.mat (and extra_32x32.mat for extra=True) "
        "from http://ufldl.stanford.edu/housenumbers/ into "
        f"${ENV_VAR}/svhn/, or pass path=. Reading them needs SciPy (pip install scipy)."),
}


def _candidates(spec, path):
    """(directory, how it was found) in search order."""
    if path is not None:
        root = os.path.expanduser(os.fspath(path))
        return [(root, "path argument")] + \
               [(os.path.join(root, sub), "path argument") for sub in spec.subdirs]
    found = []
    for root in filter(None, os.environ.get(ENV_VAR, "").split(os.pathsep)):
        root = os.path.expanduser(root)
        found += [(os.path.join(root, sub), f"${ENV_VAR}") for sub in spec.subdirs]
        found.append((root, f"${ENV_VAR}"))
    found += [(d, "system package") for d in SYSTEM_DIRS.get(spec.name, ())]
    return found


def _find(spec, path, files=None):
    """{key: file path} of the first candidate directory holding all files, else raise."""
    files = spec.files if files is None else files
    tried = []
    for directory, origin in _candidates(spec, path):
        if not os.path.isdir(directory):
            tried.append(f"  {directory} ({origin}): no such directory")
            continue
        hits, missing = {}, []
        for key, names in files.items():
            for name in names:
                if os.path.isfile(os.path.join(directory, name)):
                    hits[key] = os.path.join(directory, name)
                    break
            else:
                missing.append(names[-1])
        if not missing:
            return hits
        what = "none of the files" if not hits else "missing " + ", ".join(missing)
        tried.append(f"  {directory} ({origin}): {what}")
    if not tried:
        tried.append(f"  (nowhere: no path given and ${ENV_VAR} is not set)")
    raise FileNotFoundError(f"{spec.title} not found. Searched:\n" + "\n".join(tried) +
                            f"\n{spec.howto} nnkern never downloads data.")


# -- IDX sets ----------------------------------------------------------------------------------
def _load_idx_pair(images_path, labels_path, num_classes):
    x = read_idx(images_path)
    y = read_idx(labels_path)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected uint8 images (N, H, W), got {x.dtype} "
                         f"array of shape {x.shape}")
    if y.ndim != 1 or y.dtype != np.uint8:
        raise ValueError(f"{labels_path}: expected uint8 labels (N,), got {y.dtype} array of "
                         f"shape {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"{images_path} has {len(x)} images but {labels_path} has {len(y)} "
                         "labels")
    if len(y) and y.max() >= num_classes:
        raise ValueError(f"{labels_path}: labels must be in 0..{num_classes - 1}, got "
                         f"{y.max()}")
    return x[:, None], y.astype(np.int64)  # (N, H, W) -> (N, 1, H, W)


def _load_idx_set(spec, path, class_names, name=None):
    files = _find(spec, path)
    k = len(class_names)
    train = _load_idx_pair(files["train_images"], files["train_labels"], k)
    test = _load_idx_pair(files["test_images"], files["test_labels"], k)
    return Dataset(train, test, name=name or spec.name,
                   source=os.path.dirname(files["train_images"]), class_names=class_names)


def load_mnist(path=None):
    """MNIST: 60,000 train / 10,000 test digits, x uint8 (N, 1, 28, 28), y int64 in 0..9."""
    return _load_idx_set(_SPECS["mnist"], path, DIGITS)


def load_fashion_mnist(path=None, allow_embedded=True):
    """Fashion-MNIST: 60,000 train / 10,000 test, x uint8 (N, 1, 28, 28), y int64 in 0..9.

    When no ``path`` is given and the full set is found nowhere, returns the embedded subset
    (``load_fashion_mnist_small``) if ``allow_embedded``, else raises FileNotFoundError.
    Check ``dataset.embedded`` (or ``dataset.name``) to know which one you got.
    """
    try:
        return _load_idx_set(_SPECS["fashion-mnist"], path, FASHION_MNIST_CLASSES)
    except FileNotFoundError:
        if path is not None or not allow_embedded:
            raise
    return load_fashion_mnist_small()


def _embedded_resource():
    return importlib.resources.files("nnkern.datasets").joinpath("data", EMBEDDED_FILE)


def load_fashion_mnist_small():
    """The Fashion-MNIST subset shipped with nnkern (MIT licence, Zalando SE 2017).

    6,000 train (600 per class) / 1,000 test (100 per class) images drawn at random, per
    class, from the official train and test splits by tools/make_embedded_fmnist.py; x uint8
    (N, 1, 28, 28), y int64. The archive also holds ``train_index``/``test_index`` (positions
    in the full splits), ``license`` and ``attribution``.
    """
    resource = _embedded_resource()
    with resource.open("rb") as f, np.load(f) as npz:
        train = (npz["x_train"], npz["y_train"].astype(np.int64))
        test = (npz["x_test"], npz["y_test"].astype(np.int64))
    return Dataset(train, test, name="fashion-mnist-small", source=str(resource),
                   embedded=True, class_names=FASHION_MNIST_CLASSES)


def embedded_license():
    """The licence and attribution text of the embedded Fashion-MNIST subset."""
    with _embedded_resource().open("rb") as f, np.load(f) as npz:
        return f"{npz['attribution'].item()}\n\n{npz['license'].item()}"


# -- CIFAR -------------------------------------------------------------------------------------
def load_cifar10(path=None):
    """CIFAR-10: 50,000 train / 10,000 test, x uint8 (N, 3, 32, 32), y int64 in 0..9."""
    spec = _SPECS["cifar10"]
    files = _find(spec, path)
    parts = [read_cifar_batch(files[f"data_batch_{i}"]) for i in range(1, 6)]
    x_train = np.concatenate([x for x, _ in parts])
    y_train = np.concatenate([y[b"labels"] for _, y in parts])
    x_test, y_test = read_cifar_batch(files["test_batch"])
    return Dataset((x_train, y_train), (x_test, y_test[b"labels"]), name="cifar10",
                   source=os.path.dirname(files["test_batch"]), class_names=CIFAR10_CLASSES)


def load_cifar100(path=None, label_mode="fine"):
    """CIFAR-100: 50,000 train / 10,000 test, x uint8 (N, 3, 32, 32), y int64.

    ``label_mode="fine"``: 100 classes; ``"coarse"``: the 20 superclasses. Class names come
    from the set's ``meta`` file when it is there.
    """
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"load_cifar100: label_mode must be 'fine' or 'coarse', got "
                         f"{label_mode!r}")
    spec = _SPECS["cifar100"]
    files = _find(spec, path)
    key = f"{label_mode}_labels".encode()
    x_train, y_train = read_cifar_batch(files["train"], (key,))
    x_test, y_test = read_cifar_batch(files["test"], (key,))
    directory = os.path.dirname(files["train"])
    num = 100 if label_mode == "fine" else 20
    names = tuple(str(i) for i in range(num))
    meta_path = os.path.join(directory, "meta")
    if os.path.isfile(meta_path):
        meta = read_pickle(meta_path)
        stored = meta.get(f"{label_mode}_label_names".encode()) if isinstance(meta, dict) \
            else None
        if stored is not None and len(stored) == num:
            names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in stored)
    return Dataset((x_train, y_train[key]), (x_test, y_test[key]),
                   name="cifar100" if label_mode == "fine" else "cifar100-coarse",
                   source=directory, class_names=names)


# -- SVHN --------------------------------------------------------------------------------------
def load_svhn(path=None, extra=False):
    """SVHN cropped digits: 73,257 train / 26,032 test, x uint8 (N, 3, 32, 32), y int64 0..9.

    The stored label 10 (digit 0) becomes 0. ``extra=True`` appends the 531,131 "extra"
    images (extra_32x32.mat) to the training set. Needs SciPy to read the .mat files.
    """
    spec = _SPECS["svhn"]
    files = dict(spec.files)
    if extra:
        files["extra"] = ("extra_32x32.mat",)
    files = _find(spec, path, files)
    x_train, y_train = read_svhn_mat(files["train"])
    if extra:
        x_extra, y_extra = read_svhn_mat(files["extra"])
        x_train = np.concatenate([x_train, x_extra])
        y_train = np.concatenate([y_train, y_extra])
    test = read_svhn_mat(files["test"])
    return Dataset((x_train, y_train), test, name="svhn-extra" if extra else "svhn",
                   source=os.path.dirname(files["train"]), class_names=DIGITS)


# -- by name -----------------------------------------------------------------------------------
_LOADERS = {
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "fashion-mnist-small": None,  # handled in load(): takes no path
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "svhn": load_svhn,
}
_ALIASES = {"fmnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "cifar-10": "cifar10", "cifar-100": "cifar100"}
NAMES = tuple(_LOADERS)


def _subset(dataset, subset, seed=0):
    """Keep a stratified, deterministic subset of each split (see ``load``)."""
    if isinstance(subset, (int, np.integer)) and not isinstance(subset, bool):
        subset = (subset, subset)
    if not (isinstance(subset, (tuple, list)) and len(subset) == 2 and all(
            s is None or (isinstance(s, (int, np.integer)) and not isinstance(s, bool))
            for s in subset)):
        raise TypeError(f"load: subset must be None, an int or a pair (n_train, n_test), "
                        f"got {subset!r}")
    if any(s is not None and s < 1 for s in subset):
        raise ValueError(f"load: subset sizes must be >= 1, got {subset}")
    parts = []
    for (x, y), n in zip(dataset, subset):
        if n is None or n >= len(y):
            parts.append((x, y))
            continue
        keep = stratified_indices(y, int(n), np.random.default_rng(seed))
        parts.append((x[keep], y[keep]))
    return Dataset(parts[0], parts[1], name=dataset.name, source=dataset.source,
                   embedded=dataset.embedded, class_names=dataset.class_names)


def load(name, path=None, subset=None, **options):
    """Load a data set by name: one of ``NAMES`` ("mnist", "fashion-mnist",
    "fashion-mnist-small", "cifar10", "cifar100", "svhn"; "_" and "-" are interchangeable,
    case is ignored, "cifar-10"/"fmnist" are accepted).

    ``path`` is passed to the loader (not allowed with "fashion-mnist-small"); other keyword
    options too (``label_mode=`` for cifar100, ``extra=`` for svhn, ``allow_embedded=`` for
    fashion-mnist). ``subset`` keeps fewer examples for quick runs: an int n keeps n of each
    split, a pair (n_train, n_test) sets both (None = all). The kept examples are stratified
    by class, drawn with a fixed seed (the same every call) and stay in their original order.
    """
    if not isinstance(name, str):
        raise TypeError(f"load: name must be a string, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _LOADERS:
        raise ValueError(f"load: unknown data set {name!r}; known: {', '.join(NAMES)}")
    if key == "fashion-mnist-small":
        if path is not None or options:
            raise ValueError("load: 'fashion-mnist-small' is the embedded subset; it takes no "
                             f"path or options (got path={path!r}, options={options})")
        dataset = load_fashion_mnist_small()
    else:
        dataset = _LOADERS[key](path, **options)
    return dataset if subset is None else _subset(dataset, subset)
