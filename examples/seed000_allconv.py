"""Seed 000 (Bui 2018, "Gradient-based learning in deep neural networks"): the
all-convolutional net of its table 6.2 on Fashion-MNIST, plain or with one of its variants.

The net (S0:1126-1153): nine convolutions 3x3 96, 3x3 96, 3x3/2 96, 3x3 192, 3x3 192,
3x3/2 192, 3x3 192 (no padding), 1x1 192, 1x1 10, each followed by ReLU, then a global average
over 6x6 as the classifier; He init, zero biases; with --dropout, spatial dropout 0.5 after the
two strided convolutions. The 28x28 images are zero-padded to 32x32 (the net's input size).
Training as in S0:1183-1205: standardised with training statistics, SGD with momentum 0.9,
batch size 32, constant learning rate (0.01 for plain and the shift/scale variants; the seed
gives batch norm a higher one, 0.02-0.08), no weight decay. The seed's curves are figs 7.1-7.8
(CIFAR-10; plots only). --width scales the 96/192 channels down for quick CPU runs (not in
the seed). Seed 000 reports "validation" error on the test split; here 10 % of the training
images are held out for validation and the test split is used once at the end.

    python examples/seed000_allconv.py --epochs 10                      # the seed's net
    python examples/seed000_allconv.py --width 0.25 --variant lsh_lsc --epochs 5
    python examples/seed000_allconv.py --variant bn --lr 0.04 --dropout

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
add_example_arguments(parser, epochs=10, batch_size=32, lr=0.01, out="runs/seed000_allconv")
parser.add_argument("--variant", choices=models.VARIANTS, default="plain",
                    help="plain, bn, or a shift/scale variant (default plain)")
parser.add_argument("--dropout", action="store_true",
                    help="the dropout version: spatial dropout 0.5 after the strided convs")
parser.add_argument("--width", type=positive_float, default=1.0,
                    help="multiplier of the 96/192 hidden channels (default 1: the seed's)")
args = parser.parse_args()
if args.threads:
    set_threads(args.threads)

# -- data: pad to 32x32, hold out 10 % for validation, standardise ----------------------------
dataset = load_dataset(args.data)
print(dataset.summary())
# prepare_data: stratified --limit subsets, pad, 10 % validation split, global standardisation
data = prepare_data(dataset=dataset, limit=args.limit, test_limit=args.test_limit, pad=32,
                    val_split=0.1, seed=args.seed,
                    test_seed=0)   # the same test images whatever --seed
(x_train, y_train), (x_val, y_val), (x_test, y_test) = data.train, data.val, data.test
print(f"{len(x_train)} train / {len(x_val)} validation / {len(x_test)} test images")

# -- model and training ------------------------------------------------------------------------
model = models.allconv(x_train.shape[1], dataset.num_classes, image_size=32,
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
print(f"all-conv {args.variant}{' + dropout' if args.dropout else ''}: test accuracy "
      f"{test['accuracy']:.4f}, loss {test['loss']:.4f}; {history.epochs_completed} epochs "
      f"in {seconds:.1f} s")

save_training(args.out, history, model,
              title=f"seed 000 all-conv ({args.variant}, width {args.width:g}) on {dataset.name}")
write_json(os.path.join(args.out, "result.json"),
           {"data": dataset.summary(), "args": vars(args), "test": test,
            "epochs": history.epochs_completed, "diverged": history.diverged,
            "seconds": seconds, "seconds_per_epoch": float(np.mean(history["time"] or [np.nan])),
            "load_average": os.getloadavg()})
print(f"wrote {args.out}/")
