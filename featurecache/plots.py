"""PNG plots written next to each head: confusion matrices and training curves.

Figures are drawn with Matplotlib's object-oriented API (``matplotlib.figure.Figure``,
no ``pyplot``): it needs no display (a server, cron) and never changes the backend of the
process, so a notebook that trains heads keeps showing its own plots inline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay


def confusion_matrix_png(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str
) -> Path:
    """Draw a confusion matrix (rows: true class, columns: predicted) to ``path``."""
    n = len(class_names)
    side = max(4.0, 0.6 * n + 2.5)
    fig = Figure(figsize=(side, side))
    ax = fig.subplots()
    display = ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(class_names))
    display.plot(ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45 if n > 4 else "horizontal")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def curves_png(history: Mapping[str, Sequence[float]], path: Path, title: str) -> Path:
    """Accuracy and loss per epoch, train vs validation, side by side, to ``path``."""
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        ax.plot(epochs, history[metric], label="train")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def accuracy_bars_png(
    rows: Sequence[tuple[str, float, float, float]],
    references: Sequence[tuple[str, float]],
    path: Path,
    title: str,
) -> Path:
    """Test top-1 per head as horizontal bars with their 95% intervals, to ``path``.

    ``rows`` holds ``(label, accuracy, ci_low, ci_high)`` (fractions); each of
    ``references`` (``(label, accuracy)``, a published figure) is a dashed
    vertical line, so whether ours clears it is seen at a glance.
    """
    fig = Figure(figsize=(8, 0.45 * len(rows) + 1.8))
    ax = fig.subplots()
    y = np.arange(len(rows))
    acc = np.array([r[1] for r in rows])
    err = np.array([[r[1] - r[2] for r in rows], [r[3] - r[1] for r in rows]])
    ax.barh(y, acc, xerr=err, color="#4c72b0", capsize=3, height=0.6)
    low = min([*(r[2] for r in rows), *(v for _, v in references)], default=0.0)
    left = max(0.0, low - 0.1)
    for yi, a in zip(y, acc, strict=True):
        ax.text(left + 0.005, float(yi), f"{a:.3f}", va="center", color="white", fontsize=9)
    colours = matplotlib.colormaps["Dark2"].colors  # type: ignore[attr-defined]
    for i, (label, value) in enumerate(references):
        ax.axvline(value, color=colours[i % len(colours)], ls="--", lw=1.5, label=label)
    ax.set_yticks(y, [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(left, 1.005)
    ax.set_xlabel("test top-1 accuracy (bars: 95% bootstrap interval)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    if references:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.12 - 0.5 / len(rows)))
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path
