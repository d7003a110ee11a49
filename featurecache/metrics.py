"""Evaluation of a head on one split: the contents of ``metrics.json``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
)


def evaluate(y_true: np.ndarray, proba: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Metrics of one split.

    Parameters
    ----------
    y_true : ndarray of shape (n_images,), int
        True class indices.
    proba : ndarray of shape (n_images, n_classes), float
        Predicted class probabilities (rows sum to 1).
    class_names : sequence of str, length n_classes

    Returns
    -------
    dict
        ``n_images``; ``accuracy`` (top-1, a fraction in [0, 1]);
        ``balanced_accuracy`` (mean per-class recall over the classes present, as
        ``sklearn.metrics.balanced_accuracy_score``);
        ``log_loss`` (natural log, probabilities clipped by scikit-learn);
        ``per_class`` mapping each class name to ``precision``, ``recall``, ``f1``
        and ``support``; ``confusion_matrix`` (rows: true class, columns:
        predicted, in ``class_names`` order); ``class_names``.
    """
    labels = list(range(len(class_names)))
    y_pred = proba.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    clipped = np.clip(proba, 1e-15, 1.0)
    return {
        "n_images": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # mean recall over the classes present: scikit-learn's balanced_accuracy_score
        "balanced_accuracy": float(recall[support > 0].mean()) if support.any() else 0.0,
        "log_loss": float(
            log_loss(y_true, clipped / clipped.sum(axis=1, keepdims=True), labels=labels)
        ),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "class_names": list(class_names),
    }
