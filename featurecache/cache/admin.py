"""Looking after a cache: what it holds (``featurecache info``) and freeing space (``gc``).

:func:`collect_garbage` always removes superseded generations (all but ``current``),
partial generations, staging folders left by killed runs and the ``.staging``,
``.locks`` and ``.engines`` folders older versions kept inside the cache; with pipelines given,
also every group whose (data set, backbone configuration) none of them declares. Each
data set is handled under its writer lock, so gc never races a refresh.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featurecache.cache import recipe
from featurecache.cache.layout import Cache
from featurecache.cache.writing import CacheWriter
from featurecache.config import Pipeline

log = logging.getLogger(__name__)


@dataclass
class GcResult:
    """What ``gc`` removed (paths relative to the cache root) and the bytes that freed."""

    removed: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    dry_run: bool = False


def collect_garbage(
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
    # on every backend: features extracted under JAX or PyTorch stay referenced under
    # TensorFlow (each backend at the version installed here, as for TensorFlow itself)
    referenced = recipe.declared_groups(pipelines, recipe.request_hashes) if pipelines else None
    result = GcResult(dry_run=dry_run)
    writer = CacheWriter(cache)

    def remove(path: str) -> None:
        result.removed.append(cache.relative(path))
        result.freed_bytes += cache.size(path)
        if not dry_run:
            log.info("removing %s", path)
            writer.remove(path)

    datasets: dict[str, list[tuple[str, str]]] = {}
    for dataset, group, path in cache.group_dirs():
        datasets.setdefault(dataset, []).append((group, path))
    staged = cache.staged_datasets()
    for dataset in sorted(set(datasets) | set(staged)):
        with writer.lock(dataset, wait=wait):
            for path in _unused(cache, dataset, datasets.get(dataset, []), referenced):
                remove(path)
            if dataset in staged:
                remove(cache.staging_path(dataset))
    for path in cache.legacy_bookkeeping():  # .staging/.locks/.engines of versions < 0.2
        remove(path)
    return result


def _unused(
    cache: Cache,
    dataset: str,
    groups: list[tuple[str, str]],
    referenced: set[tuple[str, str]] | None,
) -> Iterator[str]:
    """The paths to remove of ``dataset``'s ``(group, path)`` folders, one at a time (each
    removed before the next is looked at): a whole group that no pipeline declares (when
    ``referenced`` is given), else every generation of the group but its committed one."""
    for group, path in groups:
        keep = cache.committed(dataset, group)
        if referenced is not None:
            attrs = cache.attrs(dataset, group) if keep else {}
            if (dataset, attrs.get("request_hash")) not in referenced:
                yield path
                continue
        for gen in cache.generations(dataset, group):
            if gen.rsplit("/", 1)[-1] != keep:
                yield gen


def describe_cache(root: str | Path) -> list[dict[str, Any]]:
    """Summaries of every group in the cache at ``root``.

    Each has ``dataset``, ``group``, ``backbone``, ``n_images``, ``split_counts``,
    ``feature_dim``, ``bytes`` (on disk), ``created``, ``skipped`` and the full
    ``provenance`` attributes.

    Raises
    ------
    CacheError
        If ``root`` is missing or is not a featurecache cache.
    """
    cache = Cache(root)
    cache.check()
    out = []
    for dataset, group, attrs in cache.groups():
        out.append(
            {
                "dataset": dataset,
                "group": group,
                "backbone": attrs["backbone"]["name"],
                "weights": attrs["weights"]["spec"],
                "input_size": attrs["input_size"],
                "pooling": attrs["pooling"],
                "n_images": attrs["n_images"],
                "split_counts": attrs["split_counts"],
                "feature_dim": attrs["feature_dim"],
                "bytes": cache.nbytes(dataset, group),
                "created": attrs["created"],
                "skipped": attrs.get("skipped", []),
                "provenance": attrs,
            }
        )
    return out
