"""Seed 002 (Schilling 2016): its VGG-like CNN, vanilla and batch-normalised, side by side on
Fashion-MNIST.

VGG-10 of table 6.3 (S2:1193-1217): five pairs of 3x3 convolutions (64, 128, 256, 512, 512
filters, padding 1), each pair followed by 2x2 max pooling, then 2 x linear 512 and the
classifier; BN between every conv/linear and its ReLU; Kaiming init. The 28x28 images are
zero-padded to 32x32 (seed 002 feeds MNIST as 1x32x32, S2:1136). Training as in S2:1175-1229:
global standardisation, 10 % validation split, Nesterov SGD (mu 0.9), lr 0.01, batch size 64,
lr x0.5 after 5 epochs without a gain in validation accuracy, early stop after 20.
Reproduces the ReLU row of table B.2 (and, with --lr 0.1, its "high learning rate" row).

This network is 9.2 M parameters and ~0.3 GFLOP per image: on a 2-core CPU an epoch of the
full set takes of the order of an hour (see examples/RESULTS.md); use --limit for a taste.

    python examples/seed002_vgg.py --epochs 10
    python examples/seed002_vgg.py --epochs 1 --limit 256 --test-limit 256   # a smoke run

Writes <out>/{vanilla,bn}/{history.json,history.png,model.npz}, <out>/comparison.png and
<out>/results.json. --only bn (or vanilla) trains one of the two.
"""

import argparse
import os
import time

import numpy as np

import nnkern
from nnkern import losses, models, optim
from nnkern.experiments import add_example_arguments, load_dataset, prepare_data, set_threads
from nnkern.experiments.report import (
    compare_histories,
    markdown_table,
    save_training,
    write_json,
)

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
add_example_arguments(parser, epochs=10, batch_size=64, lr=0.01, out="runs/seed002_vgg")
parser.add_argument("--only", choices=("vanilla", "bn"), default=None,
                    help="train only one of the two networks")
parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
args = parser.parse_args()
if args.threads:
    set_threads(args.threads)

# -- data: pad to 32x32, hold out 10 %, standardise with training statistics -----------------
dataset = load_dataset(args.data)
print(dataset.summary())
# prepare_data: stratified --limit subsets, pad, 10 % validation split, global standardisation
data = prepare_data(dataset=dataset, limit=args.limit, test_limit=args.test_limit, pad=32,
                    val_split=0.1, seed=args.seed,
                    test_seed=0)   # the same test images whatever --seed
(x_train, y_train), (x_val, y_val), (x_test, y_test) = data.train, data.val, data.test
print(f"{len(x_train)} train / {len(x_val)} validation / {len(x_test)} test images of "
      f"{'x'.join(map(str, x_train.shape[1:]))}")

# -- the two networks, trained the same way from the same seed --------------------------------
loss = losses.SoftmaxCrossEntropy()
histories, rows, results = {}, [], {}
for name, batch_norm in (("vanilla", False), ("bn", True)):
    if args.only and name != args.only:
        continue
    print(f"\n== {name} VGG-10 ==")
    model = models.vgg10(x_train.shape[1], dataset.num_classes, batch_norm=batch_norm,
                         rng=np.random.default_rng(args.seed))
    model.summary((args.batch_size,) + x_train.shape[1:])
    optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True)
    callbacks = [optim.ReduceLROnPlateau(optimizer, factor=0.5, patience=4),
                 nnkern.EarlyStopping(monitor="val_accuracy", patience=20)]
    start = time.perf_counter()
    history = nnkern.fit(model, loss, optimizer, train=(x_train, y_train), val=(x_val, y_val),
                         epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                         callbacks=callbacks, device=args.device,
                         progress=not args.no_progress)
    seconds = time.perf_counter() - start
    test = nnkern.evaluate(model, x_test, y_test, loss=loss)
    print(f"{name}: test accuracy {test['accuracy']:.4f}, loss {test['loss']:.4f}, "
          f"{history.epochs_completed} epochs in {seconds:.1f} s")

    save_training(os.path.join(args.out, name), history, model, title=f"seed 002 VGG-10, {name}")
    histories[name] = history
    per_epoch = float(np.mean(history["time"] or [np.nan]))
    results[name] = {"test": test, "epochs": history.epochs_completed,
                     "best_val_accuracy": max(history["val_accuracy"] or [np.nan]),
                     "diverged": history.diverged, "stopped_reason": history.stopped_reason,
                     "seconds": seconds, "seconds_per_epoch": per_epoch}
    rows.append([name, f"{100 * test['accuracy']:.2f}", f"{test['loss']:.4f}",
                 history.epochs_completed, "yes" if history.diverged else "no",
                 f"{per_epoch:.1f}"])

compare_histories(histories, os.path.join(args.out, "comparison.png"),
                  title=f"seed 002 VGG-10 on {dataset.name}, lr {args.lr:g}: vanilla vs BN")
print("\n" + markdown_table(["network", "test acc %", "test loss", "epochs", "diverged",
                             "s/epoch"], rows))
write_json(os.path.join(args.out, "results.json"),
           {"data": dataset.summary(), "args": vars(args), "runs": results,
            "load_average": os.getloadavg()})
print(f"wrote {args.out}/")
