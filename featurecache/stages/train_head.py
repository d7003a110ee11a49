"""Stage 2: train heads on cached features alone (the backbone is never built).

For each data set x backbone x head, the head is fitted on the ``train`` split,
evaluated on every split present, and written to
``<output>/<pipeline>/<dataset>/<group>/<head>/``:

* ``model.joblib`` (scikit-learn heads) or ``model.keras`` (dense head);
* ``head.json``: kind, parameters, class names and the cache group it came from,
  with the backbone configuration and weights identity ``predict`` needs;
* ``metrics.json``: one object per split (:func:`featurecache.metrics.evaluate`);
* ``confusion_matrix_<split>.png`` per split, and ``curves.png`` (accuracy and
  loss per epoch, train vs validation) for the dense head.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from featurecache import recipe
from featurecache.config import HeadConfig, Pipeline
from featurecache.errors import CacheError, FeaturecacheError
from featurecache.heads import HEAD_JSON, build_head, canonical_kind, predict_proba, save_head
from featurecache.store import Cache, FeatureSet, cache_id

log = logging.getLogger(__name__)


@dataclass
class HeadResult:
    """One trained head; ``--json`` prints these."""

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

    With ``only_changed``, a head whose folder already holds a model trained on
    the same rows (content hash), with the same kind and parameters, is kept as is
    and reported with ``trained=False``.

    Raises
    ------
    CacheError
        If a data set x backbone has no features in the cache (run ``extract``).
    ConfigError
        If a head kind or parameter is invalid.
    """
    cache = Cache(pipeline.cache)
    kinds = [canonical_kind(h.kind) for h in pipeline.heads]  # fail fast on a typo
    results = []
    for dataset in pipeline.datasets:
        for backbone in pipeline.backbones:
            found = recipe.find_group(cache, dataset.name, backbone)
            if found is None:
                raise CacheError(
                    f"the cache {str(pipeline.cache)!r} has no features for data set "
                    f"{dataset.name!r} with backbone {backbone.name} ({backbone.input_size} px, "
                    f"{backbone.pooling} pooling, weights {backbone.weights}); run "
                    "`featurecache extract` with the same settings first"
                )
            features = cache.read(dataset.name, found.group)
            for head, kind in zip(pipeline.heads, kinds, strict=True):
                folder = pipeline.output / pipeline.name / dataset.name / found.group / head.name
                if only_changed and (kept := _unchanged(folder, head, kind, found.attrs)):
                    results.append(kept)
                    continue
                results.append(
                    train_one(
                        features,
                        head,
                        kind,
                        folder,
                        cache_root=pipeline.cache,
                        dataset=dataset.name,
                        group=found.group,
                        pipeline={
                            "name": pipeline.name,
                            "source": str(pipeline.source) if pipeline.source else None,
                        },
                    )
                )
    return results


def _unchanged(folder: Path, head: HeadConfig, kind: str, attrs: dict) -> HeadResult | None:
    """The existing head's result if it was trained on exactly these inputs."""
    try:
        info = json.loads((folder / HEAD_JSON).read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    same = (
        info.get("content_hash") == attrs.get("content_hash")
        and info.get("recipe_hash") == attrs.get("recipe_hash")
        and info.get("kind") == kind
        and info.get("params") == dict(head.params)
        and info.get("search", {}).get("grid_given") == _grid(head)
        and info.get("search", {}).get("cv") == (head.cv if head.search else None)
        and (folder / info.get("model_file", "-")).is_file()
    )
    if not same:
        return None
    return HeadResult(
        dataset=info["cache"]["dataset"],
        backbone=attrs["backbone"]["name"],
        group=info["cache"]["group"],
        head=head.name,
        kind=kind,
        folder=str(folder),
        seconds=0.0,
        accuracy={s: m["accuracy"] for s, m in metrics.items()},
        trained=False,
    )


def _grid(head: HeadConfig) -> dict[str, list] | None:
    grid = {k: list(v) for k, v in head.search.items()}
    return {**grid, "search_samples": head.search_samples} if grid else None


def train_one(
    features: FeatureSet,
    head_config: HeadConfig,
    kind: str,
    folder: Path,
    *,
    cache_root: Path,
    dataset: str,
    group: str,
    pipeline: dict[str, Any] | None = None,
) -> HeadResult:
    """Fit one head on the train split, evaluate every split, write its folder.

    With ``head_config.search``, the parameters are first chosen by stratified
    cross-validation on the train split (:func:`featurecache.heads.tune`); the
    choice and every candidate's score go to ``head.json`` under ``search``.
    """
    from featurecache.dense_head import DenseHead
    from featurecache.heads import tune
    from featurecache.metrics import evaluate
    from featurecache.plots import confusion_matrix_png, curves_png

    x_train, y_train = features.subset("train")
    if len(x_train) == 0:
        raise CacheError(f"{dataset}/{group} has no 'train' images to fit a head on")
    n_classes = len(features.class_names)
    head = build_head(kind, head_config.params)
    search: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        if head_config.search:
            head, search = tune(
                head,
                head_config.search,
                x_train,
                y_train,
                cv=head_config.cv,
                max_samples=head_config.search_samples,
            )
            search["grid_given"] = _grid(head_config)
            log.info(
                "head %s: cross-validation chose %s (%d-fold top-1 %.3f)",
                head_config.name,
                search["best_params"],
                head_config.cv,
                search["best_cv_accuracy"],
            )
        elif isinstance(head, DenseHead) and "validation" in features.splits:
            head.fit(x_train, y_train, validation_data=features.subset("validation"))
        else:
            head.fit(x_train, y_train)
    except ValueError as exc:
        raise FeaturecacheError(f"head {head_config.name!r} could not be fitted: {exc}") from exc
    seconds = time.perf_counter() - start
    metrics = {}
    for split in features.splits:
        x, y = features.subset(split)
        metrics[split] = evaluate(y, predict_proba(head, x, n_classes), features.class_names)
    attrs = features.attrs
    save_head(
        head,
        folder,
        {
            "name": head_config.name,
            "kind": kind,
            "params": dict(head_config.params),
            "class_names": features.class_names,
            "cache": {"root": cache_id(cache_root), "dataset": dataset, "group": group},
            "backbone": attrs["backbone"],
            "weights": attrs["weights"],
            "recipe_hash": attrs["recipe_hash"],
            "content_hash": attrs.get("content_hash"),
            "feature_dim": attrs["feature_dim"],
            "search": search,
            "pipeline": pipeline or {},
            "extraction": {
                "seconds": attrs.get("extraction_seconds"),
                "n_images": attrs.get("n_images"),
                "n_computed": attrs.get("n_computed"),
                "engine": attrs.get("engine"),
                "created": attrs.get("created"),
            },
            "train_seconds": round(seconds, 3),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": recipe.versions(),
        },
    )
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    title = f"{dataset} / {attrs['backbone']['name']} / {head_config.name}"
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
            else (f"\n(validation: {head.validation_fraction:.0%} of train held out, stratified)")
        )
        curves_png(head.history_, folder / "curves.png", title + held_out)
    accuracy = {split: m["accuracy"] for split, m in metrics.items()}
    log.info(
        "head %s on %s/%s: %s (%.1f s)",
        head_config.name,
        dataset,
        group,
        ", ".join(f"{s} {a:.3f}" for s, a in accuracy.items()),
        seconds,
    )
    return HeadResult(
        dataset=dataset,
        backbone=attrs["backbone"]["name"],
        group=group,
        head=head_config.name,
        kind=kind,
        folder=str(folder),
        seconds=seconds,
        accuracy=accuracy,
    )
