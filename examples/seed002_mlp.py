"""Seed 002 (Schilling 2016, "The effect of batch normalization on deep CNNs"): its MLP, vanilla
and batch-normalised, side by side on Fashion-MNIST.

The MLP of table 6.2 (S2:1183-1191): flatten -> 3 x (linear 100 [-> BN] -> ReLU) -> linear 10,
Kaiming init. Training as in S2:1175-1229: global standardisation, 10 % validation split,
Nesterov SGD (mu 0.9), lr 0.01, batch size 64, lr x0.5 after 5 epochs without a gain in
validation accuracy, early stop after 20 (the best epoch's weights are kept). Reproduces the
ReLU row of table B.1 (vanilla vs BN test accuracy), with --lr 0.1 the "high learning rate"
row (the vanilla net diverges, the BN one trains; S2:1322), and the curves of its figures.

    python examples/seed002_mlp.py                       # 30 epochs, full set if installed
    python examples/seed002_mlp.py --lr 0.1 --out runs/seed002_mlp_lr0.1
    python examples/seed002_mlp.py --epochs 1 --limit 1000   # a smoke run

Writes <out>/{vanilla,bn}/{history.json,history.png,model.npz}, <out>/comparison.png and
<out>/results.json.
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
add_example_arguments(parser, epochs=30, batch_size=64, lr=0.01, out="runs/seed002_mlp")
args = parser.parse_args()
if args.threads:
    set_threads(args.threads)

# -- data: load, hold out 10 % for validation, standardise with training statistics ----------
dataset = load_dataset(args.data)       # the full Fashion-MNIST, or the embedded subset
print(dataset.summary())
# prepare_data: stratified --limit subsets, 10 % validation split, global standardisation
data = prepare_data(dataset=dataset, limit=args.limit, test_limit=args.test_limit,
                    val_split=0.1, seed=args.seed,
                    test_seed=0)   # the same test images whatever --seed
(x_train, y_train), (x_val, y_val), (x_test, y_test) = data.train, data.val, data.test
in_features = int(np.prod(x_train.shape[1:]))
print(f"{len(x_train)} train / {len(x_val)} validation / {len(x_test)} test images")

# -- the two networks, trained the same way from the same seed --------------------------------
loss = losses.SoftmaxCrossEntropy()
histories, rows, results = {}, [], {}
for name, batch_norm in (("vanilla", False), ("bn", True)):
    print(f"\n== {name} MLP 3x100 ==")
    model = models.mlp(in_features, dataset.num_classes, hidden=(100, 100, 100),
                       batch_norm=batch_norm, activation="relu",
                       rng=np.random.default_rng(args.seed))
    model.summary((args.batch_size,) + x_train.shape[1:])
    optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True)
    callbacks = [
        # x0.5 once 5 epochs in a row bring no gain (torch counting: drop when bad > patience)
        optim.ReduceLROnPlateau(optimizer, factor=0.5, patience=4, monitor="val_accuracy"),
        nnkern.EarlyStopping(monitor="val_accuracy", patience=20, restore_best_weights=True),
    ]
    start = time.perf_counter()
    history = nnkern.fit(model, loss, optimizer, train=(x_train, y_train), val=(x_val, y_val),
                         epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                         callbacks=callbacks, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    test = nnkern.evaluate(model, x_test, y_test, loss=loss)   # the best epoch's weights
    print(f"{name}: test accuracy {test['accuracy']:.4f}, loss {test['loss']:.4f}, "
          f"{history.epochs_completed} epochs in {seconds:.1f} s")

    save_training(os.path.join(args.out, name), history, model, title=f"seed 002 MLP, {name}")
    histories[name] = history
    best_val = max(history["val_accuracy"]) if history["val_accuracy"] else None
    results[name] = {"test": test, "best_val_accuracy": best_val,
                     "epochs": history.epochs_completed, "diverged": history.diverged,
                     "stopped_reason": history.stopped_reason, "seconds": seconds,
                     "seconds_per_epoch": float(np.mean(history["time"] or [np.nan]))}
    rows.append([name, f"{100 * test['accuracy']:.2f}", f"{test['loss']:.4f}",
                 history.epochs_completed, "yes" if history.diverged else "no",
                 f"{results[name]['seconds_per_epoch']:.2f}"])

# -- side by side ----------------------------------------------------------------------------
compare_histories(histories, os.path.join(args.out, "comparison.png"),
                  title=f"seed 002 MLP 3x100 on {dataset.name}, lr {args.lr:g}: vanilla vs BN")
table = markdown_table(["network", "test acc %", "test loss", "epochs", "diverged",
                        "s/epoch"], rows)
print("\n" + table)
write_json(os.path.join(args.out, "results.json"),
           {"data": dataset.summary(), "args": vars(args), "runs": results,
            "load_average": os.getloadavg()})
print(f"wrote {args.out}/")
