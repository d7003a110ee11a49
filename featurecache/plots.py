"""PNG plots written next to each head: confusion matrices and training curves.

Matplotlib runs with its non-interactive Agg backend, so plotting works on a
server or in cron with no display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402


def confusion_matrix_png(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str
) -> Path:
    """Draw a confusion matrix (rows: true class, columns: predicted) to ``path``."""
    n = len(class_names)
    side = max(4.0, 0.6 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side, side))
    display = ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(class_names))
    display.plot(ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45 if n > 4 else "horizontal")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves_png(history: Mapping[str, Sequence[float]], path: Path, title: str) -> Path:
    """Accuracy and loss per epoch, train vs validation, side by side, to ``path``."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
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
    plt.close(fig)
    return path
