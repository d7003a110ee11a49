"""What a cache holds: one summary per committed group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featurecache.store import Cache


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
