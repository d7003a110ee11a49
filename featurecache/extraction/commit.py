"""Committing an extraction: a new generation in listing order, published atomically.

Reused rows are copied from the generations that hold them, computed rows come from
the staging area; the generation's attributes are the provenance of every row, and
``current`` is swapped to it last (:class:`featurecache.cache.store.GenerationWriter`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import numpy as np

from featurecache.cache import Cache, recipe, storable
from featurecache.cache.store import CODEC_DESCRIPTION, read_rows
from featurecache.cache.writing import CacheWriter, GenerationWriter
from featurecache.errors import DatasetError
from featurecache.extraction.job import ExtractJob
from featurecache.extraction.result import ExtractResult

log = logging.getLogger(__name__)


def commit(cache: Cache, job: ExtractJob) -> ExtractResult:
    """Write ``job``'s new generation, make it ``current`` and remove its staging area.

    Raises
    ------
    DatasetError
        If not one image of the data set could be decoded (nothing is committed).
    CacheError
        If the disk is full or not writable: nothing is committed, staging is kept.
    """
    listing, plan, stage = job.listing, job.plan, job.stage
    stage_keys = stage.keys()
    stage_rows = {index: row for row, index in enumerate(plan.compute) if stage_keys[row]}
    order = [i for i in range(len(listing.records)) if i in plan.reuse or i in stage_rows]
    if not order:
        raise DatasetError(
            f"data set {listing.name!r}: none of its {len(listing.records)} images could be "
            f"decoded (first: {stage.skipped[0]['reason'] if stage.skipped else 'none listed'})"
        )
    with cache.location.os_errors("write a new generation into"):
        content, split_counts = _write_generation(cache, job, order, stage_rows, stage_keys)
    stage.remove()
    result = _result(job, len(order), content, split_counts)
    log.info(
        "extracted %s/%s: %d computed, %d reused, %d skipped (%.1f s)",
        listing.name,
        job.group,
        job.n_computed,
        len(plan.reuse),
        len(result.skipped),
        result.seconds,
    )
    return result


def _write_generation(
    cache: Cache,
    job: ExtractJob,
    order: Sequence[int],
    stage_rows: dict[int, int],
    stage_keys: Sequence[str],
) -> tuple[str, dict[str, int]]:
    """Write the rows of ``order`` and the provenance as the group's next generation and
    make it ``current`` (removed again if anything fails); the content hash and split
    counts."""
    listing, plan = job.listing, job.plan
    writer = CacheWriter(cache).generation_writer(
        listing.name,
        job.group,
        arrays=job.arrays,
        group_attrs={
            "request_hash": recipe.request_hash(job.backbone),
            "recipe_hash": job.recipe_hash,
        },
    )
    try:
        content, split_counts = _write_rows(writer, job, order, stage_rows, stage_keys)
        writer.commit(
            {
                **_provenance(job, split_counts),
                "content_hash": content,
                "engine": job.engine,
                # the decoder, OpenVINO's precision hint, int8 calibration keys, the guard
                "engine_settings": {"decoder": job.backbone.decoder, **job.engine_settings},
                # extraction_seconds covers the n_computed images of this generation only
                "n_computed": len(stage_rows),
                "n_reused": len(plan.reuse),
            }
        )
    except BaseException:
        writer.abort()
        raise
    return content, split_counts


def _result(job: ExtractJob, n_images: int, content: str, split_counts: dict) -> ExtractResult:
    plan = job.plan
    return ExtractResult(
        dataset=job.listing.name,
        backbone=job.backbone.name,
        group=job.group,
        cache_hit=False,
        n_images=n_images,
        n_extracted=job.n_computed,
        weights=job.backbone.weights,
        seconds=time.perf_counter() - job.started,
        n_reused=len(plan.reuse),
        n_resumed=job.n_resumed,
        n_new=plan.n_new,
        n_changed=plan.n_changed,
        n_removed=plan.n_removed,
        images_per_second=job.n_computed / job.compute_seconds if job.n_computed else None,
        split_counts=split_counts,
        skipped=[*job.listing.skipped, *job.stage.skipped],
        content_hash=content,
        engine=job.engine,
        profile={k: round(v, 3) for k, v in asdict(job.profile).items()} if job.profile else {},
    )


def _write_rows(
    writer: GenerationWriter,
    job: ExtractJob,
    order: Sequence[int],
    stage_rows: dict[int, int],
    stage_keys: Sequence[str],
) -> tuple[str, dict[str, int]]:
    """Append the rows of ``order`` (record indices) chunk by chunk; return the content
    hash (of keys, labels and splits: what the heads are trained on) and split counts."""
    content = hashlib.blake2b(digest_size=16)
    split_counts: dict[str, int] = {}
    for start in range(0, len(order), writer.rows_per_chunk):
        window = order[start : start + writer.rows_per_chunk]
        records = [job.listing.records[i] for i in window]
        keys = [job.plan.keys.get(i) or stage_keys[stage_rows[i]] for i in window]
        for r, k in zip(records, keys, strict=True):
            content.update(f"{k}\0{r.label}\0{r.split}\n".encode())
            split_counts[r.split] = split_counts.get(r.split, 0) + 1
        writer.append(
            _gather(window, job, stage_rows),
            labels=[r.label for r in records],
            split=[r.split for r in records],
            keys=keys,
            sources=[storable(r.source) for r in records],
            sizes=[r.size for r in records],
            mtimes=[r.mtime_ns for r in records],
        )
    return content.hexdigest(), split_counts


def _gather(
    window: Sequence[int], job: ExtractJob, stage_rows: dict[int, int]
) -> dict[str, np.ndarray]:
    """Every array's rows for ``window`` (record indices), from the generations that
    hold them or the staging group (``None`` in the plan's reuse map)."""
    by_source: dict[int, tuple[Any, list[int], list[int]]] = {}
    for position, index in enumerate(window):
        if index in job.plan.reuse:
            source, row = job.plan.reuse[index]
        else:
            source, row = None, stage_rows[index]
        entry = by_source.setdefault(id(source), (source, [], []))
        entry[1].append(position)
        entry[2].append(row)
    out = {}
    for spec in job.arrays:
        values = np.empty((len(window), *spec.shape), spec.dtype)
        for source, positions, rows in by_source.values():
            array = job.stage.array(spec.name) if source is None else source[spec.name]
            order = np.argsort(rows)
            values[np.asarray(positions)[order]] = read_rows(array, np.asarray(rows)[order])
        out[spec.name] = values
    return out


def _provenance(job: ExtractJob, split_counts: dict[str, int]) -> dict[str, Any]:
    backbone, listing = job.backbone, job.listing
    return {
        "request_hash": recipe.request_hash(backbone),
        "recipe_hash": job.recipe_hash,
        "recipe": recipe.request(backbone),
        "dataset": {**listing.config.describe(), "fingerprint": listing.fingerprint},
        "class_names": listing.class_names,
        "backbone": backbone.describe(),
        "weights": job.weights,
        "input_size": backbone.input_size,
        "preprocessing": backbone.preprocessing,
        "pooling": backbone.pooling,
        "resize": recipe.RESIZE_METHOD,
        "feature_dim": next(a.shape[0] for a in job.arrays if a.name == "features"),
        "arrays": {spec.name: spec.describe() for spec in job.arrays},
        "codec": CODEC_DESCRIPTION,
        "batch_size": job.batch_size,
        "versions": recipe.versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "extraction_seconds": round(job.compute_seconds, 3),
        "split_counts": split_counts,
        "skipped": [*job.listing.skipped, *job.stage.skipped],
    }
