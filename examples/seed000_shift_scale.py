"""Seed 000 (Bui 2018): learnable shifting and scaling layers vs plain and batch norm, on
Fashion-MNIST, with the all-conv net (table 6.2) or the 24-layer MLP (table 6.3).

Variants (table 6.1, S0:1085-1101): plain; bn (batch norm after each conv/dense); shift
(y = x + b) and scale (y = w * x) layers after the input and after every activation,
element-wise (sh, sc, sh_sc), channel-wise (csh, csc, csh_csc) or layer-wise (lsh, lsc,
lsh_lsc). Every variant trains with the same learning rate (bn may get its own, --bn-lr, as
the seed gives it a higher one) and the same seed sequence: run r of every variant starts
from seed --seed + r, so all variants share their initial conv/dense weights and the order of
minibatches (S0:1203). SGD with momentum 0.9, batch size 32, constant learning rate, no
weight decay (S0:1183-1205).

The figure has the seed's two panels (figs 7.1-7.14): the exponential moving average
(coefficient 0.99) of the training error (cross-entropy) after each step, and the validation
error (cross-entropy) after each epoch, the mean over the runs of each variant.

    python examples/seed000_shift_scale.py --model allconv --width 0.25 --epochs 5 \\
        --variants plain,lsh,lsc,lsh_lsc
    python examples/seed000_shift_scale.py --model mlp24 --width 0.25 --runs 2
    python examples/seed000_shift_scale.py --epochs 1 --limit 256 --width 0.1 --variants plain,lsh

Writes <out>/<variant>/run<r>/history.json, <out>/variants.png, <out>/table.md and
<out>/results.json.
"""

import argparse
import os
import time

import numpy as np

import nnkern
from nnkern import losses, models, optim
from nnkern.experiments import add_example_arguments, load_dataset, prepare_data, set_threads
from nnkern.experiments.options import positive_float, positive_int
from nnkern.experiments.report import (
    markdown_table,
    mean_curve,
    save_training,
    variants_figure,
    write_json,
)

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
add_example_arguments(parser, epochs=10, batch_size=32, lr=None, out="runs/seed000_shift_scale",
                      lr_help="learning rate of every variant (default: 0.01 for allconv, "
                              "0.002 for mlp24)")
parser.add_argument("--model", choices=("allconv", "mlp24"), default="allconv")
parser.add_argument("--variants", default=",".join(models.VARIANTS),
                    help=f"comma-separated variants (default all: {','.join(models.VARIANTS)})")
parser.add_argument("--runs", type=positive_int, default=1,
                    help="runs per variant, seeds --seed, --seed + 1, ... (default 1)")
parser.add_argument("--bn-lr", type=positive_float, default=None,
                    help="learning rate of the bn variant (default: --lr)")
parser.add_argument("--width", type=positive_float, default=1.0,
                    help="multiplier of the hidden widths (default 1: the seed's net)")
parser.add_argument("--dropout", action="store_true", help="the nets' dropout versions")
args = parser.parse_args()
variants = [v.strip() for v in args.variants.split(",") if v.strip()]
if not variants or any(v not in models.VARIANTS for v in variants):
    parser.error(f"--variants: choose from {', '.join(models.VARIANTS)}; got {args.variants!r}")
lr = args.lr or {"allconv": 0.01, "mlp24": 0.002}[args.model]
if args.threads:
    set_threads(args.threads)

# -- data --------------------------------------------------------------------------------------
dataset = load_dataset(args.data)
print(dataset.summary())
# prepare_data: stratified --limit subsets, pad, 10 % validation split, global standardisation
data = prepare_data(dataset=dataset, limit=args.limit, test_limit=args.test_limit,
                    pad=32 if args.model == "allconv" else None,
                    val_split=0.1, seed=args.seed,
                    test_seed=0)   # the same test images whatever --seed
(x_train, y_train), (x_val, y_val), (x_test, y_test) = data.train, data.val, data.test
shape = x_train.shape[1:]
print(f"{len(x_train)} train / {len(x_val)} validation / {len(x_test)} test images of "
      f"{'x'.join(map(str, shape))}")


def build(variant, seed):
    rng = np.random.default_rng(seed)
    if args.model == "allconv":
        return models.allconv(shape[0], dataset.num_classes, image_size=shape[1],
                              variant=variant, dropout=args.dropout, width=args.width, rng=rng)
    return models.mlp24(int(np.prod(shape)), dataset.num_classes, variant=variant,
                        dropout=args.dropout, width=args.width, rng=rng)


# -- every variant, the same seed sequence -----------------------------------------------------
loss = losses.SoftmaxCrossEntropy()
runs, results, rows = {}, {}, []
for variant in variants:
    variant_lr = args.bn_lr if variant == "bn" and args.bn_lr else lr
    runs[variant], tests = [], []
    for r in range(args.runs):
        seed = args.seed + r
        print(f"\n== {args.model} {variant}, run {r + 1}/{args.runs} (seed {seed}, lr "
              f"{variant_lr:g}) ==", flush=True)
        model = build(variant, seed)
        optimizer = optim.SGD(model.parameters(), lr=variant_lr, momentum=0.9)
        start = time.perf_counter()
        history = nnkern.fit(model, loss, optimizer, train=(x_train, y_train),
                             val=(x_val, y_val), epochs=args.epochs,
                             batch_size=args.batch_size, seed=seed,
                             progress=not args.no_progress)
        seconds = time.perf_counter() - start
        test = nnkern.evaluate(model, x_test, y_test, loss=loss)
        print(f"{variant} run {r + 1}: test accuracy {test['accuracy']:.4f}, "
              f"{seconds:.1f} s" + (" (diverged)" if history.diverged else ""))
        save_training(os.path.join(args.out, variant, f"run{r}"), history)
        runs[variant].append(history)
        tests.append(test)
        results.setdefault(variant, []).append(
            {"seed": seed, "lr": variant_lr, "test": test, "diverged": history.diverged,
             "final_ema_loss": history.steps["ema_loss"][-1],
             "val_loss": history["val_loss"], "val_accuracy": history["val_accuracy"],
             "seconds": seconds, "seconds_per_epoch": float(np.mean(history["time"] or [np.nan]))})
    ema = mean_curve([h.steps["ema_loss"] for h in runs[variant]])
    val = mean_curve([h["val_loss"] for h in runs[variant]])
    rows.append([variant, f"{variant_lr:g}",
                 f"{ema[-1]:.4f}" if len(ema) else "–",
                 f"{val[-1]:.4f}" if len(val) else "–",
                 f"{val.min():.4f}" if len(val) else "–",
                 f"{100 * np.mean([t['accuracy'] for t in tests]):.2f}",
                 sum(h.diverged for h in runs[variant])])
    write_json(os.path.join(args.out, "results.json"),
               {"data": dataset.summary(), "args": vars(args), "runs": results})

# -- the seed's figure and a summary table ----------------------------------------------------
title = (f"seed 000 {args.model} (width {args.width:g}) on {dataset.name}: {args.runs} run(s) "
         f"per variant, lr {lr:g}, batch {args.batch_size}")
variants_figure(runs, os.path.join(args.out, "variants.png"), title=title)
table = markdown_table(["variant", "lr", "final train CE (EMA)", "final val CE", "best val CE",
                        "test acc %", "diverged runs"], rows)
print("\n" + table)
with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as f:
    f.write(f"{title}\n\n{table}\n")
print(f"wrote {args.out}/")
