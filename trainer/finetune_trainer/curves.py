"""The pictures in the output folder, drawn with matplotlib (Agg, no display, no pyplot state):
``training_curves.png`` after every epoch and ``confusion_matrix.png`` of the best epoch at the end.

Pure drawing: the numbers come from the run's history and ``per_class``; no Paddle here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from .per_class import display_order, most_confused

TICK_LABELS = 40  # at most this many class names along each axis of the confusion matrix
NAME_CHARS = 22  # class names are cut to this length in the picture


def _save(figure: Figure, path: Path) -> None:
    """Write the PNG under a temporary name, then rename: a reader never sees half a file."""
    FigureCanvasAgg(figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    figure.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, path)


def plot_curves(
    history: list[dict[str, Any]],
    path: Path,
    schedule: list[tuple[float, float]] | None = None,
    best_epoch: int | None = None,
    title: str = "",
) -> None:
    """Loss and top-1 by epoch (training and validation) and the learning rate.

    ``history``: the run state's records (``epoch``, ``trainLoss``, ``valLoss``, ``top1``, ``top5``,
    ``trainTop1``, ``learningRate``); ``schedule``: (epoch as a fraction, rate) for the whole run, so
    the picture shows the rest of the schedule too (dashed past the last epoch).
    """
    epochs = [h["epoch"] for h in history]
    figure = Figure(figsize=(13, 4.2), layout="constrained")
    loss_ax, acc_ax, lr_ax = figure.subplots(1, 3)

    def series(key: str) -> tuple[list[int], list[float]]:
        points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
        return [e for e, _ in points], [v for _, v in points]

    for key, label, style in (("trainLoss", "training", "o-"), ("valLoss", "validation", "s-")):
        loss_ax.plot(*series(key), style, label=label, markersize=3)
    loss_ax.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    for key, label, style in (
        ("trainTop1", "training top-1", "o-"),
        ("top1", "validation top-1", "s-"),
        ("top5", "validation top-5", "^--"),
    ):
        acc_ax.plot(*series(key), style, label=label, markersize=3)
    acc_ax.set(title="Accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    if best_epoch is not None:
        best = next((h for h in history if h["epoch"] == best_epoch), None)
        if best is not None:
            acc_ax.axvline(best_epoch, color="grey", linewidth=0.8, linestyle=":")
            acc_ax.annotate(
                f"best {best['top1']:.4f}\n(epoch {best_epoch})",
                (best_epoch, best["top1"]),
                textcoords="offset points",
                xytext=(-10, -28),
                ha="right",
                fontsize=8,
            )
    done = max(epochs, default=0)
    if schedule:
        xs, ys = zip(*schedule, strict=True)
        past = [i for i, x in enumerate(xs) if x <= done]
        ahead = [i for i, x in enumerate(xs) if x >= done]
        lr_ax.plot([xs[i] for i in past], [ys[i] for i in past], "-", label="schedule (per step)")
        if ahead:
            lr_ax.plot([xs[i] for i in ahead], [ys[i] for i in ahead], "--", color="grey", label="to come")
    else:
        lr_ax.plot(*series("learningRate"), "o-", markersize=3, label="at the end of the epoch")
    lr_ax.set(title="Learning rate", xlabel="epoch", ylabel="learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if epochs:
            ax.set_xlim(left=0)
    if title:
        figure.suptitle(title, fontsize=11)
    _save(figure, path)


def _short(name: str) -> str:
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "\u2026"


def tick_positions(order: list[int], recall: np.ndarray, limit: int = TICK_LABELS) -> list[int]:
    """Positions (in ``order``) to name: every one for small matrices; else the classes with
    errors first (worst first), then evenly spaced ones, ``limit`` in all."""
    n = len(order)
    if n <= limit:
        return list(range(n))
    wrong = [i for i in np.argsort([recall[c] for c in order], kind="stable") if recall[order[i]] < 1]
    chosen = set(int(i) for i in wrong[: limit // 2])
    step = max(1, math.ceil(n / (limit - len(chosen))))
    chosen.update(range(0, n, step))
    return sorted(chosen)[:limit] if len(chosen) > limit else sorted(chosen)


def plot_confusion(matrix: np.ndarray, names: list[str], path: Path, title: str = "") -> None:
    """The confusion matrix, rows normalised (each true class's images sum to 1), more than 12
    classes ordered so that classes mistaken for each other sit together
    (``per_class.display_order``), a square
    root colour scale so that single errors show, sparse class names, and the most frequent
    confusions listed beside it."""
    matrix = np.asarray(matrix, np.int64)
    n = matrix.shape[0]
    images = matrix.sum(axis=1)
    rows = np.divide(matrix, images[:, None], out=np.zeros(matrix.shape), where=images[:, None] > 0)
    recall = np.diag(rows)
    order = display_order(matrix) if n > 12 else list(range(n))  # few classes: in label order
    shown = rows[np.ix_(order, order)]

    side = min(14.0, max(6.0, 3.0 + n * 0.09))
    figure = Figure(figsize=(side + 4.5, side), layout="constrained")
    grid = figure.add_gridspec(1, 2, width_ratios=[side, 4.5])
    ax = figure.add_subplot(grid[0, 0])
    # Right answers (the diagonal) in blue, mistakes in red, each on a square-root scale so that a
    # single wrong image of a class still shows.
    diagonal = np.eye(n, dtype=bool)
    norm = PowerNorm(0.5, vmin=0, vmax=1)
    right = np.ma.masked_where(~diagonal, shown)
    wrong = np.ma.masked_where(diagonal | (shown == 0), shown)
    ax.imshow(np.zeros_like(shown), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    blues = ax.imshow(right, cmap="Blues", norm=norm, interpolation="nearest")
    figure.colorbar(blues, ax=ax, shrink=0.45, pad=0.01, label="right: share of the true class")
    if wrong.count():  # no mistakes, no red at all
        reds = ax.imshow(wrong, cmap="Reds", norm=norm, interpolation="nearest")
        figure.colorbar(reds, ax=ax, shrink=0.45, pad=0.01, label="mistaken for that class")
    ticks = tick_positions(order, recall)
    labels = [_short(names[order[i]]) for i in ticks]
    size = 8 if n <= 30 else 6
    ax.set_xticks(ticks, labels, rotation=90, fontsize=size)
    ax.set_yticks(ticks, labels, fontsize=size)
    ax.set(xlabel="predicted class", ylabel="true class")
    figure.suptitle(title or "Confusion matrix", fontsize=11)
    if n <= 12:  # small matrices: the counts themselves
        for i in range(n):
            for j in range(n):
                count = matrix[order[i], order[j]]
                if count:
                    colour = "white" if shown[i, j] > 0.5 else "black"
                    ax.text(j, i, str(count), ha="center", va="center", fontsize=8, color=colour)

    text = figure.add_subplot(grid[0, 1])
    text.axis("off")
    lines = [f"{n} classes, {int(images.sum())} validation images", "", "Most confused (true -> predicted):"]
    lines += [
        f"{int(k)}  {_short(names[t])} -> {_short(names[p])}" for t, p, k in most_confused(matrix, 15)
    ] or ["none"]
    worst = [c for c in np.argsort(recall, kind="stable") if images[c] > 0 and recall[c] < 1][:10]
    lines += ["", "Lowest accuracy:"]
    lines += [f"{recall[c]:.2f}  {_short(names[c])}" for c in worst] or ["none"]
    text.text(0, 1, "\n".join(lines), va="top", ha="left", fontsize=8, family="monospace")
    _save(figure, path)
