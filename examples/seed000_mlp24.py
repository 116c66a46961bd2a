"""Seed 000 (Bui 2018): the 24-layer MLP of its table 6.3 on Fashion-MNIST, plain or with one
of its variants.

The net (S0:1155-1179): flatten -> dense 3000 -> dense 1000 -> 10 x dense 1000 -> dense 300 ->
10 x dense 300 -> dense 10, ReLU after every hidden layer; He init (Glorot for the last
layer), zero biases; with --dropout, dropout 0.5 after the 1st and the 12th layer. Training as
in S0:1183-1205: standardised with training statistics, SGD with momentum 0.9, batch size 32,
constant learning rate (the seed searched 0.0005-0.004 and kept 0.001-0.004), no weight
decay. The seed's curves are figs 7.9-7.11 (CIFAR-10; plots only). --width scales every hidden
layer down for quick CPU runs (not in the seed). Seed 000 reports "validation" error on the
test split; here 10 % of the training images are held out and the test split is used once.

    python examples/seed000_mlp24.py --epochs 10                 # the seed's net (16.6 M params)
    python examples/seed000_mlp24.py --width 0.1 --variant lsh --epochs 5

Writes <out>/history.json, history.png, model.npz and result.json.
"""

import argparse
import os
import time

import numpy as np

import nnkern
from nnkern import losses, models, optim
from nnkern.experiments import add_example_arguments, load_dataset, prepare_data, set_threads
from nnkern.experiments.options import positive_float
from nnkern.experiments.report import save_training, write_json

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
add_example_arguments(parser, epochs=10, batch_size=32, lr=0.002, out="runs/seed000_mlp24")
parser.add_argument("--variant", choices=models.VARIANTS, default="plain",
                    help="plain, bn, or a shift/scale variant (default plain)")
parser.add_argument("--dropout", action="store_true",
                    help="the dropout version: dropout 0.5 after layers 1 and 12")
parser.add_argument("--width", type=positive_float, default=1.0,
                    help="multiplier of every hidden width (default 1: the seed's)")
args = parser.parse_args()
if args.threads:
    set_threads(args.threads)

# -- data: hold out 10 % for validation, standardise with training statistics -----------------
dataset = load_dataset(args.data)
print(dataset.summary())
# prepare_data: stratified --limit subsets, 10 % validation split, global standardisation
data = prepare_data(dataset=dataset, limit=args.limit, test_limit=args.test_limit,
                    val_split=0.1, seed=args.seed,
                    test_seed=0)   # the same test images whatever --seed
(x_train, y_train), (x_val, y_val), (x_test, y_test) = data.train, data.val, data.test
print(f"{len(x_train)} train / {len(x_val)} validation / {len(x_test)} test images")

# -- model and training ------------------------------------------------------------------------
model = models.mlp24(int(np.prod(x_train.shape[1:])), dataset.num_classes,
                     variant=args.variant, dropout=args.dropout, width=args.width,
                     rng=np.random.default_rng(args.seed))
model.summary((args.batch_size,) + x_train.shape[1:])
optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)   # classical momentum
loss = losses.SoftmaxCrossEntropy()
start = time.perf_counter()
history = nnkern.fit(model, loss, optimizer, train=(x_train, y_train), val=(x_val, y_val),
                     epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                     progress=not args.no_progress)
seconds = time.perf_counter() - start
test = nnkern.evaluate(model, x_test, y_test, loss=loss)
print(f"24-layer MLP {args.variant}{' + dropout' if args.dropout else ''}: test accuracy "
      f"{test['accuracy']:.4f}, loss {test['loss']:.4f}; {history.epochs_completed} epochs "
      f"in {seconds:.1f} s")

save_training(args.out, history, model,
              title=f"seed 000 24-layer MLP ({args.variant}, width {args.width:g}) on "
                    f"{dataset.name}")
write_json(os.path.join(args.out, "result.json"),
           {"data": dataset.summary(), "args": vars(args), "test": test,
            "epochs": history.epochs_completed, "diverged": history.diverged,
            "seconds": seconds, "seconds_per_epoch": float(np.mean(history["time"] or [np.nan])),
            "load_average": os.getloadavg()})
print(f"wrote {args.out}/")
