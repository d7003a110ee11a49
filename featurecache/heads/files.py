"""Head model files: the fitted classifier on disk, and back.

The dense head is saved as a ``.keras`` model (loadable with plain Keras, without
featurecache); every other head with ``joblib``. What the head is and how it did is in
its records (:class:`featurecache.runs.HeadRecord`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from featurecache.deps import import_keras

MODEL_JOBLIB = "model.joblib"
MODEL_KERAS = "model.keras"


def save_model(head: Any, folder: Path) -> str:
    """Save a fitted head into ``folder``; return the model file's name."""
    import joblib

    from featurecache.heads.dense import DenseHead

    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(head, DenseHead):
        head.model_.save(folder / MODEL_KERAS)
        return MODEL_KERAS
    joblib.dump(head, folder / MODEL_JOBLIB)
    return MODEL_JOBLIB


class KerasHead:
    """A loaded ``.keras`` model exposing ``predict_proba`` and ``classes_``, as a head.

    ``predict_proba`` maps ``X`` (features, or raw pixels for a fine-tuned model) to
    probabilities of shape ``(n, n_classes)``.
    """

    def __init__(self, model: Any) -> None:
        self.model_ = model
        self.classes_ = np.arange(model.output_shape[-1])

    def predict_proba(self, X):  # noqa: N803
        return np.asarray(self.model_.predict(np.asarray(X, dtype=np.float32), verbose=0))


def load_model(path: Path) -> Any:
    """The head saved at ``path`` (``.keras`` as :class:`KerasHead`, else joblib)."""
    if Path(path).suffix == ".keras":
        return KerasHead(import_keras().models.load_model(path))
    import joblib

    return joblib.load(path)
