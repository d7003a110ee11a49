"""Extraction on a Dask cluster: shards of whole batches, one worker each, one commit.

The client (the ``featurecache`` process) plans as it does locally, then cuts
each backbone's missing batches into **shards** of consecutive whole batches and
submits one Dask task per shard (``dask.distributed``: an existing cluster by
its scheduler address, or a ``LocalCluster`` of worker processes):

* A shard's worker lists the data set itself (and checks that it sees the same
  files, by the listing fingerprint), builds the backbone once per worker
  process (and checks the recipe hash: same weights, same library versions),
  decodes and runs exactly the batches the local run would run, and writes each
  batch into its own chunk of the staging arrays. A chunk therefore has exactly
  one writer, which zarr needs (concurrent partial writes to one chunk lose
  data, zarr-python issue #3682). Same batches, same kernels: the features are
  identical to a local run's (``tests/extraction/test_dask.py`` checks it bit for bit).
* The client records each shard in the stage as its result arrives, and only
  after every shard has succeeded does it assemble and commit the generation:
  one pointer write makes the new rows visible.
* A shard that raises is retried (``retries``, Dask's own); a dead worker's shard is
  rescheduled by Dask. Finished shards are recorded by the client and their results
  released at once. If a shard still fails, or SIGTERM / SIGINT comes, nothing is
  committed and every finished shard stays in staging for the next run.

Shard size: :data:`MAX_SHARD_BATCHES` batches at most, fewer to give each worker
:data:`SHARDS_PER_WORKER` shards. Where the images come from objects of many images
(WebDataset tar shards, Parquet files), a shard of work also starts at each new object
(:func:`_tasks`), so that a worker fetches one object per shard of work; the objects
new to the stat index are read on the workers too (:func:`object_mapper`), so the
client lists objects but never reads an image.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

from featurecache.backbones import build_backbone
from featurecache.cache import Cache, recipe
from featurecache.cache.staging import write_stage_batch
from featurecache.config import BackboneConfig, DatasetConfig
from featurecache.datasets import Listing, ObjectIndex, list_dataset
from featurecache.errors import ClusterError, DatasetError, EngineError
from featurecache.extraction.cluster import LazyClient
from featurecache.extraction.engines import Extractor, open_extractor
from featurecache.extraction.job import ExtractJob
from featurecache.extraction.loop import BatchOutput, BatchWork, run_batches
from featurecache.extraction.result import Profile
from featurecache.stopping import graceful_stop

log = logging.getLogger(__name__)

#: Most batches in one shard (a dead worker loses at most this much work).
MAX_SHARD_BATCHES = 8
#: Shards per worker wanted, so that fast workers take more of them.
SHARDS_PER_WORKER = 4


def shard_batches(n_batches: int, n_workers: int) -> int:
    """Batches per shard: at most :data:`MAX_SHARD_BATCHES`, and small enough that each
    worker gets :data:`SHARDS_PER_WORKER` shards when there are that many batches."""
    wanted = math.ceil(n_batches / (SHARDS_PER_WORKER * max(1, n_workers)))
    return max(1, min(MAX_SHARD_BATCHES, wanted))


@dataclass(frozen=True)
class ShardSpec:
    """Everything a worker needs to compute one shard (sent to it by pickle)."""

    cache_url: str  # the location holding the stage (the cache's workspace)
    stage_path: str
    dataset: DatasetConfig
    fingerprint: str
    backbone: BackboneConfig
    index_url: str | None  # the data set's stat index (tar shards, Parquet files)
    skipped_objects: tuple[str, ...]  # objects the client left out (gone, unreadable)
    engine: str  # as recorded (recipe.recorded_engine)
    engine_dir: str
    recipe_hash: str
    batch_size: int
    batches: tuple[int, ...]
    indices: tuple[tuple[int, ...], ...]  # record indices of each batch

    @property
    def n_images(self) -> int:
        return sum(len(rows) for rows in self.indices)


@dataclass
class ShardResult:
    """What a worker did: the batches written, images skipped, images computed."""

    batches: tuple[int, ...]
    skipped: list[dict[str, str]] = field(default_factory=list)
    n_computed: int = 0
    seconds: float = 0.0
    worker: str = ""
    profile: dict[str, float] = field(default_factory=dict)


#: Per worker process: listings and extractors, reused by later shards.
_WORKER_STATE: dict[Any, Any] = {}


def _listing(spec: ShardSpec) -> Listing:
    key = ("listing", spec.fingerprint)
    if key not in _WORKER_STATE:
        listing = list_dataset(
            spec.dataset, ObjectIndex(spec.index_url), exclude=spec.skipped_objects
        )
        if listing.fingerprint != spec.fingerprint:
            listing.close()
            raise DatasetError(
                f"data set {spec.dataset.name!r}: this worker ({os.uname().nodename}) sees "
                "other files than the client (listing fingerprints differ); the data must be "
                "at the same path, unchanged, on every worker"
            )
        _WORKER_STATE[key] = listing
    return _WORKER_STATE[key]


def _extractor(spec: ShardSpec) -> Extractor:
    key = ("extractor", spec.recipe_hash)
    if key not in _WORKER_STATE:
        built = build_backbone(spec.backbone)
        found = recipe.recipe_hash(spec.backbone, built.weights_sha256, spec.engine)
        if found != spec.recipe_hash:
            raise EngineError(
                f"worker {os.uname().nodename} builds {spec.backbone.name} with another "
                f"recipe ({found[:12]} vs the client's {spec.recipe_hash[:12]}): different "
                "weights, Keras backend (KERAS_BACKEND) or backend/Keras versions; install and "
                "set the same on every worker"
            )
        model_id = recipe.model_id(spec.backbone, built.weights_sha256)
        engine = recipe.requested_engine(spec.engine)
        # an int8 model is the one the client calibrated into the engine folder
        _WORKER_STATE[key] = open_extractor(
            built,
            engine,
            Path(spec.engine_dir),
            model_id,
            spec.batch_size,
            dataset=spec.dataset.name,
        )
    return _WORKER_STATE[key]


def object_mapper(client: Any, retries: int) -> Any:
    """A :data:`~featurecache.datasets.sharded.Mapper` that reads new objects (tar shards,
    Parquet files) on the Dask workers, each straight from storage, with Dask's retries:
    the client only lists them."""

    def mapper(function: Any, items: Any) -> list[Any]:
        connected = client.get() if isinstance(client, LazyClient) else client
        futures = connected.map(function, items, retries=retries, pure=False)
        return list(connected.gather(futures))

    return mapper


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return os.uname().nodename


class ShardWriter:
    """Writes each batch of a shard into its own chunk of the stage, from the worker, and
    counts what it wrote in ``result`` (the client records the shard when it returns)."""

    def __init__(self, spec: ShardSpec, result: ShardResult) -> None:
        self.spec = spec
        self.result = result

    def write(self, work: BatchWork, number: int, output: BatchOutput) -> None:
        spec = self.spec
        write_stage_batch(
            spec.cache_url, spec.stage_path, number, spec.batch_size, output.arrays, output.keys
        )
        self.result.skipped.extend(output.skipped)
        self.result.n_computed += output.n_computed


def compute_shard(spec: ShardSpec) -> ShardResult:
    """Run on a worker: compute the shard's batches and write each into its stage chunk."""
    start = time.perf_counter()
    result = ShardResult(batches=spec.batches, worker=_worker_name())
    work = BatchWork(_extractor(spec), spec.batches, spec.indices)
    profile = run_batches(_listing(spec), [work], spec.batch_size, ShardWriter(spec, result))
    result.seconds = time.perf_counter() - start
    result.profile = asdict(profile)
    return result


def _shards_done(done: int, total: int) -> str:
    return f"{done} of {total} shards"


def run_on_cluster(
    client: Any,
    cache: Cache,
    listing: Listing,
    jobs: Sequence[ExtractJob],
    *,
    retries: int = 2,
    progress: bool = False,
) -> None:
    """Compute every job's missing batches on the cluster and record them in the stages.

    ``client`` is a ``distributed.Client`` or a :class:`LazyClient` (connected only if
    some batch is missing). Fills in each job's ``n_computed`` and ``compute_seconds``.

    Raises
    ------
    ClusterError
        If a shard still fails after its retries (or its workers keep dying); the
        shards that finished are kept in staging for the next run.
    Stopped
        On SIGTERM or SIGINT, when the next shard has finished (the others are cancelled).
    """
    if not any(job.missing() for job in jobs):
        return
    if isinstance(client, LazyClient):
        client = client.get()
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    submitted = _submit(client, cache, listing, jobs, n_workers, retries)
    start = time.perf_counter()
    _collect(submitted, listing, n_workers, retries, progress)
    for job in {id(job): job for job, _ in submitted.values()}.values():
        job.compute_seconds = time.perf_counter() - start


def _submit(
    client: Any,
    cache: Cache,
    listing: Listing,
    jobs: Sequence[ExtractJob],
    n_workers: int,
    retries: int,
) -> dict[Any, tuple[ExtractJob, ShardSpec]]:
    """One Dask task per shard of whole batches; futures -> (job, shard)."""
    token = uuid.uuid4().hex[:8]
    left_out = tuple(s["source"] for s in listing.skipped if "#" not in s["source"])
    submitted: dict[Any, tuple[ExtractJob, ShardSpec]] = {}
    for job in jobs:
        batches = job.missing()
        per_shard = shard_batches(len(batches), n_workers)
        for numbers in _tasks(job, listing, batches, per_shard):
            spec = ShardSpec(
                cache_url=job.stage.location.url(),  # the cache's workspace, beside it
                stage_path=job.stage.path,
                dataset=listing.config,
                fingerprint=listing.fingerprint,
                index_url=cache.object_index_url(listing.name),
                skipped_objects=left_out,
                backbone=job.backbone,
                engine=job.engine,
                engine_dir=str(cache.location.engine_dir()),
                recipe_hash=job.recipe_hash,
                batch_size=job.batch_size,
                batches=numbers,
                indices=tuple(tuple(job.rows(b)) for b in numbers),
            )
            key = f"featurecache-{listing.name}-{job.backbone.name}-{numbers[0]:06d}-{token}"
            future = client.submit(compute_shard, spec, key=key, retries=retries, pure=False)
            submitted[future] = (job, spec)
        if batches:
            log.info(
                "%s x %s: %d batches in %d shards of up to %d on %d workers",
                listing.name,
                job.backbone.name,
                len(batches),
                math.ceil(len(batches) / per_shard),
                per_shard,
                n_workers,
            )
    return submitted


def _tasks(
    job: ExtractJob, listing: Listing, batches: Sequence[int], per_shard: int
) -> list[tuple[int, ...]]:
    """The shards of work: consecutive batches, at most ``per_shard`` each, and a new one
    at each new object (tar shard, Parquet file) where the images come from objects."""
    tasks: list[list[int]] = []
    last = None
    for number in batches:
        source = listing.records[job.rows(number)[0]].source
        obj = source.rpartition("#")[0] if "#" in source else None
        if not tasks or len(tasks[-1]) >= per_shard or (obj is not None and obj != last):
            tasks.append([])
        tasks[-1].append(number)
        last = obj
    return [tuple(t) for t in tasks]


def _collect(
    submitted: dict[Any, tuple[ExtractJob, ShardSpec]],
    listing: Listing,
    n_workers: int,
    retries: int,
    progress: bool,
) -> None:
    """Record each shard in its stage as it finishes, and release its result at once."""
    from distributed import as_completed

    total = sum(spec.n_images for _, spec in submitted.values())
    bar = tqdm(total=total, unit="img", dynamic_ncols=True, disable=not progress)
    bar.set_description(f"{listing.name} on {n_workers} Dask workers")
    done = 0
    with bar, graceful_stop() as stop:
        try:
            for future in as_completed(list(submitted)):
                job, spec = submitted[future]
                result = future.result()
                job.stage.record(result.batches, result.skipped)
                for item in result.skipped:
                    log.warning("skipped %s", item["reason"])
                job.n_computed += result.n_computed
                log.info(
                    "shard of batches %d-%d: %d images in %.2f s on %s: %s",
                    result.batches[0],
                    result.batches[-1],
                    result.n_computed,
                    result.seconds,
                    result.worker,
                    Profile(**result.profile).describe(),
                )
                future.release()  # the result is recorded: a dead worker cannot lose it
                done += 1
                bar.update(spec.n_images)
                stop.check(partial(_shards_done, done, len(submitted)))
        except BaseException as exc:  # a Stopped too: no shard keeps running
            for future in submitted:
                future.cancel()
            if not isinstance(exc, Exception):
                raise
            raise ClusterError(
                f"a shard of {listing.name!r} failed on the Dask cluster after {retries} "
                f"retries: {type(exc).__name__}: {exc}. Nothing was committed; the "
                f"{done} shards that finished are kept in staging, so the next run "
                "computes only the rest"
            ) from exc
