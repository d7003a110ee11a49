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
from collections.abc import Mapping, Sequence
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


def tune(
    head: Any,
    search: Mapping[str, Sequence[Any]],
    x: np.ndarray,
    y: np.ndarray,
    *,
    cv: int = 5,
    seed: int = 0,
    max_samples: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """Choose ``head``'s parameters by grid search with stratified ``cv``-fold
    cross-validation on ``(x, y)`` (the training split), scored by top-1 accuracy.

    ``search`` maps parameter names to candidate values; a name may be the
    estimator's own (``C``), and is matched to the step of a scikit-learn
    pipeline that owns it (``logisticregression__C``). The folds are shuffled with
    ``seed``. With ``max_samples`` > 0 and more images than that, the search runs
    on a stratified sample of ``max_samples`` images (seeded) and the refit on all.
    This is scikit-learn's ``GridSearchCV`` with ``StratifiedKFold``;
    sweeping the regularisation of a linear probe this way is the protocol of
    Kornblith et al., "Do Better ImageNet Models Transfer Better?" (CVPR 2019).

    Returns
    -------
    head
        A clone of ``head`` with the best values, refitted on all of ``(x, y)``.
    summary : dict
        ``cv`` (folds), ``n_searched`` (images the search used), ``grid`` (the
        names as matched), ``best_params``,
        ``best_cv_accuracy`` and ``candidates`` (each candidate's parameters with the
        mean and standard deviation of its fold accuracies).

    Raises
    ------
    ConfigError
        If a name matches no parameter of the head, or a class has fewer than
        ``cv`` training images.
    """
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split

    names = list(head.get_params(deep=True))
    grid: dict[str, list[Any]] = {}
    for name, values in search.items():
        matches = sorted((k for k in names if k == name or k.endswith("__" + name)), key=len)
        if not matches:
            public = sorted(k.rsplit("__", 1)[-1] for k in names)
            raise ConfigError(
                f"search: the head has no parameter {name!r}; it has {', '.join(public)}"
            )
        grid[matches[0]] = list(values)
    present = np.bincount(y)
    smallest = int(present[present > 0].min()) if present.any() else 0
    if smallest < cv:
        raise ConfigError(
            f"search with cv = {cv} needs at least {cv} training images per class; the "
            f"smallest class has {smallest}. Lower cv or add images"
        )
    x_search, y_search = x, y
    if 0 < max_samples < len(y):
        x_search, _, y_search, _ = train_test_split(
            x, y, train_size=max_samples, stratify=y, random_state=seed
        )
    searcher = GridSearchCV(
        head,
        grid,
        scoring="accuracy",
        cv=StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed),
        refit=False,  # refitted below on all of (x, y), sampled or not
        error_score="raise",
    )
    searcher.fit(x_search, y_search)
    best = clone(head).set_params(**searcher.best_params_).fit(x, y)
    results = searcher.cv_results_
    summary = {
        "cv": cv,
        "n_searched": int(len(y_search)),
        "grid": grid,
        "best_params": {k.rsplit("__", 1)[-1]: _plain(v) for k, v in searcher.best_params_.items()},
        "best_cv_accuracy": float(searcher.best_score_),
        "candidates": [
            {
                "params": {k.rsplit("__", 1)[-1]: _plain(v) for k, v in params.items()},
                "mean_accuracy": float(mean),
                "std_accuracy": float(std),
            }
            for params, mean, std in zip(
                results["params"],
                results["mean_test_score"],
                results["std_test_score"],
                strict=True,
            )
        ],
    }
    return best, summary


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a parameter value (numpy scalars to Python)."""
    return value.item() if isinstance(value, np.generic) else value


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
