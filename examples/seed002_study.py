"""Seed 002 (Schilling 2016): the study behind tables B.1-B.4 on Fashion-MNIST, for the MLP or
the VGG-10, each setting trained vanilla (V) and batch-normalised (B).

Accuracy table (B.1 for --model mlp, B.2 for --model vgg; S2:1941-1975), one change from the
baseline (ReLU, lr 0.01, Kaiming init, no regularisation) per row:
  activation  sigmoid (Xavier init) / relu (the baseline) / elu
  initial lr  high 0.1 / low 0.001
  weight init high N(0, 1) / low N(0, 1e-4^2)
  regularisation  dropout 0.5 / weight decay 5e-4
Timing table (B.3 / B.4; S2:1981-2009): mean seconds per training epoch for batch sizes
32 ... 1024, V and B, and the BN overhead (B - V) / V.

Training as in S2:1175-1229: global standardisation, 10 % validation split, Nesterov SGD
(mu 0.9), batch size 64, lr x0.5 after 5 epochs without a gain in validation accuracy, early
stop after 20 (best weights kept). The seed trains up to 100 epochs; --epochs cuts that.

    python examples/seed002_study.py --model mlp --epochs 15
    python examples/seed002_study.py --model mlp --rows relu,lr_high --no-timing
    python examples/seed002_study.py --model mlp --no-accuracy --batch-sizes 32,64,128
    python examples/seed002_study.py --epochs 1 --limit 500 --batch-sizes 256 --timing-limit 512

Writes <out>/<row>/{vanilla,bn}/history.json, <out>/<row>/comparison.png, <out>/table.md and
<out>/results.json.
"""

import argparse
import functools
import os
import time

import numpy as np

import nnkern
from nnkern import losses, models, optim
from nnkern.experiments import add_example_arguments, load_dataset, prepare_data, set_threads
from nnkern.experiments.options import int_list
from nnkern.experiments.report import (
    compare_histories,
    markdown_table,
    save_training,
    write_json,
)

# row name -> (table "Parameter", table "Value", changes from the baseline)
ROWS = {
    "sigmoid": ("Activation", "sigmoid", {"activation": "sigmoid"}),
    "relu": ("Activation", "ReLU", {}),
    "elu": ("Activation", "ELU", {"activation": "elu"}),
    "lr_high": ("Initial LR", "high (0.1)", {"lr": 0.1}),
    "lr_low": ("Initial LR", "low (0.001)", {"lr": 0.001}),
    "init_high": ("Weight init", "high N(0,1)", {"init": 1.0}),
    "init_low": ("Weight init", "low N(0,1e-4²)", {"init": 1e-4}),
    "dropout": ("Regularization", "dropout 0.5", {"dropout": 0.5}),
    "wdecay": ("Regularization", "w. decay 5e-4", {"weight_decay": 5e-4}),
}

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
add_example_arguments(parser, epochs=15, batch_size=64, lr=0.01, out="runs/seed002_study")
parser.add_argument("--model", choices=("mlp", "vgg"), default="mlp")
parser.add_argument("--rows", default=",".join(ROWS),
                    help=f"comma-separated rows of the accuracy table (default all: "
                         f"{','.join(ROWS)})")
parser.add_argument("--batch-sizes", type=int_list, default=[32, 64, 128, 256, 512, 1024],
                    help="batch sizes of the timing table (default 32,...,1024)")
parser.add_argument("--timing-epochs", type=int, default=1,
                    help="epochs timed per batch size and network (default 1)")
parser.add_argument("--timing-limit", type=int, default=None,
                    help="time epochs of only N training images (default: all)")
parser.add_argument("--no-timing", action="store_true", help="skip the timing table")
parser.add_argument("--no-accuracy", action="store_true", help="skip the accuracy table")
args = parser.parse_args()
rows = [r.strip() for r in args.rows.split(",") if r.strip()]
unknown = [r for r in rows if r not in ROWS]
if unknown:
    parser.error(f"--rows: unknown {unknown}; choose from {list(ROWS)}")
if args.threads:
    set_threads(args.threads)

# -- data --------------------------------------------------------------------------------------
dataset = load_dataset(args.data)
print(dataset.summary())
# prepare_data: stratified --limit subsets, pad, 10 % validation split, global standardisation
data = prepare_data(dataset=dataset, limit=args.limit, test_limit=args.test_limit,
                    pad=32 if args.model == "vgg" else None,
                    val_split=0.1, seed=args.seed,
                    test_seed=0)   # the same test images whatever --seed
(x_train, y_train), (x_val, y_val), (x_test, y_test) = data.train, data.val, data.test
shape, classes = x_train.shape[1:], dataset.num_classes
print(f"{len(x_train)} train / {len(x_val)} validation / {len(x_test)} test images")


def build(batch_norm, activation="relu", init=None, dropout=0.0, seed=0):
    """The network of the row: ``init`` is the std of a N(0, std^2) init, or None for the
    seed's rule (Kaiming for ReLU/ELU, Xavier for sigmoid)."""
    weight_init = None if init is None else functools.partial(nnkern.init.normal, std=init)
    rng = np.random.default_rng(seed)
    if args.model == "mlp":
        return models.mlp(int(np.prod(shape)), classes, batch_norm=batch_norm,
                          activation=activation, dropout=dropout, weight_init=weight_init,
                          rng=rng)
    return models.vgg10(shape[0], classes, batch_norm=batch_norm, activation=activation,
                        dropout=dropout, weight_init=weight_init, rng=rng)


loss = losses.SoftmaxCrossEntropy()
results = {"data": dataset.summary(), "args": vars(args), "accuracy": {}, "timing": {}}
tables = []

# -- tables B.1 / B.2: test accuracy, vanilla vs BN --------------------------------------------
if not args.no_accuracy:
    table = []
    for row in rows:
        parameter, value, change = ROWS[row]
        change = dict(change)
        lr = change.pop("lr", args.lr)
        weight_decay = change.pop("weight_decay", 0.0)
        histories, cells = {}, {}
        for name, batch_norm in (("vanilla", False), ("bn", True)):
            print(f"\n== {row} ({parameter}: {value}), {name} {args.model} ==")
            model = build(batch_norm, seed=args.seed, **change)
            optimizer = optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                                  weight_decay=weight_decay)
            callbacks = [optim.ReduceLROnPlateau(optimizer, factor=0.5, patience=4),
                         nnkern.EarlyStopping(monitor="val_accuracy", patience=20)]
            history = nnkern.fit(model, loss, optimizer, train=(x_train, y_train),
                                 val=(x_val, y_val), epochs=args.epochs,
                                 batch_size=args.batch_size, seed=args.seed,
                                 callbacks=callbacks, progress=not args.no_progress)
            test = nnkern.evaluate(model, x_test, y_test, loss=loss)
            print(f"{row} {name}: test accuracy {test['accuracy']:.4f}"
                  + (" (diverged)" if history.diverged else ""))
            save_training(os.path.join(args.out, row, name), history)
            histories[name], cells[name] = history, test["accuracy"]
            results["accuracy"].setdefault(row, {})[name] = {
                "test": test, "epochs": history.epochs_completed, "diverged": history.diverged,
                "seconds_per_epoch": float(np.mean(history["time"] or [np.nan]))}
        compare_histories(histories, os.path.join(args.out, row, "comparison.png"),
                          title=f"seed 002 {args.model}, {parameter} {value}: vanilla vs BN")
        table.append([parameter, value, f"{100 * cells['vanilla']:.1f}",
                      f"{100 * cells['bn']:.1f}"])
        write_json(os.path.join(args.out, "results.json"), results)   # after every row
    tables.append(f"Test accuracy % ({args.model}, {dataset.name}, up to {args.epochs} epochs)"
                  f"\n\n" + markdown_table(["Parameter", "Value", "V", "B"], table))
    print("\n" + tables[-1])

# -- tables B.3 / B.4: seconds per epoch and BN overhead per batch size -----------------------
if not args.no_timing:
    xt, yt = x_train, y_train
    if args.timing_limit:
        xt, yt = x_train[:args.timing_limit], y_train[:args.timing_limit]
    table = []
    for batch_size in args.batch_sizes:
        seconds, fastest = {}, {}
        for name, batch_norm in (("vanilla", False), ("bn", True)):
            model = build(batch_norm, seed=args.seed)
            optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True)
            # compile (or load from Numba's cache) every kernel before the clock starts
            nnkern.fit(model, loss, optimizer, train=(xt[:2 * batch_size], yt[:2 * batch_size]),
                       epochs=1, batch_size=batch_size, progress=False)
            load_before = os.getloadavg()[0]
            history = nnkern.fit(model, loss, optimizer, train=(xt, yt),
                                 epochs=args.timing_epochs, batch_size=batch_size,
                                 seed=args.seed, progress=False)
            seconds[name], fastest[name] = float(np.mean(history["time"])), min(history["time"])
            results["timing"].setdefault(str(batch_size), {})[name] = {
                "seconds_per_epoch": seconds[name], "epoch_times": history["time"],
                "images": len(xt), "load_average": [load_before, os.getloadavg()[0]]}
            print(f"batch {batch_size} {name}: {seconds[name]:.2f} s/epoch "
                  f"({len(xt)} images, load {load_before:.1f})", flush=True)
        overhead = (seconds["bn"] - seconds["vanilla"]) / seconds["vanilla"]
        results["timing"][str(batch_size)]["overhead"] = overhead
        table.append([batch_size, f"{100 * overhead:.0f}%", f"{seconds['vanilla']:.3g}",
                      f"{seconds['bn']:.3g}", f"{fastest['vanilla']:.3g}",
                      f"{fastest['bn']:.3g}", f"{os.getloadavg()[0]:.1f}"])
        write_json(os.path.join(args.out, "results.json"), results)
    tables.append(f"Seconds per epoch ({args.model}, {len(xt)} training images, "
                  f"{args.timing_epochs} epoch(s) each; overhead from the means)\n\n" +
                  markdown_table(["Batch", "BN overhead", "V mean", "B mean", "V min", "B min",
                                  "load avg"], table))
    print("\n" + tables[-1])

os.makedirs(args.out, exist_ok=True)
with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as f:
    f.write(f"{dataset.summary()}\n\n" + "\n\n".join(tables) + "\n")
write_json(os.path.join(args.out, "results.json"), results)
print(f"\nwrote {args.out}/ ({time.strftime('%H:%M:%S')})")
