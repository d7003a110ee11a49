"""The audit stage (``featurecache audit``): cached features in, findings and a page out.

For each data set x backbone of a pipeline, from the cache alone (no backbone runs, no
image is decoded but the few shown as thumbnails):

1. nearest neighbours of every image (:mod:`~featurecache.auditing.neighbours`);
2. exact and near-duplicates, their groups, the leak (:mod:`~featurecache.auditing.duplicates`);
3. likely label errors, by cleanlab, and outliers (:mod:`~featurecache.auditing.labels`);
4. each trained head's test mistakes and its top-1 without the leaked images
   (:mod:`~featurecache.auditing.mistakes`);
5. a 2-D map (:mod:`~featurecache.auditing.maps`), thumbnails
   (:mod:`~featurecache.auditing.thumbs`), ``audit.json``, CSVs and ``audit.html``
   (:mod:`~featurecache.auditing.write`) in ``runs/<pipeline>/<dataset>/<group>/audit/``,
   replaced whole at the end.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featurecache.auditing.duplicates import find_duplicates
from featurecache.auditing.findings import Searches, collect_findings
from featurecache.auditing.labels import find_label_issues, outlier_scores
from featurecache.auditing.mistakes import audit_heads
from featurecache.auditing.neighbours import nearest
from featurecache.auditing.write import write_audit
from featurecache.cache import Cache, FeatureSet
from featurecache.cache import recipe as recipes
from featurecache.config import AuditConfig, DatasetConfig, Pipeline
from featurecache.errors import CacheError, DependencyError
from featurecache.runs import AUDIT_DIR, AUDIT_HTML, AUDIT_JSON, HEAD_JSON, RunLayout, output_errors

log = logging.getLogger(__name__)


@dataclass
class AuditResult:
    """One data set x backbone audited: counts of each finding, each head's test top-1
    with and without the leaked images, where the page is, and the seconds per phase."""

    dataset: str
    backbone: str
    group: str
    n_images: int
    folder: str
    page: str
    counts: dict[str, int]
    accuracy: list[dict[str, Any]]
    search: str
    seconds: dict[str, float] = field(default_factory=dict)
    unchanged: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self._start, 3)
        self._start = now


def audit_pipeline(pipeline: Pipeline, *, only_changed: bool = False) -> list[AuditResult]:
    """Audit every data set x backbone of ``pipeline`` from its cache (``[audit]``'s
    settings, or the defaults of :class:`~featurecache.config.AuditConfig`).

    With ``only_changed`` (``refresh``), a group whose audit was made from the same
    cached rows, heads and settings is kept as it is (``unchanged=True``): nothing is
    read but its ``audit.json``.

    Raises
    ------
    CacheError
        If a data set x backbone has no features in the cache (run ``extract``).
    DependencyError
        If faiss (beyond ``exact_at_most`` images) or cleanlab is missing.
    """
    config = pipeline.audit or AuditConfig()
    cache = Cache(pipeline.cache)
    layout = RunLayout.of(pipeline)
    results = []
    for dataset in pipeline.datasets:
        for backbone in pipeline.backbones:
            found = recipes.require_group(cache, dataset.name, backbone)
            group_dir = layout.group_dir(dataset.name, found.group)
            inputs = audit_inputs(found.attrs, group_dir, config)
            kept = _unchanged(group_dir / AUDIT_DIR, inputs) if only_changed else None
            if kept is not None:
                results.append(kept)
                continue
            features = cache.read(dataset.name, found.group)
            with output_errors(layout.output):
                results.append(
                    audit_features(features, config, group_dir, cache, dataset, inputs=inputs)
                )
    return results


def check_audit(config: AuditConfig) -> None:
    """Fail before any work if the audit's libraries are missing (what ``refresh``
    checks before it extracts).

    Raises
    ------
    DependencyError
        If cleanlab is not installed, or ``map = "umap"`` without umap-learn (as
        :class:`~featurecache.errors.ConfigError`).
    """
    from featurecache.auditing.maps import choose_method

    try:
        import cleanlab  # noqa: F401
    except ImportError as exc:
        raise DependencyError(
            f"the audit needs cleanlab ({exc}); pip install 'featurecache[audit]'"
        ) from exc
    if config.map != "none":
        choose_method(config.map)


def audit_inputs(attrs: dict[str, Any], group_dir: Path, config: AuditConfig) -> dict[str, Any]:
    """What an audit's result depends on: the cached rows (the generation's content
    hash), the trained heads (each ``head.json``'s creation time) and the settings."""
    heads = {}
    for info in sorted(group_dir.glob(f"*/{HEAD_JSON}")):
        try:
            heads[info.parent.name] = json.loads(info.read_text()).get("created")
        except (OSError, ValueError):
            heads[info.parent.name] = None
    return {
        "content_hash": attrs.get("content_hash"),
        "generation": attrs.get("generation"),
        "heads": heads,
        "settings": asdict(config),
    }


def _unchanged(folder: Path, inputs: dict[str, Any]) -> AuditResult | None:
    """The saved audit's result if it was made from ``inputs``; else None."""
    try:
        saved = json.loads((folder / AUDIT_JSON).read_text())
    except (OSError, ValueError):
        return None
    if saved.get("inputs") != inputs or "result" not in saved:
        return None
    try:
        kept = AuditResult(**{**saved["result"], "unchanged": True})
    except TypeError:  # written by another version: audit again
        return None
    log.info("audit of %s: inputs unchanged, kept", folder)
    return kept


def _check_finite(features: FeatureSet) -> None:
    """Refuse rows whose features hold NaN or infinity (every search would misplace them).

    Raises
    ------
    CacheError
        Naming how many rows, the first one's source and the repair command.
    """
    bad = np.flatnonzero(~np.isfinite(features.X).all(axis=1))
    if len(bad):
        raise CacheError(
            f"{features.dataset}/{features.group}: {len(bad)} cached rows hold NaN or infinite "
            f"features (first: {features.sources[bad[0]]}); `featurecache verify --repair` "
            "recomputes damaged rows"
        )


def audit_features(
    features: FeatureSet,
    config: AuditConfig,
    group_dir: Path,
    cache: Cache | None = None,
    dataset: DatasetConfig | None = None,
    *,
    inputs: dict[str, Any] | None = None,
) -> AuditResult:
    """Audit one group's ``features``; write ``group_dir/audit/``. ``cache`` (to run the
    trained heads under ``group_dir``) and ``dataset`` (to make thumbnails from its
    sources) are optional: without them, those parts are left out and say so."""
    clock = _Clock()
    log.info("auditing %r: %d images", features, len(features))
    _check_finite(features)
    neighbours = nearest(
        features.X, config.neighbours, exact_at_most=config.exact_at_most, seed=config.seed
    )
    clock.lap("neighbours")
    duplicates = find_duplicates(features.keys, features.split, neighbours, config.threshold)
    clock.lap("duplicates")
    labels = find_label_issues(features.X, features.y, cv=config.cv, seed=config.seed)
    clock.lap("label_issues")
    scores = outlier_scores(neighbours)
    n_outliers = max(1, int(round(config.outliers * len(features))))
    outliers = np.argsort(-scores, kind="stable")[:n_outliers]
    leaked = duplicates.leaked_rows("test")
    heads = audit_heads(cache, features, group_dir, leaked) if cache is not None else []
    clock.lap("heads")
    searches = Searches(duplicates, labels, outliers, scores, heads)
    settings = {**asdict(config), "search": neighbours.method}
    findings = collect_findings(features, searches, settings)
    folder = group_dir / AUDIT_DIR
    result = AuditResult(
        dataset=features.dataset,
        backbone=features.backbone,
        group=features.group,
        n_images=len(features),
        folder=str(folder),
        page=str(folder / AUDIT_HTML),
        counts={
            "leaks": len(duplicates.leaks),
            "duplicate_pairs": len(duplicates.pairs),
            "duplicate_groups": len(duplicates.groups),
            "label_issues": 0 if labels is None else len(labels.flagged),
            "outliers": len(outliers),
        },
        accuracy=[{"head": h.name, **h.accuracy} for h in heads],
        search=neighbours.method,
        seconds=clock.seconds,
    )
    findings["inputs"] = inputs
    findings["result"] = result
    write_audit(folder, features, searches, findings, config, dataset, clock)
    return result
