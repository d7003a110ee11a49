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

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95


def accuracy_interval(
    correct: np.ndarray, *, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of top-1 accuracy.

    ``correct`` is a boolean array of shape ``(n_images,)``. The images are
    resampled with replacement ``n_resamples`` times (seeded, so the interval is
    reproducible) and the 2.5th and 97.5th percentiles of the resampled accuracies
    are returned, as fractions. This is the percentile bootstrap of Efron and
    Tibshirani, "An Introduction to the Bootstrap" (1993), ch. 13, computed with
    ``scipy.stats.bootstrap``. When every image is right (or every one wrong) the
    interval is that single value: the bootstrap cannot see beyond the sample.
    """
    from scipy.stats import bootstrap

    values = np.asarray(correct, dtype=np.float64)
    if values.size == 0:
        return 0.0, 0.0
    if values.min() == values.max():
        return float(values[0]), float(values[0])
    result = bootstrap(
        (values,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


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
        ``accuracy_ci95`` (``[low, high]``, :func:`accuracy_interval`) and
        ``bootstrap`` (how it was computed);
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
    return {
        "n_images": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "accuracy_ci95": list(accuracy_interval(np.asarray(y_true) == y_pred)),
        "bootstrap": _bootstrap_method(),
        # mean recall over the classes present: scikit-learn's balanced_accuracy_score
        "balanced_accuracy": float(recall[support > 0].mean()) if support.any() else 0.0,
        "log_loss": _log_loss(y_true, proba, labels),
        "per_class": _per_class(class_names, precision, recall, f1, support),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "class_names": list(class_names),
    }


def _bootstrap_method() -> dict[str, Any]:
    """How ``accuracy_ci95`` was computed (:func:`accuracy_interval`'s defaults)."""
    return {
        "method": "percentile",
        "n_resamples": BOOTSTRAP_RESAMPLES,
        "confidence": CONFIDENCE,
        "seed": 0,
    }


def _log_loss(y_true: np.ndarray, proba: np.ndarray, labels: list[int]) -> float:
    """Cross-entropy (natural log) of ``proba`` clipped to [1e-15, 1] and renormalised."""
    clipped = np.clip(proba, 1e-15, 1.0)
    return float(log_loss(y_true, clipped / clipped.sum(axis=1, keepdims=True), labels=labels))


def _per_class(
    class_names: Sequence[str],
    precision: np.ndarray,
    recall: np.ndarray,
    f1: np.ndarray,
    support: np.ndarray,
) -> dict[str, dict[str, float | int]]:
    """``precision``, ``recall``, ``f1`` and ``support`` of each class, by name."""
    return {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
