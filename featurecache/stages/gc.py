"""``featurecache gc``: free the disk space of cache entries nothing uses.

Always removed: superseded generations (all but ``current``), partial
generations and staging folders left by killed runs. With pipelines given, also
every group whose (data set, backbone configuration) none of them declares.
Each data set is handled under its writer lock, so gc never races a refresh.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from featurecache import recipe
from featurecache.config import Pipeline
from featurecache.store import CURRENT, STAGING, Cache, disk_bytes, read_attrs

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

    def remove(path: Path) -> None:
        result.removed.append(str(path.relative_to(cache.root)))
        result.freed_bytes += disk_bytes(path)
        if not dry_run:
            log.info("removing %s", path)
            shutil.rmtree(path, ignore_errors=True)

    datasets: dict[str, list[tuple[str, Path]]] = {}
    for dataset, group, folder in cache.group_dirs():
        datasets.setdefault(dataset, []).append((group, folder))
    staging = cache.root / STAGING
    for dataset in sorted(set(datasets) | {p.name for p in staging.glob("*") if p.is_dir()}):
        with cache.lock(dataset, wait=wait):
            for _group, folder in datasets.get(dataset, []):
                link = folder / CURRENT
                attrs_hash = (read_attrs(link) or {}).get("request_hash")
                if pipelines and (dataset, attrs_hash) not in referenced:
                    remove(folder)
                    continue
                keep = link.resolve().name if link.is_symlink() else None
                for gen in sorted(folder.glob("gen-*")):
                    if gen.name != keep:
                        remove(gen)
            if (staging / dataset).exists():
                remove(staging / dataset)
    return result
