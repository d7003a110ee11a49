"""Stage 2: train heads on cached features alone (the backbone is never built).

For each data set x backbone x head, the head is fitted on the ``train`` split,
evaluated on every split present, and written to its folder
(:meth:`featurecache.runs.RunLayout.head_dir`):

* ``model.skops`` (scikit-learn heads, skops format) or ``model.keras`` (dense head);
* ``head.json``: kind, parameters, class names and the cache group it came from, with
  the backbone configuration and weights identity ``predict`` needs;
* ``metrics.json``: one object per split (:func:`featurecache.metrics.evaluate`);
* ``confusion_matrix_<split>.png`` per split, and ``curves.png`` (accuracy and loss
  per epoch, train vs validation) for the dense head.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from featurecache.cache import Cache, FeatureSet, cache_id
from featurecache.cache import recipe as recipes
from featurecache.config import HeadConfig, Pipeline
from featurecache.errors import CacheError, FeaturecacheError
from featurecache.heads.estimators import (
    build_head,
    canonical_kind,
    check_heads,
    predict_proba,
)
from featurecache.heads.freshness import fresh_record, grid_given
from featurecache.runs import HeadRecord, RunLayout, output_errors

log = logging.getLogger(__name__)


@dataclass
class HeadResult:
    """One trained head; ``--json`` prints these. ``seconds`` is the fit's wall time
    (tuning included); ``accuracy`` the top-1 of every split."""

    dataset: str
    backbone: str
    group: str
    head: str
    kind: str
    folder: str
    seconds: float
    accuracy: dict[str, float]
    trained: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_heads(pipeline: Pipeline, *, only_changed: bool = False) -> list[HeadResult]:
    """Train every head of ``pipeline`` on every cached data set x backbone.

    With ``only_changed``, a head whose folder already holds a model trained on the same
    rows (content hash), with the same kind and parameters, is kept as is and reported
    with ``trained=False``.

    Raises
    ------
    CacheError
        If a data set x backbone has no features in the cache (run ``extract``).
    ConfigError
        If a head kind or parameter is invalid (checked before any head is trained).
    """
    cache = Cache(pipeline.cache)
    layout = RunLayout.of(pipeline)
    kinds = [canonical_kind(h.kind) for h in pipeline.heads]  # fail fast, nothing imported
    checked = False
    source = {"name": pipeline.name, "source": str(pipeline.source) if pipeline.source else None}
    results = []
    for dataset in pipeline.datasets:
        for backbone in pipeline.backbones:
            found = recipes.require_group(cache, dataset.name, backbone)
            read: dict[tuple, FeatureSet] = {}
            for head, kind in zip(pipeline.heads, kinds, strict=True):
                if not set(head.taps) <= set(backbone.taps):
                    log.info(
                        "head %s: not trained on %s, which caches none of its taps %s",
                        head.name,
                        backbone.name,
                        list(head.taps),
                    )
                    continue
                flipped = head.views and "flip" in found.attrs["backbone"].get("views", ())
                if (head.taps, flipped) not in read:
                    read[head.taps, flipped] = cache.read(
                        dataset.name, found.group, taps=head.taps, flipped=flipped
                    )
                features = read[head.taps, flipped]
                folder = layout.head_dir(dataset.name, found.group, head.name)
                kept = _unchanged(folder, head, kind, found.attrs) if only_changed else None
                if kept is None and not checked:  # before the first head is trained
                    check_heads(pipeline.heads)
                    checked = True
                with output_errors(layout.output):
                    results.append(
                        kept
                        or train_one(
                            features, head, kind, folder, cache_root=pipeline.cache, pipeline=source
                        )
                    )
    return results


def _unchanged(folder: Path, head: HeadConfig, kind: str, attrs: dict) -> HeadResult | None:
    """The existing head's result if it was trained on exactly these inputs."""
    record = fresh_record(folder, head, kind, attrs)
    if record is None:
        return None
    info = record.info
    return HeadResult(
        dataset=info["cache"]["dataset"],
        backbone=attrs["backbone"]["name"],
        group=info["cache"]["group"],
        head=head.name,
        kind=kind,
        folder=str(folder),
        seconds=0.0,
        accuracy={s: m["accuracy"] for s, m in record.metrics.items()},
        trained=False,
    )


def train_one(
    features: FeatureSet,
    config: HeadConfig,
    kind: str,
    folder: Path,
    *,
    cache_root: Path | str,
    pipeline: dict[str, Any] | None = None,
) -> HeadResult:
    """Fit one head on the train split, evaluate every split, write its folder.

    With ``config.search``, the parameters are first chosen by stratified
    cross-validation on the train split (:func:`featurecache.heads.tuning.tune`); the
    choice and every candidate's score go to ``head.json`` under ``search``.

    Raises
    ------
    CacheError
        If the features have no ``train`` split.
    FeaturecacheError
        If scikit-learn or Keras cannot fit the head on these features.
    """
    from featurecache.heads.files import save_model

    start = time.perf_counter()
    head, search = _fit(features, config, kind)
    seconds = time.perf_counter() - start
    metrics = {split: _evaluate(head, features, split) for split in features.splits}
    cache = {"root": cache_id(cache_root), "dataset": features.dataset, "group": features.group}
    info = _head_info(config, kind, features, search, seconds, cache, pipeline or {})
    info["model_file"] = save_model(head, folder)
    HeadRecord(folder, info, metrics).write()
    _plots(head, config, features, metrics, folder)
    accuracy = {split: m["accuracy"] for split, m in metrics.items()}
    log.info(
        "head %s on %s/%s: %s (%.1f s)",
        config.name,
        features.dataset,
        features.group,
        ", ".join(f"{s} {a:.3f}" for s, a in accuracy.items()),
        seconds,
    )
    return HeadResult(
        dataset=features.dataset,
        backbone=features.provenance["backbone"]["name"],
        group=features.group,
        head=config.name,
        kind=kind,
        folder=str(folder),
        seconds=seconds,
        accuracy=accuracy,
    )


def _evaluate(head: Any, features: FeatureSet, split: str) -> dict[str, Any]:
    """``metrics.json``'s object for one split (:func:`featurecache.metrics.evaluate`);
    with flipped views, the class probabilities are averaged over the two views."""
    from featurecache.metrics import evaluate

    n_classes = len(features.class_names)
    x, y = features.subset(split)
    proba = predict_proba(head, x, n_classes)
    if features.flipped is not None:
        proba = (
            proba + predict_proba(head, features.subset(split, flipped=True)[0], n_classes)
        ) / 2
    return evaluate(y, proba, features.class_names)


def _training_rows(
    features: FeatureSet, validation_fraction: float, seed: int = 0
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """The training rows with their flipped views added, and the validation rows: the
    validation split, or (without one) a stratified ``validation_fraction`` of train
    held out before the flips are added, so that no image's flip validates itself."""
    x, y = features.subset("train")
    xf, _ = features.subset("train", flipped=True)
    if "validation" in features.splits:
        validation = features.subset("validation")
        keep = np.arange(len(y))
    else:
        from sklearn.model_selection import train_test_split

        keep, held = train_test_split(
            np.arange(len(y)), test_size=validation_fraction, stratify=y, random_state=seed
        )
        validation = (x[held], y[held])
    return (np.concatenate([x[keep], xf[keep]]), np.concatenate([y[keep], y[keep]])), validation


def _fit(features: FeatureSet, config: HeadConfig, kind: str) -> tuple[Any, dict[str, Any]]:
    """The fitted head (tuned first when ``config.search``) and the search summary."""
    from featurecache.heads.dense import DenseHead
    from featurecache.heads.tuning import tune

    x_train, y_train = features.subset("train")
    if len(x_train) == 0:
        raise CacheError(
            f"{features.dataset}/{features.group} has no 'train' images to fit a head on"
        )
    head = build_head(kind, config.params)
    augmented = None
    if features.flipped is not None:
        xf, _ = features.subset("train", flipped=True)
        augmented = (np.concatenate([x_train, xf]), np.concatenate([y_train, y_train]))
    try:
        if config.search:
            head, search = tune(
                head,
                config.search,
                x_train,
                y_train,
                cv=config.cv,
                max_samples=config.search_samples,
                refit=augmented,
            )
            search["grid_given"] = grid_given(config)
            log.info(
                "head %s: cross-validation chose %s (%d-fold top-1 %.3f)",
                config.name,
                search["best_params"],
                config.cv,
                search["best_cv_accuracy"],
            )
            return head, search
        if isinstance(head, DenseHead) and features.flipped is not None:
            rows, validation = _training_rows(features, head.validation_fraction)
            head.fit(*rows, validation_data=validation)
        elif isinstance(head, DenseHead) and "validation" in features.splits:
            head.fit(x_train, y_train, validation_data=features.subset("validation"))
        else:
            head.fit(*(augmented or (x_train, y_train)))  # not every fit returns self
        return head, {}
    except ValueError as exc:
        raise FeaturecacheError(f"head {config.name!r} could not be fitted: {exc}") from exc


def _head_info(
    config: HeadConfig,
    kind: str,
    features: FeatureSet,
    search: dict,
    seconds: float,
    cache: dict[str, str],
    pipeline: dict[str, Any],
) -> dict[str, Any]:
    """What ``head.json`` records of the head, the features it was trained on and where
    they are (``cache``), and the pipeline that declared it."""
    attrs = features.provenance
    return {
        "name": config.name,
        "kind": kind,
        "params": dict(config.params),
        "class_names": features.class_names,
        "cache": cache,
        "backbone": attrs["backbone"],
        "weights": attrs["weights"],
        "recipe_hash": attrs["recipe_hash"],
        "content_hash": attrs.get("content_hash"),
        "feature_dim": int(features.X.shape[1]),
        "taps": list(config.taps),
        "use_views": config.views,
        "views": ["identity", "flip"] if features.flipped is not None else ["identity"],
        "search": search,
        "pipeline": pipeline,
        "extraction": {
            "seconds": attrs.get("extraction_seconds"),
            "n_images": attrs.get("n_images"),
            "n_computed": attrs.get("n_computed"),
            "engine": attrs.get("engine"),
            "created": attrs.get("created"),
        },
        "train_seconds": round(seconds, 3),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": recipes.versions(),
    }


def _plots(
    head: Any, config: HeadConfig, features: FeatureSet, metrics: dict, folder: Path
) -> None:
    """A confusion matrix per split, and the dense head's training curves."""
    from featurecache.heads.dense import DenseHead
    from featurecache.plots import confusion_matrix_png, curves_png

    title = f"{features.dataset} / {features.provenance['backbone']['name']} / {config.name}"
    for split, m in metrics.items():
        confusion_matrix_png(
            m["confusion_matrix"],
            features.class_names,
            folder / f"confusion_matrix_{split}.png",
            f"{title}\n{split} split: top-1 {m['accuracy']:.3f}, {m['n_images']} images",
        )
    if isinstance(head, DenseHead):
        held_out = (
            ""
            if "validation" in features.splits
            else f"\n(validation: {head.validation_fraction:.0%} of train held out, stratified)"
        )
        curves_png(head.history_, folder / "curves.png", title + held_out)
