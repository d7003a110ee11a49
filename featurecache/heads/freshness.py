"""Whether a trained head is up to date, and which heads of a pipeline need training.

A head folder is up to date when its ``head.json`` records the rows (content hash) and
the recipe of the cache group at hand, the same kind, parameters, taps, views and
search as the head's configuration, and its model file and ``metrics.json`` are there.
``refresh`` (:func:`featurecache.heads.train.train_heads` with ``only_changed``) keeps
such a head as is; :func:`untried_heads` names the heads that no trained head matches,
the ones a refresh must check before it extracts. Only ``head.json`` and
``metrics.json`` are read: nothing is imported, nothing is fitted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featurecache.config import HeadConfig, Pipeline
from featurecache.errors import ConfigError
from featurecache.heads.estimators import canonical_kind
from featurecache.runs import HeadRecord, RunLayout


def fresh_record(folder: Path, head: HeadConfig, kind: str, attrs: dict) -> HeadRecord | None:
    """The records of the head in ``folder`` if it was trained on exactly these inputs
    (``attrs``: the cache group's attributes), else None."""
    try:
        record = HeadRecord.read(folder)
    except ConfigError:  # no head there yet, or unreadable: train it
        return None
    if not record.metrics:
        return None
    info = record.info
    same = (
        info.get("content_hash") == attrs.get("content_hash")
        and info.get("recipe_hash") == attrs.get("recipe_hash")
        and same_settings(info, head, kind)
        and (folder / info.get("model_file", "-")).is_file()
    )
    return record if same else None


def same_settings(info: dict[str, Any], head: HeadConfig, kind: str) -> bool:
    """Whether ``head.json``'s ``info`` records a head of exactly these settings."""
    return (
        info.get("kind") == kind
        and info.get("params") == dict(head.params)
        and info.get("taps", []) == list(head.taps)
        and info.get("use_views", True) == head.views
        and info.get("search", {}).get("grid_given") == grid_given(head)
        and info.get("search", {}).get("cv") == (head.cv if head.search else None)
    )


def untried_heads(pipeline: Pipeline) -> list[HeadConfig]:
    """The heads of ``pipeline`` that no trained head of it (any data set, any cache
    group) was trained with exactly these settings: new or edited heads, the ones a
    refresh must check before it extracts. Reads ``head.json`` files only.

    Raises
    ------
    ConfigError
        For an unknown head kind.
    """
    layout = RunLayout.of(pipeline)
    untried = []
    for head in pipeline.heads:
        kind = canonical_kind(head.kind)
        records = [r for d in pipeline.datasets for r in layout.heads_named(d.name, head.name)]
        if not any(r.metrics and same_settings(r.info, head, kind) for r in records):
            untried.append(head)
    return untried


def grid_given(head: HeadConfig) -> dict[str, Any] | None:
    """The search grid as ``head.json`` records it under ``search.grid_given`` (with
    ``search_samples``), or None for a head without a search."""
    grid: dict[str, Any] = {k: list(v) for k, v in head.search.items()}
    return {**grid, "search_samples": head.search_samples} if grid else None
