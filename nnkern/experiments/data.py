"""Data preparation as the seeds do it: load, (subset), pad, hold out validation, standardise.

    data = prepare_data("fashion-mnist", pad=32, val_split=0.1, seed=0)
    print(data.describe())
    x_train, y_train = data.train

Order of the steps (all optional except loading and standardising):

1. load the set by name or from a directory (``load_dataset``); Fashion-MNIST falls back to
   the 6,000/1,000 subset embedded in nnkern when the full set is nowhere to be found, and
   ``Data.embedded`` / ``Data.warning()`` say so;
2. ``limit``/``test_limit``: keep a class-stratified, fixed subset of the training/test images
   (quick runs), drawn with ``seed`` (the test subset with ``test_seed`` when given: the
   example scripts keep the same test images whatever ``--seed``);
3. ``pad``: zero-pad the raw images to ``pad`` x ``pad`` (seed 002 feeds 28x28 MNIST to its
   32x32 VGG as 1x32x32, S2:1136; the black border is the background of these images);
4. ``val_split``: hold out that random fraction of the training images for validation (10 % in
   seed 002, S2:1134), drawn with ``seed``;
5. global standardisation ``(x - mean) / std`` with one mean and std fitted on the remaining
   training images only (S2:1177 "global feature standardization"; S0:1187), applied to
   train, validation and test alike. Arrays are float32 (N, C, H, W).
"""

import os
from dataclasses import dataclass, field

import numpy as np

from nnkern import datasets


def load_dataset(data="fashion-mnist"):
    """A ``nnkern.datasets.Dataset`` from a name (``datasets.NAMES``, e.g. "fashion-mnist",
    "mnist", "cifar10", "fashion-mnist-small"), a ``NAME=PATH`` pair, or a directory (tried as
    Fashion-MNIST/MNIST IDX files, then CIFAR-10, CIFAR-100 and SVHN)."""
    if not isinstance(data, str) or not data:
        raise ValueError(f"data must be a data set name or a directory, got {data!r}")
    if "=" in data:
        name, path = data.split("=", 1)
        return datasets.load(name, path=path)
    key = data.strip().lower().replace("_", "-")
    known = {n.replace("_", "-") for n in datasets.NAMES} | {"fmnist", "fashionmnist",
                                                             "cifar-10", "cifar-100"}
    if key in known:
        return datasets.load(key)
    if os.path.isdir(os.path.expanduser(data)):
        tried = []
        for name in ("fashion-mnist", "cifar10", "cifar100", "svhn"):
            try:
                return datasets.load(name, path=data)
            except FileNotFoundError as e:
                tried.append(f"{name}: {str(e).splitlines()[0]}")
        raise FileNotFoundError(f"no data set found in {data!r} (looked for Fashion-MNIST/MNIST "
                                "IDX files, CIFAR-10, CIFAR-100 and SVHN):\n  " +
                                "\n  ".join(tried))
    raise ValueError(f"--data {data!r} is neither a known data set ({', '.join(datasets.NAMES)}) "
                     "nor an existing directory")


@dataclass
class Data:
    """Prepared arrays plus where they came from. ``train``, ``val`` (None without a
    validation split) and ``test`` are (x float32 (N, C, H, W), y int64 (N,)) pairs."""

    train: tuple
    val: tuple | None
    test: tuple
    name: str
    source: str
    embedded: bool
    class_names: tuple
    standardizer: datasets.Standardizer
    full_sizes: tuple = (0, 0)
    notes: list = field(default_factory=list)
    requested_embedded: bool = False

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def sample_shape(self):
        return tuple(self.train[0].shape[1:])

    def warning(self):
        """A loud message when the embedded subset stands in for the full Fashion-MNIST."""
        if not self.embedded:
            return None
        sizes = f"{self.full_sizes[0]} train / {self.full_sizes[1]} test images"
        if self.requested_embedded:
            return (f"NOTE: using the EMBEDDED Fashion-MNIST SUBSET ({sizes}) as asked; "
                    "accuracies are not comparable with full-set results.")
        return ("WARNING: the full Fashion-MNIST was not found; using the EMBEDDED SUBSET "
                f"({sizes}). Accuracies are not comparable with full-set results. Install it "
                "(Debian/Ubuntu: apt install dataset-fashion-mnist) or point $NNKERN_DATA or "
                "--data at it.")

    def describe(self):
        """A few lines for logs: the source, the sizes and the preprocessing."""
        n_val = 0 if self.val is None else len(self.val[0])
        c, h, w = self.sample_shape
        kind = "EMBEDDED SUBSET" if self.embedded else "full set"
        lines = [f"data: {self.name} ({kind}) from {self.source}",
                 f"      {len(self.train[0])} train / {n_val} validation / {len(self.test[0])} "
                 f"test images of {c}x{h}x{w}, {self.num_classes} classes "
                 f"(the set has {self.full_sizes[0]} train / {self.full_sizes[1]} test)",
                 f"      global standardisation fitted on the training images: mean "
                 f"{float(self.standardizer.mean):.4f}, std {float(self.standardizer.std):.4f}"]
        return "\n".join(lines + [f"      {note}" for note in self.notes])


def _stratified(x, y, n, seed):
    if n is None or n >= len(y):
        return x, y
    keep = datasets.stratified_indices(y, int(n), np.random.default_rng(seed))
    return x[keep], y[keep]


def prepare_data(data="fashion-mnist", *, limit=None, test_limit=None, pad=None, val_split=0.1,
                 seed=0, test_seed=None, dataset=None):
    """Load and preprocess a data set (see the module docstring); returns :class:`Data`.

    ``seed`` draws the training subset and the validation split; ``test_seed`` the test subset
    (default: ``seed``). ``dataset``: an already loaded ``nnkern.datasets.Dataset`` (skips
    loading ``data``).
    """
    for name, value in (("limit", limit), ("test_limit", test_limit), ("pad", pad)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    if isinstance(val_split, bool) or not isinstance(val_split, (int, float)) \
            or not 0 <= val_split < 1:
        raise ValueError(f"val_split must be a number in [0, 1), got {val_split!r}")
    ds = load_dataset(data) if dataset is None else dataset
    (x, y), (x_test, y_test) = ds
    full_sizes = (len(x), len(x_test))
    notes = []
    x, y = _stratified(x, y, limit, seed)
    x_test, y_test = _stratified(x_test, y_test, test_limit,
                                 seed if test_seed is None else test_seed)
    if limit is not None and limit < full_sizes[0]:
        notes.append(f"--limit: a class-stratified subset of {len(x)} training images")
    if test_limit is not None and test_limit < full_sizes[1]:
        notes.append(f"--test-limit: a class-stratified subset of {len(x_test)} test images")
    if pad is not None and x.shape[2:] != (pad, pad):
        notes.append(f"images zero-padded from {x.shape[2]}x{x.shape[3]} to {pad}x{pad}")
        x, x_test = datasets.pad_to(x, pad), datasets.pad_to(x_test, pad)
    val = None
    if val_split > 0:
        (x, y), (x_val, y_val) = datasets.train_val_split(x, y, val_split, seed=seed)
        val = (x_val, y_val)
    std = datasets.Standardizer("global").fit(x)
    train = (std.transform(x), y)
    val = None if val is None else (std.transform(val[0]), val[1])
    test = (std.transform(x_test), y_test)
    class_names = ds.class_names or tuple(str(i) for i in range(ds.num_classes))
    return Data(train=train, val=val, test=test, name=ds.name, source=ds.source,
                embedded=ds.embedded, class_names=class_names, standardizer=std,
                full_sizes=full_sizes, notes=notes,
                requested_embedded=dataset is None and _names_embedded(data))


def _names_embedded(data):
    return isinstance(data, str) and \
        data.strip().lower().replace("_", "-") == "fashion-mnist-small"
