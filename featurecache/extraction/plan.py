"""Planning an extraction: which images the cache already has, and which to compute.

Each image of the listing is matched to the committed generation by ``(source,
size, mtime)`` without being read, as git's index does; the others are hashed
(BLAKE2b of their bytes) and looked up by content key, in this group and in other
data sets' groups made by the same recipe. What is still missing is computed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from featurecache.cache import Cache, storable
from featurecache.cache.recipe import CachedGroup
from featurecache.cache.store import read_arrays
from featurecache.datasets import Listing


@dataclass
class Plan:
    """Where each record's features come from.

    ``keys`` maps a record index to its content key where it is known without
    computing; ``reuse`` maps a record index to ``(generation, row)`` of a committed
    generation (a read-only zarr group holding every array of the recipe); ``compute``
    lists the record indices (ascending) the backbone must run on. ``n_new``,
    ``n_changed`` and ``n_removed`` compare the listing with the previous generation.
    """

    keys: dict[int, str] = field(default_factory=dict)
    reuse: dict[int, tuple[Any, int]] = field(default_factory=dict)  # index -> (group, row)
    compute: list[int] = field(default_factory=list)
    n_new: int = 0
    n_changed: int = 0
    n_removed: int = 0


@dataclass(frozen=True)
class Previous:
    """What the committed generation of this data set's group says: each source's
    ``(size, mtime_ns, key)`` as listed then, and the ``(generation, row)`` of each content
    key that may be reused. Empty without a group."""

    stats: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    rows: dict[str, tuple[Any, int]] = field(default_factory=dict)


def make_plan(
    cache: Cache,
    listing: Listing,
    found: CachedGroup | None,
    recipe_hash: str | None,
    damaged: Mapping[tuple[str, str], Collection[int] | None] | None = None,
) -> Plan:
    """Plan ``listing`` against ``found`` (this data set's group for the backbone, if any)
    and, when ``recipe_hash`` is known, against every group made by the same recipe.

    ``damaged`` maps ``(data set, group)`` to rows of its committed generation that must
    not be reused (``featurecache verify --repair``): their images are computed again
    (None: nothing of that group can be read, so ``found`` must not be it).
    """
    damaged = damaged or {}
    plan = Plan()
    previous = Previous() if found is None else read_previous(cache, listing.name, found, damaged)
    unknown = _match_stats(listing, previous, plan)
    if unknown and recipe_hash is not None:
        others = keys_elsewhere(cache, listing.name, recipe_hash, damaged)
        _match_keys(listing, unknown, {**others, **previous.rows}, plan)
    else:
        plan.compute = unknown
    return plan


def read_previous(
    cache: Cache,
    dataset: str,
    found: CachedGroup,
    damaged: Mapping[tuple[str, str], Collection[int] | None],
) -> Previous:
    """The committed generation of ``found``: its sources' stats and its reusable rows
    (those ``damaged`` lists left out)."""
    bad = damaged.get((dataset, found.group)) or ()
    old = cache.open_rows(dataset, found.group)
    columns = read_arrays(old, ("sources", "sizes", "mtimes", "keys"))
    keys = columns["keys"]
    stats = {
        str(source): (int(size), int(mtime), str(key))
        for source, size, mtime, key in zip(
            columns["sources"], columns["sizes"], columns["mtimes"], keys, strict=True
        )
    }
    rows = {str(k): (old, row) for row, k in enumerate(keys) if row not in bad}
    return Previous(stats, rows)


def _match_stats(listing: Listing, previous: Previous, plan: Plan) -> list[int]:
    """Reuse the rows of images whose file is unchanged since ``previous`` (same source,
    size and mtime), without reading them, as git's index does; count the new, changed and
    removed ones. Returns the record indices still unknown."""
    unknown = []
    present = set()
    for index, record in enumerate(listing.records):
        source = storable(record.source)
        present.add(source)
        stat = previous.stats.get(source)
        unchanged = (
            stat is not None
            and record.size >= 0
            and stat[:2]
            == (
                record.size,
                record.mtime_ns,
            )
        )
        if stat is not None and unchanged and stat[2] in previous.rows:
            plan.keys[index] = stat[2]
            plan.reuse[index] = previous.rows[stat[2]]
            continue
        if not unchanged:
            plan.n_changed += stat is not None
            plan.n_new += stat is None
        unknown.append(index)
    plan.n_removed = len(set(previous.stats) - present)
    return unknown


def _match_keys(
    listing: Listing, unknown: list[int], rows: dict[str, tuple[Any, int]], plan: Plan
) -> None:
    """Hash each unknown image (BLAKE2b of its bytes) and reuse a row with that content
    key from ``rows``; the rest (and unreadable files) are computed."""
    for index in unknown:
        key = listing.content_key(listing.records[index])
        if key is None:
            plan.compute.append(index)
            continue
        plan.keys[index] = key
        where = rows.get(key)
        if where is None:
            plan.compute.append(index)
        else:
            plan.reuse[index] = where


def keys_elsewhere(
    cache: Cache,
    dataset: str,
    recipe_hash: str,
    damaged: Mapping[tuple[str, str], Collection[int] | None] | None = None,
) -> dict[str, tuple[Any, int]]:
    """Content key -> (generation, row) over other data sets made by the same recipe
    (rows listed in ``damaged`` left out, and groups it maps to None)."""
    found: dict[str, tuple[Any, int]] = {}
    for other, group, attrs in cache.groups():
        if other == dataset or attrs.get("recipe_hash") != recipe_hash:
            continue
        bad = (damaged or {}).get((other, group), ())
        if bad is None:  # unreadable: nothing of it is reused
            continue
        rows = cache.open_rows(other, group)
        for row, key in enumerate(read_arrays(rows, ["keys"])["keys"]):
            if row not in bad:
                found.setdefault(str(key), (rows, row))
    return found


def plan_id(
    listing: Listing,
    recipe_hash: str,
    found: CachedGroup | None,
    compute: Sequence[int],
    batch_size: int,
) -> str:
    """Identity of a compute plan; the batch size is in it, because a resumed run must
    compute the same batches to give bit-identical features."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{listing.fingerprint}\0{recipe_hash}\0{batch_size}\0".encode())
    digest.update(str(found.attrs.get("generation") if found else None).encode())
    for index in compute:
        digest.update(storable(listing.records[index].source).encode() + b"\0")
    return digest.hexdigest()
