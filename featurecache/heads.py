"""Heads: classifiers trained on cached bottleneck features.

Every head is a scikit-learn classifier (``fit(X, y)``, ``predict_proba(X)``,
fitted ``classes_``), so one code path trains, evaluates and saves them all:

* scikit-learn heads by registered name (:data:`SKLEARN_HEADS`) or by the import
  path of any classifier, each behind a ``StandardScaler`` where the estimator is
  sensitive to feature scale;
* :class:`featurecache.dense_head.DenseHead`, the dense head of the Keras
  transfer-learning guide: ``Dense(256, relu) -> Dropout(0.5) -> Dense(n_classes, softmax)``, Adam,
  early stopping on validation loss.

scikit-learn, Keras and joblib are imported only when a head is built or loaded,
so the no-op path of ``featurecache refresh`` stays fast.

``X`` is always an array of shape ``(n_images, feature_dim)``, dtype float32; ``y``
integer class indices of shape ``(n_images,)``.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featurecache.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SklearnHeadSpec:
    """A registered scikit-learn head: estimator import path and defaults."""

    estimator: str
    defaults: Mapping[str, Any]
    scale: bool = True
    calibrate: bool = False  # wrap estimators without predict_proba


SKLEARN_HEADS: dict[str, SklearnHeadSpec] = {
    "logistic_regression": SklearnHeadSpec(
        "sklearn.linear_model.LogisticRegression", {"C": 1.0, "max_iter": 5000}
    ),
    # LinearSVC has no predict_proba: Platt scaling through CalibratedClassifierCV.
    "linear_svm": SklearnHeadSpec(
        "sklearn.svm.LinearSVC", {"C": 0.01, "max_iter": 10000}, calibrate=True
    ),
    "knn": SklearnHeadSpec("sklearn.neighbors.KNeighborsClassifier", {"n_neighbors": 5}),
    "random_forest": SklearnHeadSpec(
        "sklearn.ensemble.RandomForestClassifier",
        {"n_estimators": 300, "random_state": 0, "n_jobs": -1},
        scale=False,
    ),
}
HEAD_ALIASES = {
    "logreg": "logistic_regression",
    "lr": "logistic_regression",
    "svm": "linear_svm",
    "k_nn": "knn",
    "rf": "random_forest",
    "mlp": "dense",
}
HEAD_KINDS = ("dense", *SKLEARN_HEADS)


def canonical_kind(kind: str) -> str:
    """Normalise a head kind; import paths (with a dot) are kept as given."""
    if "." in kind:
        return kind
    key = kind.strip().lower().replace("-", "_")
    key = HEAD_ALIASES.get(key, key)
    if key not in HEAD_KINDS:
        raise ConfigError(
            f"unknown head {kind!r}; use one of {', '.join(HEAD_KINDS)} or the import path "
            "of a scikit-learn classifier (e.g. sklearn.ensemble.ExtraTreesClassifier)"
        )
    return key


def _import(path: str) -> type:
    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"cannot import head estimator {path!r}: {exc}") from exc


def build_head(kind: str, params: Mapping[str, Any] | None = None, *, seed: int = 0) -> Any:
    """Return an unfitted classifier for ``kind`` with ``params`` over the defaults.

    Raises
    ------
    ConfigError
        For an unknown kind, an import path that is not a classifier, or a
        parameter the estimator does not accept.
    """
    from sklearn.base import is_classifier
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    kind = canonical_kind(kind)
    params = dict(params or {})
    if kind == "dense":
        from featurecache.dense_head import DenseHead

        return _with_params(DenseHead, {"seed": seed, **params}, kind)
    if kind in SKLEARN_HEADS:
        spec = SKLEARN_HEADS[kind]
        estimator = _with_params(_import(spec.estimator), {**spec.defaults, **params}, kind)
        if spec.calibrate:
            estimator = CalibratedClassifierCV(estimator, cv=3)
        return make_pipeline(StandardScaler(), estimator) if spec.scale else estimator
    cls = _import(kind)
    estimator = _with_params(cls, params, kind)
    if not is_classifier(estimator):
        raise ConfigError(f"{kind!r} is not a scikit-learn classifier")
    return estimator


def _with_params(cls: type, params: dict[str, Any], kind: str) -> Any:
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"head {kind!r}: bad parameter: {exc}") from exc


def predict_proba(head: Any, features: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities of shape ``(n_images, n_classes)``, float64.

    Columns follow the data set's class indices even when the head never saw a
    class in training (its column is then 0), so results always line up with
    ``class_names``.
    """
    proba = np.asarray(head.predict_proba(features), dtype=np.float64)
    classes = np.asarray(head.classes_)
    full = np.zeros((proba.shape[0], n_classes))
    full[:, classes.astype(int)] = proba
    return full


# --------------------------------------------------------------------------- persistence

MODEL_JOBLIB = "model.joblib"
MODEL_KERAS = "model.keras"
HEAD_JSON = "head.json"


def save_head(head: Any, folder: Path, info: Mapping[str, Any]) -> Path:
    """Save a fitted head and its description (``head.json``) into ``folder``.

    The dense head is saved as a ``.keras`` model (loadable without featurecache);
    every other head with ``joblib``. Returns the model file's path.
    """
    import joblib

    from featurecache.dense_head import DenseHead

    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(head, DenseHead):
        path = folder / MODEL_KERAS
        head.model_.save(path)
    else:
        path = folder / MODEL_JOBLIB
        joblib.dump(head, path)
    (folder / HEAD_JSON).write_text(json.dumps({**info, "model_file": path.name}, indent=2))
    return path


class _KerasHead:
    """A loaded ``.keras`` dense head exposing ``predict_proba`` and ``classes_``."""

    def __init__(self, model: Any) -> None:
        self.model_ = model
        self.classes_ = np.arange(model.output_shape[-1])

    def predict_proba(self, X):  # noqa: N803
        return np.asarray(self.model_.predict(np.asarray(X, dtype=np.float32), verbose=0))


def load_head(folder: str | Path) -> tuple[Any, dict[str, Any]]:
    """Load a head saved by :func:`save_head`: ``(classifier, head.json contents)``.

    Raises
    ------
    ConfigError
        If ``folder`` is not a head folder.
    """
    folder = Path(folder)
    meta = folder / HEAD_JSON
    if not meta.is_file():
        raise ConfigError(
            f"{str(folder)!r} is not a trained head (no {HEAD_JSON}); give a folder written by "
            "`featurecache train-head`"
        )
    info = json.loads(meta.read_text())
    path = folder / info["model_file"]
    if path.suffix == ".keras":
        from featurecache.backbones import import_keras

        return _KerasHead(import_keras().models.load_model(path)), info
    import joblib

    return joblib.load(path), info
