"""Image classification data sets and their preprocessing.

    from nnkern import datasets
    ds = datasets.load("fashion-mnist")          # or load_fashion_mnist(), load_cifar10(), ...
    print(ds.summary())                          # which data, how much, from where
    (x_train, y_train), (x_test, y_test) = ds     # x: uint8 (N, C, H, W), y: int64 (N,)
    (x_train, y_train), (x_val, y_val) = datasets.train_val_split(x_train, y_train, 0.1, seed=0)
    std = datasets.Standardizer("global").fit(datasets.to_float(x_train))
    x_train = std.transform(datasets.to_float(x_train))   # float32, stats from training only

Layout: images are NCHW uint8 exactly as stored (1 channel for MNIST and Fashion-MNIST, 3 for
CIFAR and SVHN); labels are int64. Preprocessing returns float32 (``dtype=`` for float64).
Data are read from local files only (``path=``, ``$NNKERN_DATA``, Debian's
/usr/share/datasets); see ``nnkern.datasets.loaders`` for the search order. nnkern never
downloads anything; a 6,000/1,000-image Fashion-MNIST subset ships with it
("fashion-mnist-small", MIT licence, Copyright (c) 2017 Zalando SE; ``embedded_license()``).
"""

from nnkern.datasets.formats import read_cifar_batch, read_idx, read_pickle, read_svhn_mat
from nnkern.datasets.loaders import (
    CIFAR10_CLASSES,
    DIGITS,
    ENV_VAR,
    FASHION_MNIST_CLASSES,
    NAMES,
    Dataset,
    embedded_license,
    load,
    load_cifar10,
    load_cifar100,
    load_fashion_mnist,
    load_fashion_mnist_small,
    load_mnist,
    load_svhn,
)
from nnkern.datasets.preprocessing import (
    PCAWhitening,
    Standardizer,
    Whitening,
    ZCAWhitening,
    one_hot,
    pad,
    pad_to,
    stratified_indices,
    to_float,
    train_val_split,
)

__all__ = [
    "Dataset", "load", "NAMES", "ENV_VAR", "load_mnist", "load_fashion_mnist",
    "load_fashion_mnist_small", "load_cifar10", "load_cifar100", "load_svhn",
    "embedded_license", "DIGITS", "FASHION_MNIST_CLASSES", "CIFAR10_CLASSES",
    "read_idx", "read_pickle", "read_cifar_batch", "read_svhn_mat",
    "to_float", "Standardizer", "Whitening", "ZCAWhitening", "PCAWhitening", "pad", "pad_to",
    "one_hot", "train_val_split", "stratified_indices",
]
