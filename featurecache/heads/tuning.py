"""Choosing a head's parameters by stratified cross-validation on the training split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from featurecache.errors import ConfigError
from featurecache.heads.estimators import grid_names


def tune(
    head: Any,
    search: Mapping[str, Sequence[Any]],
    x: np.ndarray,
    y: np.ndarray,
    *,
    cv: int = 5,
    seed: int = 0,
    max_samples: int = 0,
    refit: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Choose ``head``'s parameters by grid search with stratified ``cv``-fold
    cross-validation on ``(x, y)`` (the training split), scored by top-1 accuracy.

    ``search`` maps parameter names to candidate values; a name may be the
    estimator's own (``C``), and is matched to the step of a scikit-learn
    pipeline that owns it (``logisticregression__C``). The folds are shuffled with
    ``seed``. With ``max_samples`` > 0 and more images than that, the search runs
    on a stratified sample of ``max_samples`` images (seeded) and the refit on all.
    ``refit``: other rows to refit on (train plus flipped views, kept out of the folds).
    This is scikit-learn's ``GridSearchCV`` with ``StratifiedKFold``; sweeping the
    regularisation of a linear probe this way is the protocol of Kornblith et al.,
    "Do Better ImageNet Models Transfer Better?" (CVPR 2019).

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

    grid = {param: list(search[name]) for name, param in grid_names(head, search).items()}
    _check_folds(y, cv)
    x_search, y_search = _search_rows(x, y, max_samples, seed)
    searcher = _grid_search(head, grid, x_search, y_search, cv=cv, seed=seed)
    best = clone(head).set_params(**searcher.best_params_).fit(*(refit or (x, y)))
    return best, {"cv": cv, "n_searched": int(len(y_search)), "grid": grid, **_scores(searcher)}


def _search_rows(
    x: np.ndarray, y: np.ndarray, max_samples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The rows the search runs on: all of ``(x, y)``, or a stratified, seeded sample of
    ``max_samples`` of them when there are more."""
    from sklearn.model_selection import train_test_split

    if 0 < max_samples < len(y):
        x_search, _, y_search, _ = train_test_split(
            x, y, train_size=max_samples, stratify=y, random_state=seed
        )
        return x_search, y_search
    return x, y


def _grid_search(
    head: Any, grid: dict[str, list[Any]], x: np.ndarray, y: np.ndarray, *, cv: int, seed: int
) -> Any:
    """The fitted ``GridSearchCV`` of ``head`` over ``grid``: top-1 accuracy over ``cv``
    stratified folds, shuffled with ``seed``."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
    # refit=False: tune refits on all of (x, y), sampled or not, or on ``refit``
    searcher = GridSearchCV(
        head, grid, scoring="accuracy", cv=folds, refit=False, error_score="raise"
    )
    return searcher.fit(x, y)


def _scores(searcher: Any) -> dict[str, Any]:
    """The fitted search's choice and every candidate's cross-validated top-1."""
    results = searcher.cv_results_
    return {
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


def _check_folds(y: np.ndarray, cv: int) -> None:
    present = np.bincount(y)
    smallest = int(present[present > 0].min()) if present.any() else 0
    if smallest < cv:
        raise ConfigError(
            f"search with cv = {cv} needs at least {cv} training images per class; the "
            f"smallest class has {smallest}. Lower cv or add images"
        )


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a parameter value (numpy scalars to Python)."""
    return value.item() if isinstance(value, np.generic) else value
