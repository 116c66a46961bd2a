"""``python -m nnkern train``: train one of the seeds' models and report its test accuracy."""

import argparse
import os
import sys
import time

from nnkern.experiments import options as opt
from nnkern.experiments.recipes import (
    DEFAULT_LR,
    INIT_SCALES,
    MODEL_HELP,
    MODELS,
    OPTIMIZERS,
    SCHEDULES,
    RunConfig,
    needs_padding,
)

DESCRIPTION = """Train one of the seeds' models on an image classification set and report its
test accuracy. The default is seed 002's MLP (3 x 100 units) with batch normalisation on
Fashion-MNIST, trained as seed 002 does: Nesterov SGD (momentum 0.9, lr 0.01), batch size 64,
lr x0.5 after 5 epochs without a gain in validation accuracy, early stop after 20, 10 %
validation split, global standardisation fitted on the training images. The full
Fashion-MNIST is read from $NNKERN_DATA or /usr/share/datasets/fashion-mnist (Debian package
dataset-fashion-mnist); without it the 6,000/1,000-image subset shipped with nnkern is used
(and the output says so)."""

EPILOG = """models:
""" + "\n".join(f"  {name:<8} {text}" for name, text in MODEL_HELP.items()) + """

examples:
  python -m nnkern train                                  # MLP 3x100 + BN, 10 epochs
  python -m nnkern train --no-bn --lr 0.1                 # seed 002: vanilla diverges at 0.1
  python -m nnkern train --model cnn --epochs 15
  python -m nnkern train --model cnn4 --epochs 15 --weight-decay 5e-4
  python -m nnkern train --model vgg --bn --epochs 10
  python -m nnkern train --model allconv --variant lsh_lsc --width 0.25 --optimizer momentum \\
      --schedule none --batch-size 32
  python -m nnkern train --limit 2000 --epochs 2           # a quick smoke run

Outputs go to --out (default runs/<model>-<timestamp>): history.json (per-step and per-epoch
curves), history.png (the plots), model.npz (nnkern.load), result.json (options, test
metrics, timings)."""


def add_arguments(parser):
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    g = parser.add_argument_group("model")
    g.add_argument("--model", choices=MODELS, default="mlp", help="architecture (default mlp)")
    bn = g.add_mutually_exclusive_group()
    bn.add_argument("--bn", dest="bn", action="store_true", default=None,
                    help="batch normalisation between each linear/conv and its activation "
                         "(default for mlp, cnn, vgg)")
    bn.add_argument("--no-bn", dest="bn", action="store_false",
                    help="the vanilla network without batch normalisation")
    g.add_argument("--activation", default="relu",
                   choices=("relu", "sigmoid", "tanh", "elu", "selu", "leaky_relu"),
                   help="hidden activation of mlp/cnn/vgg (default relu)")
    g.add_argument("--variant", default=None,
                   help="seed 000's variant of allconv/mlp24: plain, bn, sh, sc, sh_sc, csh, "
                        "csc, csh_csc, lsh, lsc, lsh_lsc (default plain)")
    g.add_argument("--dropout", type=opt.probability, default=None,
                   help="dropout probability (default: mlp/vgg 0, cnn 0.25, cnn4 0.5; "
                        "allconv/mlp24: "
                        "0.5 selects the seed's dropout version)")
    g.add_argument("--init", default=None,
                   help=f"weight init of mlp/cnn/vgg: {'/'.join(INIT_SCALES)} (seed 002's "
                        "N(0,1) / N(0,1e-4^2)) or an nnkern.init name such as he_normal "
                        "(default: Kaiming for ReLU/ELU, Xavier for sigmoid/tanh)")
    g.add_argument("--width", type=opt.positive_float, default=1.0,
                   help="hidden width multiplier of allconv/mlp24 (default 1 = the seed's)")
    g = parser.add_argument_group("training")
    g.add_argument("--epochs", type=opt.positive_int, default=10,
                   help="maximum number of epochs (default 10; seed 002: 100)")
    g.add_argument("--batch-size", type=opt.positive_int, default=64,
                   help="minibatch size (default 64, seed 002)")
    g.add_argument("--lr", type=opt.positive_float, default=None,
                   help="initial learning rate (default 0.01 for the SGD family, "
                        f"{DEFAULT_LR['adam']:g} for adam/adamw/rmsprop, 1 for adadelta)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="nesterov",
                   help="sgd (plain), momentum (classical), nesterov (default, seed 002), "
                        "adam, adamw, rmsprop, adagrad, adadelta")
    g.add_argument("--momentum", type=opt.non_negative_float, default=0.9,
                   help="momentum of --optimizer momentum/nesterov (default 0.9)")
    g.add_argument("--weight-decay", type=opt.non_negative_float, default=0.0,
                   help="L2 penalty (default 0; seed 002's study: 5e-4)")
    g.add_argument("--schedule", choices=SCHEDULES, default="plateau",
                   help="plateau (default, seed 002: lr x0.5 after --plateau-patience epochs "
                        "without a gain in validation accuracy), step (x--gamma every "
                        "--step-size epochs) or none")
    g.add_argument("--plateau-patience", type=opt.positive_int, default=5,
                   help="epochs without gain before the plateau schedule halves the lr "
                        "(default 5)")
    g.add_argument("--step-size", type=opt.positive_int, default=10,
                   help="epochs between two drops of the step schedule (default 10)")
    g.add_argument("--gamma", type=opt.positive_float, default=0.1,
                   help="factor of the step schedule (default 0.1)")
    g.add_argument("--early-stop", type=opt.non_negative_int, default=20, metavar="N",
                   help="stop after N epochs without a gain in validation accuracy and keep "
                        "the best weights (default 20, seed 002; 0: off)")
    g.add_argument("--seed", type=opt.non_negative_int, default=0,
                   help="seed of init, validation split and shuffling (default 0)")
    g = parser.add_argument_group("data")
    g.add_argument("--data", default="fashion-mnist", metavar="NAME|PATH",
                   help="fashion-mnist (default), fashion-mnist-small (the embedded subset), "
                        "mnist, cifar10, cifar100, svhn, a directory, or NAME=PATH")
    g.add_argument("--val-split", type=opt.fraction, default=0.1,
                   help="fraction of the training images held out for validation (default "
                        "0.1, seed 002; 0: none)")
    g.add_argument("--limit", type=opt.positive_int, default=None, metavar="N",
                   help="use only N training images (class-stratified), for quick runs")
    g.add_argument("--test-limit", type=opt.positive_int, default=None, metavar="N",
                   help="use only N test images (class-stratified), for quick runs")
    g = parser.add_argument_group("output and machine")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default runs/<model>-<timestamp>)")
    g.add_argument("--checkpoint", action="store_true",
                   help="also save DIR/checkpoint.npz after every epoch (for --resume)")
    g.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue the run saved in CHECKPOINT (give the same options)")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where to train (default cpu)")
    g.add_argument("--threads", type=opt.positive_int, default=None, metavar="N",
                   help="threads for the kernels and BLAS (default: all cores)")
    g.add_argument("--no-progress", action="store_true",
                   help="print no per-epoch progress lines")


def config_from_args(args):
    return RunConfig(model=args.model, bn=args.bn, activation=args.activation,
                     variant=args.variant, dropout=args.dropout, init=args.init,
                     width=args.width, epochs=args.epochs, batch_size=args.batch_size,
                     lr=args.lr, optimizer=args.optimizer, momentum=args.momentum,
                     weight_decay=args.weight_decay, schedule=args.schedule,
                     plateau_patience=args.plateau_patience, step_size=args.step_size,
                     gamma=args.gamma, early_stop=args.early_stop, seed=args.seed,
                     device=args.device, progress=False if args.no_progress else None)


def _error(message):
    print(f"python -m nnkern train: error: {message}", file=sys.stderr)
    return 2


def run(args):
    start = time.perf_counter()
    # imported here so that --help stays fast
    from nnkern.backend import cuda_available
    from nnkern.experiments.data import prepare_data
    from nnkern.experiments.recipes import check_model_options, set_threads
    from nnkern.experiments.recipes import run as train_run

    config = config_from_args(args)
    if args.resume is not None and not os.path.isfile(args.resume):
        return _error(f"--resume: no such checkpoint file {args.resume!r}")
    if args.device == "cuda" and not cuda_available():
        return _error("--device cuda, but no CUDA device is available "
                      "(nnkern.cuda_available() is False); use --device cpu")
    try:
        if args.threads is not None:
            set_threads(args.threads)
        # check the model options before loading data (fast failure on a bad combination)
        check_model_options(config.model, bn=config.bn, activation=config.activation,
                            variant=config.variant, dropout=config.dropout, init=config.init,
                            width=config.width)
        data = prepare_data(args.data, limit=args.limit, test_limit=args.test_limit,
                            pad=needs_padding(args.model), val_split=args.val_split,
                            seed=args.seed)
    except (ValueError, FileNotFoundError) as e:
        return _error(str(e))
    warning = data.warning()
    if warning:
        banner = "!" * 78
        print(f"{banner}\n{warning}\n{banner}", flush=True)
    print(data.describe(), flush=True)
    out = args.out or opt.default_out(args.model)
    try:
        result = train_run(config, data, out=out, checkpoint=args.checkpoint,
                           resume=args.resume)
    except (ValueError, FileNotFoundError) as e:
        return _error(str(e))
    h = result.history
    if h.stopped_reason:
        print(f"stopped: {h.stopped_reason}")
    best = h.best("val_accuracy") if h["val_accuracy"] and not all(
        v != v for v in h["val_accuracy"]) else None
    fastest = f", fastest {min(h['time']):.2f} s" if h["time"] else ""
    print(f"epochs: {h.epochs_completed}, mean {result.epoch_seconds:.2f} s per epoch{fastest} "
          "(training steps only)")
    if best is not None:
        print(f"best validation accuracy: {best.value:.4f} (epoch {best.epoch + 1})")
    source = "EMBEDDED SUBSET" if data.embedded else data.name
    kept = " (weights of the best validation epoch)" if args.early_stop and data.val else ""
    print(f"test accuracy: {result.test['accuracy']:.4f}  test loss: {result.test['loss']:.4f}"
          f"  ({len(data.test[0])} test images, {source}){kept}")
    print(f"total wall time: {time.perf_counter() - start:.1f} s (load average "
          f"{os.getloadavg()[0]:.2f})")
    print(f"wrote {', '.join(result.files.values())}")
    return 0
