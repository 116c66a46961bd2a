"""Recipes: models, optimizers, schedules and whole training runs built from plain options.

    config = RunConfig(model="mlp", bn=True, epochs=10)
    data = prepare_data("fashion-mnist", pad=needs_padding(config.model), seed=config.seed)
    result = run(config, data, out="runs/mlp")
    print(result.test["accuracy"])

Defaults are seed 002's experimental setup (S2:1175-1229): Nesterov SGD with mu = 0.9, learning
rate 0.01, batch size 64, no weight decay, learning rate x0.5 after 5 epochs without a gain in
validation accuracy, early stop after 20 such epochs (keeping the best weights), 10 %
validation split, Kaiming init for ReLU/ELU and Xavier for sigmoid/tanh.
"""

import functools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

import nnkern
from nnkern import init as initializers
from nnkern import losses, models, optim
from nnkern.experiments.report import save_training

MODELS = ("mlp", "cnn", "cnn4", "vgg", "allconv", "mlp24")
MODEL_HELP = {
    "mlp": "seed 002's MLP: 3 x 100 units (table 6.2)",
    "cnn": "2-conv CNN: conv32-pool-conv64-pool-dense128 (models.small_cnn, not from a seed)",
    "cnn4": "4-conv CNN: 2 x conv32-pool-2 x conv64-pool-dense256, dropout 0.5 (not from a "
            "seed)",
    "vgg": "seed 002's VGG-10: 10 conv 3x3 + 2 dense 512 (table 6.3), on 32x32 input",
    "allconv": "seed 000's all-convolutional net (table 6.2), on 32x32 input",
    "mlp24": "seed 000's 24-layer MLP (table 6.3)",
}
#: models that take 32x32 input (28x28 images are zero-padded)
PADDED = {"vgg": 32, "allconv": 32}
SEED000 = ("allconv", "mlp24")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "adadelta")
DEFAULT_LR = {"sgd": 0.01, "momentum": 0.01, "nesterov": 0.01, "adam": 1e-3, "adamw": 1e-3,
              "rmsprop": 1e-3, "adagrad": 0.01, "adadelta": 1.0}
SCHEDULES = ("plateau", "step", "none")
#: seed 002's init-scale study: "high" N(0, 1), "low" N(0, 1e-4^2) (S2 tables B.1/B.2)
INIT_SCALES = {"high": 1.0, "low": 1e-4}


def needs_padding(model):
    """The side the model's input images are padded to (None: used as they are)."""
    return PADDED.get(model)


# -- models ----------------------------------------------------------------------------------------
def weight_init(init):
    """An initializer for ``models``: None (the seed's rule), "high"/"low" (seed 002's N(0, 1)
    and N(0, 1e-4^2)) or an ``nnkern.init`` name such as "he_normal", "glorot_uniform"."""
    if init is None:
        return None
    if init in INIT_SCALES:
        return functools.partial(initializers.normal, std=INIT_SCALES[init])
    if init in initializers.INITIALIZERS:
        return init
    raise ValueError(f"unknown init {init!r}; choose from {sorted(INIT_SCALES)} or "
                     f"{sorted(initializers.INITIALIZERS)}")


def check_model_options(name, *, bn=None, activation="relu", variant=None, dropout=None,
                        init=None, width=1.0):
    """Validate a model's options without building it; returns ``(bn, variant)`` resolved
    (see :func:`build_model`). Raises ValueError naming the option at fault."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {MODELS}")
    if name in SEED000:
        if activation != "relu":
            raise ValueError(f"--activation: seed 000's {name} uses ReLU only, got {activation!r}")
        if init is not None:
            raise ValueError(f"--init: seed 000's {name} uses its own init (He, Glorot for the "
                             "last layer); leave --init out")
        if variant is None:
            variant = "bn" if bn else "plain"
        elif bn is not None and bn != (variant == "bn"):
            raise ValueError(f"--bn/--no-bn contradicts --variant {variant!r}; for {name} use "
                             "--variant bn for batch norm")
        if variant not in models.VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose from {models.VARIANTS}")
        if dropout not in (None, 0, 0.0, 0.5):
            raise ValueError(f"--dropout: seed 000's dropout version of {name} uses p = 0.5; "
                             f"give 0.5 or 0, got {dropout!r}")
        if not width > 0:
            raise ValueError(f"--width must be > 0, got {width!r}")
        return variant == "bn", variant
    if variant is not None:
        raise ValueError(f"--variant applies to seed 000's allconv and mlp24, not to {name}; "
                         "use --bn/--no-bn")
    if width != 1.0:
        raise ValueError(f"--width applies to allconv and mlp24, not to {name}")
    models.activation_layer(activation)  # validates the name
    weight_init(init)
    return (True if bn is None else bool(bn)), None


def build_model(name, sample_shape, num_classes, *, bn=None, activation="relu", variant=None,
                dropout=None, init=None, width=1.0, rng=None):
    """One of ``MODELS`` for inputs of ``sample_shape`` (C, H, W).

    bn: None (the model's default: BN on for mlp/cnn/vgg; for allconv/mlp24 the ``variant``
    decides), True or False. variant: seed 000's variants for allconv/mlp24 (``models.VARIANTS``;
    default "plain", or "bn" with ``bn=True``). dropout: None (the model's default), or the
    drop probability (allconv/mlp24: 0.5 turns on the seed's dropout version). init: see
    :func:`weight_init` (mlp/cnn/vgg only). width: hidden width multiplier of allconv/mlp24.
    """
    bn, variant = check_model_options(name, bn=bn, activation=activation, variant=variant,
                                      dropout=dropout, init=init, width=width)
    c, h, w = sample_shape
    if name == "allconv":
        return models.allconv(c, num_classes, h, variant=variant, dropout=bool(dropout),
                              rng=rng, width=width)
    if name == "mlp24":
        return models.mlp24(c * h * w, num_classes, variant=variant, dropout=bool(dropout),
                            rng=rng, width=width)
    kwargs = dict(batch_norm=bn, activation=activation, weight_init=weight_init(init), rng=rng)
    if dropout is not None:
        kwargs["dropout"] = float(dropout)
    if name == "mlp":
        return models.mlp(c * h * w, num_classes, **kwargs)
    if name in ("cnn", "cnn4"):
        if h != w:
            raise ValueError(f"the {name} needs square images, got {h}x{w}")
        if name == "cnn4":
            kwargs = dict(dict(dropout=0.5), **kwargs)
            return models.small_cnn(c, num_classes, image_size=h, convs_per_block=2, hidden=256,
                                    **kwargs)
        return models.small_cnn(c, num_classes, image_size=h, **kwargs)
    if (h, w) != (32, 32):
        raise ValueError(f"vgg needs 32x32 input (5 poolings to 1x1), got {h}x{w}")
    return models.vgg10(c, num_classes, **kwargs)


# -- optimizers and schedules ----------------------------------------------------------------------
def build_optimizer(name, params, lr=None, momentum=0.9, weight_decay=0.0):
    """``OPTIMIZERS``: "sgd" (plain), "momentum" (classical, ``momentum``), "nesterov"
    (seed 002), "adam", "adamw", "rmsprop", "adagrad", "adadelta"; lr None takes
    ``DEFAULT_LR[name]``."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")
    lr = DEFAULT_LR[name] if lr is None else lr
    if name in ("sgd", "momentum", "nesterov"):
        mu = 0.0 if name == "sgd" else momentum
        if name != "sgd" and not mu > 0:
            raise ValueError(f"--optimizer {name} needs --momentum > 0, got {momentum}")
        return optim.SGD(params, lr=lr, momentum=mu, nesterov=name == "nesterov",
                         weight_decay=weight_decay)
    cls = {"adam": optim.Adam, "adamw": optim.AdamW, "rmsprop": optim.RMSProp,
           "adagrad": optim.AdaGrad, "adadelta": optim.Adadelta}[name]
    if name == "adamw":
        return cls(params, lr=lr, weight_decay=weight_decay or 0.01)
    return cls(params, lr=lr, weight_decay=weight_decay)


def build_callbacks(schedule, optimizer, *, has_validation, early_stop=20, plateau_patience=5,
                    step_size=10, gamma=0.1):
    """The schedule and early-stopping callbacks, plus notes on what was chosen.

    plateau: seed 002, x0.5 once ``plateau_patience`` epochs in a row brought no gain in
    validation accuracy (ReduceLROnPlateau with torch's counting, patience - 1). step: x``gamma``
    every ``step_size`` epochs. early_stop: stop after that many epochs without a gain in
    validation accuracy and restore the best weights (0: off). Without validation data the
    plateau schedule watches the training loss and early stopping is off.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {SCHEDULES}")
    callbacks, notes = [], []
    if schedule == "plateau":
        if has_validation:
            callbacks.append(optim.ReduceLROnPlateau(optimizer, factor=0.5,
                                                     patience=plateau_patience - 1,
                                                     monitor="val_accuracy", mode="max"))
            notes.append(f"schedule: lr x0.5 after {plateau_patience} epochs without a gain in "
                         "validation accuracy")
        else:
            callbacks.append(optim.ReduceLROnPlateau(optimizer, factor=0.5,
                                                     patience=plateau_patience - 1,
                                                     monitor="loss", mode="min"))
            notes.append(f"schedule: no validation data, so lr x0.5 after {plateau_patience} "
                         "epochs without a drop of the training loss")
    elif schedule == "step":
        callbacks.append(optim.StepLR(optimizer, step_size=step_size, gamma=gamma))
        notes.append(f"schedule: lr x{gamma:g} every {step_size} epochs")
    else:
        notes.append("schedule: constant learning rate")
    if early_stop:
        if has_validation:
            callbacks.append(nnkern.EarlyStopping(monitor="val_accuracy", patience=early_stop,
                                                  restore_best_weights=True))
            notes.append(f"early stopping after {early_stop} epochs without a gain in "
                         "validation accuracy; the best epoch's weights are kept")
        else:
            notes.append("early stopping: off (no validation data)")
    return callbacks, notes


# -- threads -------------------------------------------------------------------------------------
_thread_limits = None


def set_threads(n):
    """Use ``n`` threads in nnkern's Numba kernels and in the BLAS library."""
    global _thread_limits
    import numba
    from threadpoolctl import threadpool_limits

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be an int >= 1, got {n!r}")
    if n > numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"--threads {n}: at most {numba.config.NUMBA_NUM_THREADS} on this "
                         "machine (NUMBA_NUM_THREADS)")
    numba.set_num_threads(n)
    _thread_limits = threadpool_limits(n, user_api="blas")


# -- a whole run ---------------------------------------------------------------------------------
@dataclass
class RunConfig:
    """Every option of one training run (the ``train`` command's, minus data and output)."""

    model: str = "mlp"
    bn: bool | None = None
    activation: str = "relu"
    variant: str | None = None
    dropout: float | None = None
    init: str | None = None
    width: float = 1.0
    epochs: int = 10
    batch_size: int = 64
    lr: float | None = None
    optimizer: str = "nesterov"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "plateau"
    plateau_patience: int = 5
    step_size: int = 10
    gamma: float = 0.1
    early_stop: int = 20
    seed: int = 0
    device: str = "cpu"
    progress: object = None

    def resolved_lr(self):
        return DEFAULT_LR.get(self.optimizer, 0.01) if self.lr is None else self.lr


@dataclass
class RunResult:
    history: nnkern.History
    test: dict
    model: object
    seconds: float
    config: RunConfig
    files: dict = field(default_factory=dict)

    @property
    def epoch_seconds(self):
        """Mean training seconds per epoch (validation excluded), or nan."""
        times = self.history["time"]
        return float(np.mean(times)) if times else math.nan


class SaveEachEpoch(nnkern.Callback):
    """Write history.json, history.png and model.npz into ``out`` after every epoch, so that
    a long run that is stopped still leaves its curves and latest weights behind."""

    def __init__(self, out, title):
        self.out, self.title = out, title

    def on_epoch_end(self, epoch, logs):
        save_training(self.out, self.trainer.history, self.trainer.model,
                      title=f"{self.title} (after epoch {epoch + 1}, running)")


def run(config, data, out=None, log=print, summary=True, checkpoint=False, resume=None):
    """Build the model and optimizer of ``config``, train on ``data`` (:class:`Data`),
    evaluate on its test split, and (with ``out``) write history.json, history.png,
    model.npz and result.json there (the first three also after every epoch). Returns a
    :class:`RunResult`.

    checkpoint: also save ``out``/checkpoint.npz after every epoch (``nnkern.Checkpoint``);
    resume: the path of such a checkpoint to continue from (same config and data)."""
    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    model = build_model(config.model, data.sample_shape, data.num_classes, bn=config.bn,
                        activation=config.activation, variant=config.variant,
                        dropout=config.dropout, init=config.init, width=config.width, rng=rng)
    optimizer = build_optimizer(config.optimizer, model.parameters(), lr=config.lr,
                                momentum=config.momentum, weight_decay=config.weight_decay)
    callbacks, notes = build_callbacks(config.schedule, optimizer,
                                       has_validation=data.val is not None,
                                       early_stop=config.early_stop,
                                       plateau_patience=config.plateau_patience,
                                       step_size=config.step_size, gamma=config.gamma)
    if out is not None:
        callbacks.append(SaveEachEpoch(out, f"{config.model} on {data.name}"))
        if checkpoint:
            callbacks.append(nnkern.Checkpoint(os.path.join(out, "checkpoint.npz")))
            notes.append(f"checkpoint after every epoch: {os.path.join(out, 'checkpoint.npz')}")
    if resume is not None:
        notes.append(f"resuming from {resume}")
    if summary:
        model.summary((config.batch_size,) + data.sample_shape, print_fn=log)
    mu = f", momentum {config.momentum:g}" if config.optimizer in ("momentum", "nesterov") else ""
    log(f"optimizer: {config.optimizer}, lr {optimizer.lr:g}{mu}, weight decay "
        f"{config.weight_decay:g}; batch size {config.batch_size}; up to {config.epochs} "
        f"epochs; seed {config.seed}")
    for note in notes:
        log(note)
    history = nnkern.fit(model, losses.SoftmaxCrossEntropy(), optimizer, train=data.train,
                         val=data.val, epochs=config.epochs, batch_size=config.batch_size,
                         seed=config.seed, callbacks=callbacks, device=config.device,
                         progress=config.progress, resume=resume)
    test = nnkern.evaluate(model, *data.test, loss=losses.SoftmaxCrossEntropy())
    result = RunResult(history=history, test=test, model=model,
                       seconds=time.perf_counter() - start, config=config)
    if out is not None:
        result.files = save_run(result, data, out)
    return result


def save_run(result, data, out):
    """Write a run's history (JSON and PNG), model and result summary into ``out``."""
    history, config = result.history, result.config
    title = f"{config.model} on {data.name}: test accuracy {result.test['accuracy']:.4f}"
    files = save_training(out, history, result.model, title=title)
    files["result.json"] = os.path.join(out, "result.json")
    summary = {
        "config": asdict(config) | {"progress": None},
        "data": {"name": data.name, "source": data.source, "embedded": data.embedded,
                 "train": len(data.train[0]), "val": 0 if data.val is None else len(data.val[0]),
                 "test": len(data.test[0]), "sample_shape": list(data.sample_shape)},
        "test": result.test,
        "best_val_accuracy": _best(history, "val_accuracy"),
        "epochs_completed": history.epochs_completed,
        "stopped_reason": history.stopped_reason,
        "diverged": history.diverged,
        "seconds_total": result.seconds,
        "seconds_per_epoch": result.epoch_seconds,
        "load_average": list(os.getloadavg()),
    }
    with open(files["result.json"], "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, default=_json_default)
    return files


def _best(history, metric):
    values = [v for v in history[metric] if not math.isnan(v)]
    return max(values) if values else None


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
