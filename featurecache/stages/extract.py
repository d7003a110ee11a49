"""Stage 1: data set x backbone -> a committed generation of bottleneck features.

Incremental and crash-safe, for cron (``featurecache refresh``) as much as for
people:

1. **Plan.** List the data set (names, sizes, mtimes only). An unchanged listing
   fingerprint is a cache hit. Otherwise each image is matched to the committed
   generation by ``(source, size, mtime)`` without reading it, as git's index
   does; the rest are hashed (BLAKE2b of their bytes) and found by content key in
   this group or in any other data set's group with the same recipe. Only what is
   still missing is computed.
2. **Compute** the missing images in fixed batches (reader -> model -> writer: a
   thread pool decodes ahead while the backbone runs), each batch made durable in
   a staging group before the next. A killed run resumes from the last finished
   batch, with the same batches, so the features are bit-identical to an
   uninterrupted run's.
3. **Commit** a new generation in listing order (reused rows copied, computed rows
   from staging) and swap ``current`` atomically.

All of it runs under the data set's writer lock.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from tqdm import tqdm

from featurecache import engines, recipe
from featurecache.backbones import BackboneConfig, BuiltBackbone
from featurecache.config import Pipeline
from featurecache.datasets import Listing, list_dataset
from featurecache.errors import DatasetError
from featurecache.stages import shards
from featurecache.stages.decoding import decoded_batches
from featurecache.stages.plan import Plan, make_plan, plan_id
from featurecache.store import CODEC_DESCRIPTION, Cache, ComputeStage, storable

log = logging.getLogger(__name__)


@dataclass
class ExtractResult:
    """What one (data set, backbone) extraction did; ``--json`` prints these.

    ``n_extracted`` images went through the backbone in this run (``n_resumed``
    more had been computed by an interrupted run); ``n_reused`` were taken from
    the cache; ``n_new``, ``n_changed`` and ``n_removed`` compare the data set
    with the previous generation.
    """

    dataset: str
    backbone: str
    group: str
    cache_hit: bool
    n_images: int
    n_extracted: int
    weights: str
    seconds: float
    n_reused: int = 0
    n_resumed: int = 0
    n_new: int = 0
    n_changed: int = 0
    n_removed: int = 0
    images_per_second: float | None = None
    split_counts: dict[str, int] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    content_hash: str = ""
    engine: str = ""
    execution: str = "local"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def extract(
    pipeline: Pipeline,
    *,
    progress: bool = False,
    wait: bool = True,
    cluster: shards.Cluster | None = None,
) -> list[ExtractResult]:
    """Extract every data set x backbone of ``pipeline`` into its cache.

    With ``cluster``, the backbones run on a Dask cluster, shard by shard
    (:mod:`featurecache.stages.shards`); the features are the same as a local run's.

    Raises
    ------
    DatasetError
        If a data set cannot be listed, or none of its images decodes.
    ConfigError
        If a backbone cannot be built with its arguments or weights.
    LockedError
        If ``wait`` is false and another process is writing the same data set.
    ClusterError
        If the Dask cluster cannot be used, or a shard fails after its retries.
    """
    cache = Cache(pipeline.cache)
    results = []
    with ExitStack() as stack:
        client = None
        if cluster is not None:
            shards.check_reachable(cache, cluster)
            # Connected (a LocalCluster started) only when something must be computed.
            client = shards.LazyClient(cluster, stack)
        for dataset in pipeline.datasets:
            listing = list_dataset(dataset)
            try:
                results.extend(
                    extract_dataset(
                        cache,
                        listing,
                        pipeline.backbones,
                        batch_size=pipeline.batch_size,
                        progress=progress,
                        wait=wait,
                        client=client,
                        retries=cluster.retries if cluster else 0,
                    )
                )
            finally:
                listing.close()
        for result in results:
            result.execution = cluster.describe() if cluster else "local"
    return results


@dataclass
class _Job:
    """One backbone's pending extraction over a data set."""

    backbone: BackboneConfig
    start: float
    plan: Plan
    built: BuiltBackbone | None
    runner: engines.Runner | None
    engine: str
    known: Any
    recipe_hash: str
    group: str
    stage: ComputeStage
    todo: list[int]
    batches: deque[int]
    n_resumed: int
    n_computed: int = 0
    compute_seconds: float = 0.0
    buffer: list[tuple[str | None, np.ndarray | None, dict[str, str] | None]] = field(
        default_factory=list
    )


def extract_one(
    cache: Cache,
    listing: Listing,
    backbone: BackboneConfig,
    *,
    batch_size: int = 32,
    progress: bool = False,
    wait: bool = True,
) -> ExtractResult:
    """Extract one data set with one backbone: only what the cache lacks."""
    return extract_dataset(
        cache, listing, [backbone], batch_size=batch_size, progress=progress, wait=wait
    )[0]


def extract_dataset(
    cache: Cache,
    listing: Listing,
    backbones: Sequence[BackboneConfig],
    *,
    batch_size: int = 32,
    progress: bool = False,
    wait: bool = True,
    client: Any = None,
    retries: int = 0,
) -> list[ExtractResult]:
    """Extract one data set with several backbones in one pass over the images.

    With a Dask ``client``, the missing batches run on its workers instead
    (:func:`featurecache.stages.shards.run_jobs`), each backbone separately.

    Each image is read and hashed once, and decoded once per distinct input size,
    for every backbone that lacks it. Each backbone still computes exactly the
    batches it would compute alone, so its features do not depend on which other
    backbones ran beside it.
    """
    cache.ensure()
    with cache.lock(listing.name, wait=wait):
        prepared = [_prepare(cache, listing, b, batch_size) for b in backbones]
        jobs = [p for p in prepared if isinstance(p, _Job)]
        if client is not None:
            shards.run_jobs(
                client, cache, listing, jobs, batch_size, retries=retries, progress=progress
            )
        else:
            _compute(listing, jobs, batch_size, progress)
        return [p if isinstance(p, ExtractResult) else _finish(cache, listing, p) for p in prepared]


def _prepare(
    cache: Cache, listing: Listing, backbone: BackboneConfig, batch_size: int
) -> _Job | ExtractResult:
    """Plan one backbone: a cache hit, or a job with its staging area and runner."""
    start = time.perf_counter()
    found = recipe.find_group(cache, listing.name, backbone)
    if found is not None and found.attrs["dataset"]["fingerprint"] == listing.fingerprint:
        log.info(
            "cache hit: %s/%s (%d images), nothing to compute",
            listing.name,
            found.group,
            found.attrs["n_images"],
        )
        return ExtractResult(
            dataset=listing.name,
            backbone=backbone.name,
            group=found.group,
            cache_hit=True,
            n_images=found.attrs["n_images"],
            n_extracted=0,
            weights=backbone.weights,
            seconds=time.perf_counter() - start,
            n_reused=found.attrs["n_images"],
            split_counts=found.attrs["split_counts"],
            skipped=found.attrs.get("skipped", []),
            content_hash=found.attrs.get("content_hash", ""),
            engine=found.attrs.get("engine", "tensorflow"),
        )
    known = found or recipe.find_any_group(cache, backbone)
    plan = make_plan(cache, listing, found, known.attrs["recipe_hash"] if known else None)
    built: BuiltBackbone | None = None
    runner: engines.Runner | None = None
    engine = known.attrs.get("engine", "tensorflow") if known else backbone.engine
    if plan.compute or known is None:
        built = shards.build(backbone)
        # "auto" is resolved once, then kept: switching would recompute everything.
        engine, runner = engines.select(
            built,
            engine,
            cache.location.engine_dir(),
            recipe.model_id(backbone, built.weights_sha256),
            batch_size,
        )
        recipe_hash = recipe.recipe_hash(backbone, built.weights_sha256, engine)
    else:
        recipe_hash = known.attrs["recipe_hash"]
    group = recipe.group_name(backbone, recipe_hash)
    stage = cache.stage(
        listing.name,
        group,
        plan_id(listing, recipe_hash, found, plan.compute, batch_size),
        n_records=len(plan.compute),
        feature_dim=backbone.feature_dim,
        batch=batch_size,
    )
    if stage.done:
        log.info(
            "resuming %s: %d of %d images were computed by an interrupted run",
            group,
            stage.records_done,
            len(plan.compute),
        )
    batches = stage.missing()
    return _Job(
        backbone=backbone,
        start=start,
        plan=plan,
        built=built,
        runner=runner,
        engine=engine,
        known=known,
        recipe_hash=recipe_hash,
        group=group,
        stage=stage,
        todo=[plan.compute[i] for b in batches for i in _rows(b, batch_size, len(plan.compute))],
        batches=deque(batches),
        n_resumed=stage.records_done - len(stage.skipped),
    )


def _rows(batch: int, batch_size: int, n_records: int) -> range:
    """Stage rows (positions in the plan's compute list) of batch number ``batch``."""
    return range(batch * batch_size, min(n_records, (batch + 1) * batch_size))


def _finish(cache: Cache, listing: Listing, job: _Job) -> ExtractResult:
    result = _commit(
        cache,
        listing,
        job.backbone,
        job.group,
        job.recipe_hash,
        job.plan,
        job.stage,
        job.built,
        job.known,
        job.compute_seconds,
        job.engine,
    )
    job.stage.remove()
    result.update(
        n_extracted=job.n_computed,
        n_resumed=job.n_resumed,
        seconds=time.perf_counter() - job.start,
        images_per_second=job.n_computed / job.compute_seconds if job.n_computed else None,
    )
    log.info(
        "extracted %s/%s: %d computed, %d reused, %d skipped (%.1f s)",
        listing.name,
        job.group,
        job.n_computed,
        len(job.plan.reuse),
        len(result["skipped"]),
        result["seconds"],
    )
    return ExtractResult(**result)


def _compute(listing: Listing, jobs: Sequence[_Job], batch_size: int, progress: bool) -> None:
    """Run every job's backbone over its missing images, decoding each image once per
    input size; each job's batches are made durable in its staging area as they fill."""
    need: dict[int, list[_Job]] = {}
    for job in jobs:
        if job.todo and (job.built is None or job.runner is None):
            raise RuntimeError("internal error: images to compute but no backbone built")
        for index in job.todo:
            need.setdefault(index, []).append(job)
    if not need:
        return
    order = sorted(need)
    names = " + ".join(job.backbone.name for job in jobs if job.todo)
    start = time.perf_counter()
    bar = tqdm(
        total=len(order),
        unit="img",
        dynamic_ncols=True,
        disable=not progress,
        desc=f"{listing.name} x {names}",
    )
    with bar:
        for batch in decoded_batches(listing, order, need, batch_size):
            for index, key, pixels, error in batch:
                for job in need[index]:
                    if error is not None:
                        skip = {
                            "source": storable(listing.records[index].source),
                            "reason": str(error),
                        }
                        job.buffer.append((None, None, skip))
                    else:
                        job.buffer.append((key, pixels[job.backbone.input_size], None))
                    if len(job.buffer) == batch_size:
                        _flush(job)
                bar.update(1)
        for job in jobs:
            if job.buffer:
                _flush(job)
    elapsed = time.perf_counter() - start
    for job in jobs:
        if job.todo:
            job.compute_seconds = elapsed


def _flush(job: _Job) -> None:
    """Run the backbone on the job's buffered batch, write it and record it in its stage."""
    features, keys, skipped = engines.run_batch(job.built, job.runner, job.buffer)
    batch = job.batches.popleft()
    job.stage.write(batch, features, keys)
    job.stage.record([batch], skipped)
    job.n_computed += sum(1 for k in keys if k)
    job.buffer.clear()


def _commit(
    cache,
    listing,
    backbone,
    group,
    recipe_hash,
    plan,
    stage,
    built,
    known,
    compute_seconds,
    engine,
) -> dict[str, Any]:
    stage_keys = stage.keys()
    stage_rows = {index: row for row, index in enumerate(plan.compute) if stage_keys[row]}
    order = [i for i in range(len(listing.records)) if i in plan.reuse or i in stage_rows]
    if not order:
        raise DatasetError(
            f"data set {listing.name!r}: none of its {len(listing.records)} images could be "
            f"decoded (first: {stage.skipped[0]['reason'] if stage.skipped else 'none listed'})"
        )
    weights = (
        {"spec": backbone.weights, "file": built.weights_file, "sha256": built.weights_sha256}
        if built is not None
        else dict(known.attrs["weights"])
    )
    if backbone.weights == "none":
        weights["random_seed"] = recipe.RANDOM_WEIGHTS_SEED
    writer = cache.generation_writer(
        listing.name,
        group,
        feature_dim=backbone.feature_dim,
        group_attrs={"request_hash": recipe.request_hash(backbone), "recipe_hash": recipe_hash},
        dtype=backbone.dtype,
    )
    content = hashlib.blake2b(digest_size=16)
    split_counts: dict[str, int] = {}
    try:
        for start in range(0, len(order), writer.rows_per_chunk):
            window = order[start : start + writer.rows_per_chunk]
            features = _gather(window, plan, stage, stage_rows, backbone.feature_dim)
            records = [listing.records[i] for i in window]
            keys = [plan.keys.get(i) or stage_keys[stage_rows[i]] for i in window]
            for r, k in zip(records, keys, strict=True):
                content.update(f"{k}\0{r.label}\0{r.split}\n".encode())
                split_counts[r.split] = split_counts.get(r.split, 0) + 1
            writer.append(
                features,
                labels=[r.label for r in records],
                split=[r.split for r in records],
                keys=keys,
                sources=[storable(r.source) for r in records],
                sizes=[r.size for r in records],
                mtimes=[r.mtime_ns for r in records],
            )
        attrs = _provenance(
            listing, backbone, weights, recipe_hash, split_counts, stage.skipped, compute_seconds
        )
        attrs["content_hash"] = content.hexdigest()
        attrs["engine"] = engine
        # extraction_seconds covers the n_computed images of this generation only
        attrs["n_computed"] = len(stage_rows)
        attrs["n_reused"] = len(plan.reuse)
        writer.commit(attrs)
    except BaseException:
        writer.abort()
        raise
    return dict(
        dataset=listing.name,
        backbone=backbone.name,
        group=group,
        cache_hit=False,
        n_images=len(order),
        n_extracted=0,
        weights=backbone.weights,
        seconds=0.0,
        n_reused=len(plan.reuse),
        n_new=plan.n_new,
        n_changed=plan.n_changed,
        n_removed=plan.n_removed,
        split_counts=split_counts,
        skipped=stage.skipped,
        content_hash=attrs["content_hash"],
        engine=engine,
    )


def _gather(window, plan: Plan, stage: ComputeStage, stage_rows, feature_dim: int) -> np.ndarray:
    """Features for ``window`` (record indices), from the cache or the staging group."""
    out = np.empty((len(window), feature_dim), np.float32)
    by_array: dict[int, tuple[Any, list[int], list[int]]] = {}
    for position, index in enumerate(window):
        array, row = (
            plan.reuse[index] if index in plan.reuse else (stage.features(), stage_rows[index])
        )
        entry = by_array.setdefault(id(array), (array, [], []))
        entry[1].append(position)
        entry[2].append(row)
    for array, positions, rows in by_array.values():
        order = np.argsort(rows)
        sorted_rows = np.asarray(rows)[order]
        values = array.get_orthogonal_selection((sorted_rows, slice(None)))
        out[np.asarray(positions)[order]] = values
    return out


def _provenance(listing, backbone, weights, recipe_hash, split_counts, skipped, seconds) -> dict:
    return {
        "request_hash": recipe.request_hash(backbone),
        "recipe_hash": recipe_hash,
        "recipe": recipe.request(backbone),
        "dataset": {**listing.config.describe(), "fingerprint": listing.fingerprint},
        "class_names": listing.class_names,
        "backbone": backbone.describe(),
        "weights": weights,
        "input_size": backbone.input_size,
        "preprocessing": backbone.preprocessing,
        "pooling": backbone.pooling,
        "resize": recipe.RESIZE_METHOD,
        "feature_dim": backbone.feature_dim,
        "codec": CODEC_DESCRIPTION,
        "versions": recipe.versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "extraction_seconds": round(seconds, 3),
        "split_counts": split_counts,
        "skipped": list(skipped),
    }
