"""Heads: classifiers trained on cached bottleneck features.

Every head is a scikit-learn classifier (``fit(X, y)``, ``predict_proba(X)``,
fitted ``classes_``), so one code path trains, evaluates and saves them all:

* scikit-learn heads by registered name (:data:`SKLEARN_HEADS`) or by the import
  path of any classifier, each behind a ``StandardScaler`` where the estimator is
  sensitive to feature scale;
* :class:`featurecache.heads.dense.DenseHead`, the dense head of the Keras
  transfer-learning guide: ``Dense(256, relu) -> Dropout(0.5) -> Dense(n_classes, softmax)``,
  Adam, early stopping on validation loss.

:func:`check_heads` builds every head of a pipeline and checks its parameters before
any work starts. scikit-learn and Keras are imported only when a head is built, so the
no-op path of ``featurecache refresh`` stays fast.

``X`` is always an array of shape ``(n_images, feature_dim)``, dtype float32; ``y``
integer class indices of shape ``(n_images,)``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from featurecache.config import HeadConfig
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
        from featurecache.heads.dense import DenseHead

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
        raise ConfigError(f"bad parameter for {kind}: {exc}") from exc


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


def grid_names(head: Any, search: Mapping[str, Sequence[Any]]) -> dict[str, str]:
    """Each name in ``search`` matched to the head's own parameter: the estimator's name
    (``C``) is matched to the step of a scikit-learn pipeline that owns it
    (``logisticregression__C``).

    Raises
    ------
    ConfigError
        If a name matches no parameter of the head.
    """
    names = list(head.get_params(deep=True))
    matched = {}
    for name in search:
        matches = sorted((k for k in names if k == name or k.endswith("__" + name)), key=len)
        if not matches:
            public = sorted(k.rsplit("__", 1)[-1] for k in names)
            raise ConfigError(
                f"search: the head has no parameter {name!r}; it has {', '.join(public)}"
            )
        matched[name] = matches[0]
    return matched


def check_heads(heads: Sequence[HeadConfig]) -> list[str]:
    """Build every head and check its parameters and search grid; return the kinds.

    Run before any extraction, so that a typo in a head costs seconds, not an extraction.
    The values of ``params`` and of every candidate of ``search`` are checked against the
    table ``fit`` itself checks them with: :data:`~featurecache.heads.dense.DENSE_HEAD` for
    the dense head, each scikit-learn estimator's own constraints for the others (see
    :func:`_sklearn_check_params`).

    Raises
    ------
    ConfigError
        Naming the head and the parameter at fault.
    """
    from sklearn.base import clone

    kinds = []
    for config in heads:
        kind = canonical_kind(config.kind)
        try:
            head = build_head(kind, config.params)
            _check_params(head)
            for name, param in grid_names(head, config.search).items():
                for value in config.search[name]:
                    _check_params(clone(head).set_params(**{param: value}))
        except (ValueError, TypeError) as exc:  # ours, or scikit-learn's InvalidParameterError
            raise ConfigError(f"head {config.name!r}: {exc}") from exc
        kinds.append(kind)
    return kinds


def _estimators(head: Any) -> Iterator[Any]:
    """The head and every estimator inside it (pipeline steps, a calibrated estimator)."""
    yield head
    for value in head.get_params(deep=True).values():
        if hasattr(value, "get_params") and hasattr(value, "fit"):
            yield value


def _check_params(head: Any) -> None:
    """Check the parameters of the head and of every estimator inside it, as ``fit`` would."""
    from featurecache.config.constraints import check
    from featurecache.heads.dense import DENSE_HEAD, DenseHead

    for estimator in _estimators(head):
        if isinstance(estimator, DenseHead):
            check(estimator, DENSE_HEAD)
        else:
            _sklearn_check_params(estimator)


def _sklearn_check_params(estimator: Any) -> None:
    """Check ``estimator``'s parameters against its ``_parameter_constraints`` without
    fitting it, as its ``fit`` does first.

    scikit-learn has no public way to do this: ``fit`` is the only public entry point,
    and fitting every candidate of a search grid is what :func:`check_heads` exists to
    avoid. So this is featurecache's one use of the private
    ``BaseEstimator._validate_params`` (written against scikit-learn 1.9.1; the method
    exists since 1.2). Estimators that declare no constraints (third-party classifiers,
    old versions) are not checked here; their ``fit`` still is.

    Raises
    ------
    ValueError
        scikit-learn's ``InvalidParameterError`` (a ``ValueError`` and ``TypeError``),
        naming the estimator, the parameter and what it must be.
    """
    if hasattr(estimator, "_parameter_constraints") and hasattr(estimator, "_validate_params"):
        estimator._validate_params()
