"""Where a Dask extraction runs: an existing cluster, or a LocalCluster of worker processes.

:class:`Cluster` is what ``--scheduler`` / ``--workers`` ask for; :func:`connect` gives a
``distributed.Client`` for it, and :class:`LazyClient` connects only when some batch
must be computed. What runs on the workers is :mod:`featurecache.extraction.dask`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from featurecache.cache import Cache
from featurecache.errors import ClusterError, DependencyError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cluster:
    """Where extraction runs: ``scheduler`` (``tcp://host:8786``) for an existing Dask
    cluster, or ``workers`` worker processes of a new ``LocalCluster``.

    ``retries`` is how many more times Dask runs a shard whose task raised.

    Raises
    ------
    ClusterError
        If both or neither of ``scheduler`` and ``workers`` are given, or ``workers`` < 1.
    """

    scheduler: str | None = None
    workers: int | None = None
    retries: int = 2

    def __post_init__(self) -> None:
        if (self.scheduler is None) == (self.workers is None):
            raise ClusterError(
                "give either --scheduler (an existing Dask cluster) or --workers (a new local one)"
            )
        if self.workers is not None and self.workers < 1:
            raise ClusterError("--workers must be at least 1")

    @classmethod
    def from_options(cls, scheduler: str | None, workers: int | None) -> Cluster | None:
        """The cluster ``--scheduler`` / ``--workers`` ask for; ``None`` to run locally."""
        if scheduler is None and workers is None:
            return None
        return cls(scheduler=scheduler, workers=workers)

    def describe(self) -> str:
        if self.scheduler:
            return f"dask ({self.scheduler})"
        return f"dask (LocalCluster, {self.workers} workers)"


@contextmanager
def connect(cluster: Cluster) -> Iterator[Any]:
    """A ``distributed.Client`` for ``cluster``; a ``LocalCluster`` is closed afterwards.

    Raises
    ------
    DependencyError
        If ``distributed`` is not installed (``pip install 'featurecache[dask]'``).
    ClusterError
        If the scheduler cannot be reached.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise DependencyError(
            "--scheduler/--workers need Dask: pip install 'featurecache[dask]'"
        ) from exc
    if cluster.scheduler:
        try:
            client = Client(cluster.scheduler, timeout="10s")
        except OSError as exc:
            raise ClusterError(
                f"cannot reach the Dask scheduler at {cluster.scheduler}: {exc}"
            ) from exc
        with client:
            yield client
        return
    # One task per worker process at a time: the backbone uses every core it is given.
    # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also turns off
    # glibc's adaptive mmap threshold: every image and batch buffer is then mapped and
    # faulted in afresh, and a warm worker extracted at 0.88x this process's rate (0.99x
    # without it; benchmarks/scaleout.py). A None value unsets it (distributed's nanny.py).
    import dask

    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        local = LocalCluster(
            n_workers=cluster.workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
    with local, Client(local) as client:
        client.wait_for_workers(cluster.workers)
        yield client


class LazyClient:
    """Connects to ``cluster`` on first use (a cache hit starts no cluster); closed with
    ``stack``."""

    def __init__(self, cluster: Cluster, stack: ExitStack) -> None:
        self.cluster = cluster
        self._stack = stack
        self._client: Any = None

    def get(self) -> Any:
        if self._client is None:
            self._client = self._stack.enter_context(connect(self.cluster))
        return self._client


def check_reachable(cache: Cache, cluster: Cluster) -> None:
    """Refuse a cache the workers cannot write to; warn where it is up to the user.

    Raises
    ------
    ClusterError
        For a ``memory://`` cache: it lives in this process only.
    """
    if not cache.location.local and cache.url.startswith("memory://"):
        raise ClusterError(
            f"the cache {cache.url} lives in this process's memory, which Dask workers "
            "cannot reach; use a folder (shared by the workers) or an s3:// URL"
        )
    if cluster.scheduler and cache.location.local:
        log.warning(
            "the cache %s is a local folder: every Dask worker must see it at the same path "
            "(a shared file system), and the data set too",
            cache.url,
        )
