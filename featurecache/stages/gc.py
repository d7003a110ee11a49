"""``featurecache gc``: free the disk space of cache entries nothing uses.

Always removed: superseded generations (all but ``current``), partial
generations and staging folders left by killed runs. With pipelines given, also
every group whose (data set, backbone configuration) none of them declares.
Each data set is handled under its writer lock, so gc never races a refresh.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from featurecache import recipe
from featurecache.config import Pipeline
from featurecache.store import Cache

log = logging.getLogger(__name__)


@dataclass
class GcResult:
    removed: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    dry_run: bool = False


def collect(
    root: str | Path,
    pipelines: Sequence[Pipeline] = (),
    *,
    dry_run: bool = False,
    wait: bool = True,
) -> GcResult:
    """Remove unused entries from the cache at ``root``; report what and how many bytes.

    Raises
    ------
    CacheError
        If ``root`` is not a featurecache cache.
    LockedError
        If ``wait`` is false and a data set is being written.
    """
    cache = Cache(root)
    cache.check()
    referenced = {
        (d.name, recipe.request_hash(b)) for p in pipelines for d in p.datasets for b in p.backbones
    }
    result = GcResult(dry_run=dry_run)

    def remove(path: str) -> None:
        result.removed.append(cache.relative(path))
        result.freed_bytes += cache.size(path)
        if not dry_run:
            log.info("removing %s", path)
            cache.remove(path)

    datasets: dict[str, list[tuple[str, str]]] = {}
    for dataset, group, path in cache.group_dirs():
        datasets.setdefault(dataset, []).append((group, path))
    staged = cache.staged_datasets()
    for dataset in sorted(set(datasets) | set(staged)):
        with cache.lock(dataset, wait=wait):
            for group, path in datasets.get(dataset, []):
                keep = cache.committed(dataset, group)
                if pipelines:
                    attrs = cache.attrs(dataset, group) if keep else {}
                    if (dataset, attrs.get("request_hash")) not in referenced:
                        remove(path)
                        continue
                for gen in cache.generations(dataset, group):
                    if gen.rsplit("/", 1)[-1] != keep:
                        remove(gen)
            if dataset in staged:
                remove(cache.staging_path(dataset))
    return result
