"""``nnkern.training``: the training loop (``fit``, ``evaluate``), its record (``History``),
callbacks (``EarlyStopping``, ``Checkpoint``, ``LambdaCallback``) and checkpoints that resume
bit for bit. The main names are also exported at the top level (``nnkern.fit``, ...)."""

from nnkern.training.callbacks import Callback, Checkpoint, EarlyStopping, LambdaCallback
from nnkern.training.history import History
from nnkern.training.loop import Trainer, evaluate, fit

__all__ = ["fit", "evaluate", "Trainer", "History", "Callback", "EarlyStopping", "Checkpoint",
           "LambdaCallback"]
