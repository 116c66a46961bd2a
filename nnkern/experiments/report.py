"""Tables and comparison figures for the example scripts (matplotlib's Agg canvas, no pyplot)."""

import json
import math
import os

import numpy as np

from nnkern.model import save


def markdown_table(header, rows):
    """A GitHub-flavoured markdown table from a header list and rows of cells (str() each)."""
    cells = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value):
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def percent(value):
    """0.8934 -> '89.3' (None -> None)."""
    return None if value is None else f"{100 * value:.1f}"


def save_training(folder, history, model=None, title=None):
    """Write a training run into ``folder``: history.json, history.png (when ``title`` is
    given: the plot's title) and model.npz (when ``model`` is given). Returns {name: path}."""
    os.makedirs(folder, exist_ok=True)
    files = {"history.json": os.path.join(folder, "history.json")}
    history.to_json(files["history.json"])
    if title is not None:
        files["history.png"] = os.path.join(folder, "history.png")
        history.plot(files["history.png"], title=title)
    if model is not None:
        files["model.npz"] = os.path.join(folder, "model.npz")
        save(model, files["model.npz"])
    return files


def write_json(path, data):
    """Write ``data`` as indented JSON (NaN/inf become null)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_clean(data), f, indent=2)


def _clean(value):
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _figure(ncols, width=11, height=4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _step_axis(history):
    """x position in epochs of every step of a History."""
    epochs = history.steps["epoch"]
    counts = np.bincount(epochs) if epochs else np.zeros(0, int)
    pos, seen = [], {}
    for e in epochs:
        seen[e] = seen.get(e, 0) + 1
        pos.append(e + seen[e] / counts[e])
    return pos


def compare_histories(histories, path, title=None):
    """Side-by-side learning curves of several runs (e.g. {"vanilla": h1, "BN": h2}): left the
    EMA-0.99 training loss after each step (seed 000) with the validation loss per epoch as
    markers, right the validation accuracy per epoch (solid, seed 002) and the training accuracy
    (dashed). Diverged runs end where their loss stopped being finite."""
    fig, (ax_loss, ax_acc) = _figure(2)
    for k, (label, h) in enumerate(histories.items()):
        color = f"C{k}"
        if h.steps["ema_loss"]:
            ax_loss.plot(_step_axis(h), h.steps["ema_loss"], lw=1, color=color,
                         label=f"{label}: training (EMA 0.99)")
        if h["val_loss"]:
            ax_loss.plot(range(1, len(h["val_loss"]) + 1), h["val_loss"], "o", ms=3,
                         color=color, label=f"{label}: validation")
        if h["val_accuracy"]:
            ax_acc.plot(range(1, len(h["val_accuracy"]) + 1), h["val_accuracy"], "o-", ms=3,
                        color=color, label=f"{label}: validation")
        if h["accuracy"]:
            ax_acc.plot(range(1, len(h["accuracy"]) + 1), h["accuracy"], "--", color=color,
                        label=f"{label}: training")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy")
    finite = [v for h in histories.values() for v in h.steps["ema_loss"] if math.isfinite(v)]
    if finite and max(finite) > 10 * np.median(finite):  # a diverging run: show both on a log axis
        ax_loss.set_yscale("log")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return fig


def mean_curve(curves):
    """Element-wise mean of lists of different lengths (up to the shortest; runs that
    diverged stop early and shorten the mean)."""
    curves = [c for c in curves if len(c)]
    if not curves:
        return np.zeros(0)
    n = min(len(c) for c in curves)
    return np.mean([np.asarray(c[:n], float) for c in curves], axis=0)


def variants_figure(runs, path, title=None):
    """Seed 000's figures: for each variant (``{name: [History, ...]}``, one per run), the
    EMA-0.99 training error (cross-entropy) after each step, left, and the validation error
    (cross-entropy) after each epoch, right; the mean over the runs."""
    fig, (ax_train, ax_val) = _figure(2, width=12, height=4.5)
    for k, (name, histories) in enumerate(runs.items()):
        style = "-" if k < 10 else "--"
        color = f"C{k % 10}"
        train = mean_curve([h.steps["ema_loss"] for h in histories])
        ax_train.plot(np.arange(1, len(train) + 1), train, style, lw=1, color=color, label=name)
        val = mean_curve([h["val_loss"] for h in histories])
        ax_val.plot(np.arange(1, len(val) + 1), val, style + "o", ms=3, color=color, label=name)
    ax_train.set(xlabel="step", ylabel="training error (CE, EMA 0.99)")
    ax_val.set(xlabel="epoch", ylabel="validation error (CE)")
    for ax in (ax_train, ax_val):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return fig
