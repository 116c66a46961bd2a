"""Reusable recipes for the seeds' experiments: the ``python -m nnkern train`` command
(:mod:`nnkern.experiments.cli`) and the scripts in ``examples/`` build on them.

* :func:`prepare_data` — load, subset, pad, hold out validation, standardise (seed 002's
  preprocessing); :class:`Data` keeps the arrays and says where they came from.
* :func:`build_model`, :func:`build_optimizer`, :func:`build_callbacks` — the seeds' models,
  optimizers, schedules and early stopping from plain options.
* :class:`RunConfig`, :func:`run` — one whole training run: returns the ``History``, the test
  metrics and the model, and writes them to a directory.
* :mod:`nnkern.experiments.options` — argument parsing shared by the command and the examples.
"""

from nnkern.experiments.data import Data, load_dataset, prepare_data
from nnkern.experiments.options import add_example_arguments, default_out
from nnkern.experiments.recipes import (
    DEFAULT_LR,
    MODELS,
    OPTIMIZERS,
    SCHEDULES,
    RunConfig,
    RunResult,
    build_callbacks,
    build_model,
    build_optimizer,
    check_model_options,
    needs_padding,
    run,
    save_run,
    set_threads,
    weight_init,
)

__all__ = ["Data", "load_dataset", "prepare_data", "add_example_arguments", "default_out",
           "DEFAULT_LR", "MODELS", "OPTIMIZERS", "SCHEDULES", "RunConfig", "RunResult",
           "build_callbacks", "build_model", "build_optimizer", "check_model_options",
           "needs_padding", "run", "save_run", "set_threads", "weight_init"]
