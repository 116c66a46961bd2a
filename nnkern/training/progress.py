"""Progress output of ``fit``, to stderr: a tqdm bar per epoch on a terminal, otherwise exactly
one plain line per epoch (no carriage returns in log files; keras-team/keras#13716)."""

import os
import sys


def make_progress(progress, epochs, steps_per_epoch, stream=None):
    """``progress``: None or True (auto: a bar when stderr is a TTY, else lines), False (silent),
    "bar" or "lines" (forced)."""
    stream = sys.stderr if stream is None else stream
    if progress is False:
        return Silent()
    if progress is None or progress is True:
        progress = "bar" if _is_terminal(stream) else "lines"
    if progress == "bar":
        try:
            import tqdm  # noqa: F401
        except ImportError:  # tqdm is a dependency, but a missing one must not stop training
            progress = "lines"
    if progress == "bar":
        return Bar(epochs, steps_per_epoch, stream)
    if progress == "lines":
        return Lines(epochs, stream)
    raise ValueError(f"fit: progress must be None, True, False, 'bar' or 'lines', "
                     f"got {progress!r}")


def _is_terminal(stream):
    """A TTY with a usable size (a pseudo-terminal of size 0x0, as some containers and CI
    runners allocate, makes tqdm print empty lines: those get plain lines)."""
    isatty = getattr(stream, "isatty", None)
    if isatty is None or not isatty():
        return False
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no real descriptor (e.g. a test stream)
        return True
    return size.columns >= 20 and size.lines >= 1


def format_logs(logs, short=False):
    names = {"accuracy": "acc", "val_accuracy": "val_acc"} if short else {}
    parts = []
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if logs.get(key) is not None:
            parts.append(f"{names.get(key, key)} {logs[key]:.{3 if short else 4}f}")
    if logs.get("lr") is not None and not short:
        parts.append(f"lr {logs['lr']:.3g}")
    return (" " if short else " - ").join(parts)


class Silent:
    def epoch_begin(self, epoch):
        pass

    def step(self, logs):
        pass

    def epoch_end(self, epoch, logs):
        pass

    def message(self, text):
        pass

    def close(self):
        pass


class Lines(Silent):
    """One line per epoch: ``epoch 3/10 - 1.2s - loss 0.4321 - accuracy 0.8812 - ...``."""

    def __init__(self, epochs, stream):
        self.epochs, self.stream = epochs, stream
        self.width = len(str(epochs))

    def epoch_end(self, epoch, logs):
        seconds = logs["time"]
        head = f"epoch {epoch + 1:>{self.width}}/{self.epochs} - " \
            f"{seconds:.{2 if seconds < 10 else 1}f}s"
        rest = format_logs(logs)
        print(f"{head} - {rest}" if rest else head, file=self.stream, flush=True)

    def message(self, text):
        print(text, file=self.stream, flush=True)


class Bar(Lines):
    """A tqdm bar per epoch showing the running epoch loss; left on screen with the epoch's
    final metrics."""

    def __init__(self, epochs, steps_per_epoch, stream):
        super().__init__(epochs, stream)
        self.steps_per_epoch = steps_per_epoch
        self.bar = None

    def epoch_begin(self, epoch):
        from tqdm import tqdm
        self.bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.epochs}",
                        file=self.stream, unit="step", leave=True, dynamic_ncols=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar:10}| {n_fmt}/{total_fmt} "
                                   "[{elapsed}<{remaining}{postfix}]")

    def step(self, logs):
        self.bar.set_postfix_str(f"loss {logs['epoch_loss']:.4f}", refresh=False)
        self.bar.update(1)

    def epoch_end(self, epoch, logs):
        self.bar.set_postfix_str(format_logs(logs, short=True), refresh=False)
        self.close()

    def message(self, text):
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            super().message(text)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
