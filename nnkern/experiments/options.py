"""Argument parsing shared by ``python -m nnkern train`` and the example scripts."""

import argparse
import os
import time


def _number(convert, accept, expected):
    """An argparse ``type``: ``convert(text)``, which must pass ``accept``; else an error saying
    ``expected``."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value
    return parse


_finite = float("inf").__gt__
positive_int = _number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0 and _finite(v), "a finite number > 0")
non_negative_float = _number(float, lambda v: v >= 0 and _finite(v), "a finite number >= 0")
fraction = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
probability = _number(float, lambda v: 0 <= v < 1, "a drop probability in [0, 1)")


def int_list(text):
    """'32,64,128' -> [32, 64, 128]."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") \
            from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_example_arguments(parser, *, epochs, batch_size, lr, out, data="fashion-mnist",
                          lr_help=None):
    """The flags every example script has: --epochs --batch-size --lr --seed --data --out,
    plus --limit/--test-limit for quick runs and --threads/--no-progress."""
    parser.add_argument("--epochs", type=positive_int, default=epochs,
                        help=f"training epochs (default {epochs})")
    parser.add_argument("--batch-size", type=positive_int, default=batch_size,
                        help=f"minibatch size (default {batch_size})")
    parser.add_argument("--lr", type=positive_float, default=lr,
                        help=lr_help or f"learning rate (default {lr})")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="random seed of init, validation split and shuffling (default 0)")
    parser.add_argument("--data", default=data,
                        help=f"data set name or directory (default {data}: the full set when "
                             "installed, else the embedded subset)")
    parser.add_argument("--out", default=out, help=f"output directory (default {out})")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="use only N training images (class-stratified; quick runs)")
    parser.add_argument("--test-limit", type=positive_int, default=None,
                        help="use only N test images (class-stratified; quick runs)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="threads for the kernels and BLAS (default: all cores)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no per-epoch progress output")
    return parser


def default_out(model):
    """runs/<model>-<timestamp> (a suffix is added if it exists already)."""
    base = os.path.join("runs", f"{model}-{time.strftime('%Y%m%d-%H%M%S')}")
    path, k = base, 1
    while os.path.exists(path):
        k += 1
        path = f"{base}-{k}"
    return path
