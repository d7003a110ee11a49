"""Stage 1: data set x backbone -> a committed generation of bottleneck features.

Incremental and crash-safe, for cron (``featurecache refresh``) as much as for people:

1. **Plan** (:mod:`~featurecache.extraction.plan`). List the data set (names, sizes,
   mtimes only). An unchanged listing fingerprint is a cache hit. Otherwise each image
   is matched to the committed generation by ``(source, size, mtime)`` without reading
   it, as git's index does; the rest are hashed (BLAKE2b of their bytes) and found by
   content key in this group or in any other data set's group with the same recipe.
   Only what is still missing is computed.
2. **Compute** the missing images in fixed batches (:func:`~featurecache.extraction.loop.
   run_batches`: a thread pool decodes ahead while the backbone runs), in this
   process (:mod:`~featurecache.extraction.local`) or on a Dask cluster
   (:mod:`~featurecache.extraction.dask`), each batch made durable in a staging group.
   A killed run resumes from the last finished batch, with the same batches, so the
   features are bit-identical to an uninterrupted run's.
3. **Commit** (:mod:`~featurecache.extraction.commit`) a new generation in listing order
   and swap ``current`` atomically.

All of it runs under the data set's writer lock.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

from featurecache.cache import Cache
from featurecache.cache.writing import CacheWriter
from featurecache.config import BackboneConfig, Pipeline
from featurecache.datasets import Listing, ObjectIndex, list_dataset
from featurecache.extraction import cluster as clusters
from featurecache.extraction import dask
from featurecache.extraction.commit import commit
from featurecache.extraction.job import ExtractJob, plan_backbone
from featurecache.extraction.local import run_local
from featurecache.extraction.result import ExtractResult


def extract(
    pipeline: Pipeline,
    *,
    progress: bool = False,
    wait: bool = True,
    cluster: clusters.Cluster | None = None,
) -> list[ExtractResult]:
    """Extract every data set x backbone of ``pipeline`` into its cache.

    With ``cluster``, the backbones run on a Dask cluster, shard by shard
    (:mod:`featurecache.extraction.dask`); the features are the same as a local run's.

    Raises
    ------
    DatasetError
        If a data set cannot be listed, or none of its images decodes.
    ConfigError
        If a backbone cannot be built with its arguments or weights.
    CacheError
        If the cache cannot be created or written.
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
            clusters.check_reachable(cache, cluster)
            # Connected (a LocalCluster started) only when something must be computed.
            client = clusters.LazyClient(cluster, stack)
        for dataset in pipeline.datasets:
            index = ObjectIndex(cache.object_index_url(dataset.name))
            mapper = dask.object_mapper(client, cluster.retries) if client and cluster else None
            listing = list_dataset(dataset, index, mapper)
            try:
                results += extract_dataset(
                    cache,
                    listing,
                    pipeline.backbones,
                    batch_size=pipeline.batch_size,
                    progress=progress,
                    wait=wait,
                    client=client,
                    retries=cluster.retries if cluster else 0,
                )
            finally:
                listing.close()
    for result in results:
        result.execution = cluster.describe() if cluster else "local"
    return results


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
    damaged: Mapping[tuple[str, str], Collection[int] | None] | None = None,
    rewrite: bool = False,
) -> list[ExtractResult]:
    """Extract one data set with several backbones in one pass over the images.

    Each image is read and hashed once, and decoded once per distinct input size, for
    every backbone that lacks it. Each backbone still computes exactly the batches it
    would compute alone, so its features do not depend on which other backbones ran
    beside it. With a Dask ``client``, the missing batches run on its workers instead,
    each backbone separately. ``damaged`` and ``rewrite`` are for ``verify --repair``
    (see :func:`~featurecache.extraction.job.plan_backbone`).
    """
    writer = CacheWriter(cache)
    writer.ensure()
    with writer.lock(listing.name, wait=wait):
        prepared = [
            plan_backbone(cache, listing, b, batch_size, damaged=damaged, rewrite=rewrite)
            for b in backbones
        ]
        jobs = [p for p in prepared if isinstance(p, ExtractJob)]
        if client is not None:
            dask.run_on_cluster(client, cache, listing, jobs, retries=retries, progress=progress)
        else:
            run_local(listing, jobs, batch_size, progress=progress)
        return [p if isinstance(p, ExtractResult) else commit(cache, p) for p in prepared]
