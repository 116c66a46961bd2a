#!/usr/bin/env python
"""Build nnkern/datasets/data/fashion_mnist_small.npz, the Fashion-MNIST subset shipped with nnkern.

Source: the official Fashion-MNIST IDX files (Debian package dataset-fashion-mnist installs them
in /usr/share/datasets/fashion-mnist; or --source DIR). Selection, deterministic:

  rng = numpy.random.default_rng(SEED)                       # SEED = 20240601
  for split, per_class in (("train", 600), ("test", 100)):
      for c in 0..9:  pick per_class of the indices with label c, rng.choice(replace=False)
      indices = sorted(union)                                 # original order of the split

so 6,000 training (600 per class) and 1,000 test (100 per class) images; the test subset comes
from the official test split only. The archive holds x_train/x_test uint8 (N, 1, 28, 28),
y_train/y_test uint8 (N,), train_index/test_index int32 (positions in the full splits), and
the licence/attribution strings. It is written as a zip with fixed timestamps and fixed deflate
level, so the same input gives a byte-identical file (the sha256 is printed).

Usage (from the repository root):
    python tools/make_embedded_fmnist.py            # (re)write the file
    python tools/make_embedded_fmnist.py --check    # compare the shipped file with a rebuild
"""

import argparse
import hashlib
import io
import os
import sys
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nnkern.datasets.formats import read_idx  # noqa: E402

SEED = 20240601
PER_CLASS = {"train": 600, "test": 100}
NUM_CLASSES = 10
DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"
OUTPUT = os.path.join(ROOT, "nnkern", "datasets", "data", "fashion_mnist_small.npz")
LICENSE_FILE = os.path.join(ROOT, "nnkern", "datasets", "data", "LICENSE-fashion-mnist.txt")

ATTRIBUTION = (
    "Fashion-MNIST subset: 6,000 training images (600 per class) and 1,000 test images "
    "(100 per class) selected by nnkern's tools/make_embedded_fmnist.py (seed 20240601) from "
    "Fashion-MNIST, https://github.com/zalandoresearch/fashion-mnist. Han Xiao, Kashif Rasul, "
    "Roland Vollgraf: Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning "
    "Algorithms, arXiv:1708.07747 (2017). Images and labels unchanged.")

LICENSE = """The MIT License (MIT) Copyright (c) 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this software \
and associated documentation files (the "Software"), to deal in the Software without \
restriction, including without limitation the rights to use, copy, modify, merge, publish, \
distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the \
Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or \
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING \
BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND \
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, \
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, \
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE."""


def _find(source, stem):
    for name in (stem, stem + ".gz"):
        if os.path.isfile(os.path.join(source, name)):
            return os.path.join(source, name)
    raise SystemExit(f"{source}: no {stem}[.gz]; install dataset-fashion-mnist or use --source")


def select(labels, per_class, rng):
    """Sorted indices: ``per_class`` random examples of each class 0..9."""
    picked = []
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise SystemExit(f"class {c} has only {len(members)} examples, need {per_class}")
        picked.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(picked))


def build(source):
    """The arrays of the archive, in the order they are written."""
    rng = np.random.default_rng(SEED)
    arrays = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        x = read_idx(_find(source, f"{stem}-images-idx3-ubyte"))
        y = read_idx(_find(source, f"{stem}-labels-idx1-ubyte"))
        index = select(y, PER_CLASS[split], rng)
        arrays[f"x_{split}"] = np.ascontiguousarray(x[index][:, None])  # (N, 1, 28, 28)
        arrays[f"y_{split}"] = y[index]
        arrays[f"{split}_index"] = index.astype(np.int32)
    arrays["attribution"] = np.array(ATTRIBUTION)
    arrays["license"] = np.array(LICENSE)
    return arrays


def to_npz_bytes(arrays):
    """An .npz (what np.savez_compressed writes) with fixed timestamps: reproducible bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            member = io.BytesIO()
            np.lib.format.write_array(member, array, allow_pickle=False)
            archive.writestr(info, member.getvalue(), compresslevel=9)
    return buffer.getvalue()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default=DEFAULT_SOURCE,
                        help=f"directory with the four Fashion-MNIST IDX files "
                             f"(default {DEFAULT_SOURCE})")
    parser.add_argument("--output", default=OUTPUT)
    parser.add_argument("--check", action="store_true",
                        help="rebuild in memory and compare with --output instead of writing")
    args = parser.parse_args(argv)
    arrays = build(args.source)
    data = to_npz_bytes(arrays)
    digest = hashlib.sha256(data).hexdigest()
    if args.check:
        # Content decides; the bytes may differ only if zlib's deflate output changed.
        with open(args.output, "rb") as f:
            shipped = f.read()
        with np.load(io.BytesIO(shipped)) as npz:
            same = sorted(npz.files) == sorted(arrays) and all(
                npz[k].dtype == v.dtype and np.array_equal(npz[k], v) for k, v in arrays.items())
        print(f"{args.output}: content {'identical to' if same else 'DIFFERS from'} a rebuild; "
              f"bytes {'identical' if shipped == data else 'differ'} "
              f"(sha256 of rebuild {digest})")
        return 0 if same else 1
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "wb") as f:
        f.write(data)
    if os.path.abspath(args.output) == OUTPUT:
        with open(LICENSE_FILE, "w") as f:
            f.write(f"{ATTRIBUTION}\n\n{LICENSE}\n")
    print(f"wrote {args.output}: {len(data)} bytes, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
