"""Repairing what ``featurecache verify`` found (``verify --repair``).

- Unreadable group metadata is written again (attributes from the generation's).
- A missing or dangling ``current`` points again at the newest generation that reads
  clean; if none does, the group is extracted again.
- Damaged rows are computed again from their source images, found by source path and
  content key, and committed as a new generation through the normal crash-safe path
  (:func:`~featurecache.extraction.extract.extract_dataset`), which copies every other
  row. Generations written before chunks carried checksums are rewritten with them.

How to compute rows again comes from the pipeline files given, else from the damaged
group's own provenance: a generation's attributes record its data set's configuration
(``dataset``), its backbone's (``backbone``), the weights' SHA-256 and the batch size,
so ``verify --repair CACHE`` needs no pipeline. A group whose images or weights file are
gone, whose weights changed, or whose recipe cannot run here (other Keras versions or
backend) is listed with what is missing, never repaired with other inputs.

Rows whose source image is gone cannot be computed: they are listed, never dropped in
silence.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from featurecache.cache import Cache, recipe, storable
from featurecache.cache.generations import is_partial
from featurecache.cache.layout import FORMAT_VERSION
from featurecache.cache.store import open_group, read_arrays, read_attrs, rewrite_group_metadata
from featurecache.cache.verify import GroupCheck, VerifyResult, check_group, verify_cache
from featurecache.cache.writing import CacheWriter
from featurecache.config import Pipeline
from featurecache.datasets import ObjectIndex, list_dataset
from featurecache.errors import FeaturecacheError
from featurecache.extraction.extract import extract_dataset
from featurecache.extraction.provenance import Recompute, rebuild
from featurecache.extraction.result import ExtractResult

log = logging.getLogger(__name__)


@dataclass
class RepairResult:
    """What ``verify --repair`` did, what it could not do, and the check after it.

    ``fixed`` describes each repair; ``extracted`` the extractions it committed;
    ``unrecoverable`` the damaged rows whose source image is gone (``dataset``,
    ``group``, ``row``, ``source``); ``unrepaired`` the damage it left (and why).
    """

    fixed: list[str] = field(default_factory=list)
    extracted: list[ExtractResult] = field(default_factory=list)
    unrecoverable: list[dict[str, Any]] = field(default_factory=list)
    unrepaired: list[str] = field(default_factory=list)
    after: VerifyResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "fixed": self.fixed,
            "extracted": [r.to_dict() for r in self.extracted],
            "unrecoverable": self.unrecoverable,
            "unrepaired": self.unrepaired,
            "after": self.after.to_dict() if self.after else None,
        }


def repair(
    root: str | Path,
    pipelines: Sequence[Pipeline],
    checked: VerifyResult,
    *,
    progress: bool = False,
    wait: bool = True,
) -> RepairResult:
    """Repair the damage ``checked`` found in the cache at ``root``, then verify again.

    Groups of ``pipelines`` are recomputed as the pipelines say; every other damaged
    group as its provenance says (:func:`rebuild`).

    Raises
    ------
    DatasetError, ConfigError, CacheError, LockedError
        As :func:`~featurecache.extraction.extract.extract` does, while computing rows.
    """
    cache = Cache(root)
    result = RepairResult()
    _fix_metadata(cache, checked, result)
    todo: dict[tuple[str, str], GroupCheck] = {}
    for check in checked.groups:
        if any(d.what == "current pointer" for d in check.damage):
            with CacheWriter(cache).lock(check.dataset, wait=wait):
                _fix_pointer(cache, check, result)
        rows_damaged = [d for d in check.damage if d.what.startswith(("array", "generation"))]
        if rows_damaged or not check.checksummed or check.generation is None:
            todo[(check.dataset, check.group)] = check
    # every damaged group of the cache, so that no extraction reuses its rows elsewhere
    damaged: dict[tuple[str, str], Collection[int] | None] = {
        key: check.damaged_rows() if check.generation else None
        for key, check in todo.items()
        if check.damage or check.generation is None
    }
    declared = [
        Recompute(dataset, tuple(p.backbones), p.batch_size)
        for p in pipelines
        for dataset in p.datasets
    ]
    for how in declared:
        _repair_dataset(cache, how, todo, damaged, result, progress, wait)
    for how in _from_provenance(cache, todo, result):
        _repair_dataset(cache, how, todo, damaged, result, progress, wait)
    for (dataset, group), check in todo.items():
        if not _needs_work(check):
            continue
        what = "has no checksums" if not check.damage else "is damaged"
        result.unrepaired.append(
            f"{dataset}/{group} {what} and was not recomputed: run "
            "`featurecache verify --repair` with the pipeline file that extracts it"
        )
    result.after = verify_cache(root)
    return result


def _fix_metadata(cache: Cache, checked: VerifyResult, result: RepairResult) -> None:
    location = cache.location
    for item in checked.damage:
        if item.what == "root metadata":
            rewrite_group_metadata(location, location.root, {"featurecache_format": FORMAT_VERSION})
        elif item.what == "group metadata":
            rewrite_group_metadata(location, location.join(item.dataset), {})
        result.fixed.append(f"{item.describe()}: written again")
    for check in checked.groups:
        for item in check.damage:
            if item.what != "group metadata":
                continue
            attrs = _any_generation_attrs(cache, check)
            if attrs is None:
                result.unrepaired.append(f"{item.describe()}: no readable generation")
                continue
            rewrite_group_metadata(
                location,
                location.join(check.dataset, check.group),
                {k: attrs[k] for k in ("request_hash", "recipe_hash")},
            )
            check.request_hash = attrs["request_hash"]
            result.fixed.append(f"{item.describe()}: written again")
        check.damage = [d for d in check.damage if d.what != "group metadata"]


def _any_generation_attrs(cache: Cache, check: GroupCheck) -> dict[str, Any] | None:
    for path in reversed(cache.generations(check.dataset, check.group)):
        attrs = read_attrs(cache.location, path)
        if attrs and "request_hash" in attrs and "recipe_hash" in attrs:
            return attrs
    return None


def _fix_pointer(cache: Cache, check: GroupCheck, result: RepairResult) -> None:
    """Point ``current`` at the newest generation that reads clean, if there is one
    (each is checked before the pointer moves, so it never lands on a damaged one)."""
    location = cache.location
    group_attrs = read_attrs(location, location.join(check.dataset, check.group))
    for path in reversed(cache.generations(check.dataset, check.group)):
        name = path.rsplit("/", 1)[-1]
        if is_partial(name):
            continue
        candidate = check_group(cache, check.dataset, check.group, group_attrs, name)
        if not candidate.damage:
            location.set_pointer(location.join(check.dataset, check.group), name)
            result.fixed.append(f"{check.dataset}/{check.group}: current now points at {name}")
            check.damage, check.generation = [], name
            check.checksummed = candidate.checksummed
            return
    check.generation = None  # nothing clean to point at: extracted again below


def _repair_dataset(
    cache: Cache,
    how: Recompute,
    todo: dict[tuple[str, str], GroupCheck],
    damaged: dict[tuple[str, str], Collection[int] | None],
    result: RepairResult,
    progress: bool,
    wait: bool,
) -> None:
    """Extract ``how.dataset`` again with each backbone one of whose groups needs it;
    rows listed in ``damaged`` are computed again, every other row is copied."""
    wanted = {h: b for b in how.backbones for h in recipe.wanted_hashes(b)}
    mine = {
        key: check
        for key, check in todo.items()
        if key[0] == how.dataset.name and check.request_hash in wanted and _needs_work(check)
    }
    if not mine:
        return
    listing = list_dataset(how.dataset, ObjectIndex(cache.object_index_url(how.dataset.name)))
    try:
        for key, check in mine.items():
            rows = damaged.get(key)
            if rows and check.generation is not None:  # rows of a readable generation
                result.unrecoverable += _gone(cache, check, check.generation, rows, listing)
        hashes = dict.fromkeys(check.request_hash for check in mine.values())
        extracted = extract_dataset(
            cache,
            listing,
            [wanted[h] for h in hashes],  # once each, however many groups it has
            batch_size=how.batch_size,
            progress=progress,
            wait=wait,
            damaged=damaged,
            rewrite=True,
        )
    finally:
        listing.close()
    written = {r.group for r in extracted}
    for key, check in mine.items():
        if key[1] not in written:  # an older recipe of the backbone: nothing reads it
            result.unrepaired.append(
                f"{key[0]}/{key[1]} is an older recipe of {wanted[check.request_hash].name} "
                "(its weights or engine changed since): `featurecache gc PIPELINE` removes it"
            )
            todo.pop(key)  # said: not listed again below
            continue
        n_rows = sum(d.n_rows for d in check.damage)
        done = f"{n_rows} damaged rows computed again" if n_rows else "written again"
        if not check.checksummed and not check.damage:
            done = "rewritten with checksums"
        result.fixed.append(f"{key[0]}/{key[1]}: {done}")
        check.damage, check.checksummed = [], True
        todo.pop(key)  # repaired: neither recomputed from provenance nor listed below
    result.extracted += extracted


def _needs_work(check: GroupCheck) -> bool:
    return bool(check.damage) or not check.checksummed or check.generation is None


def _from_provenance(
    cache: Cache, todo: dict[tuple[str, str], GroupCheck], result: RepairResult
) -> list[Recompute]:
    """How to recompute each group that still needs it, from its provenance; a group
    whose provenance cannot run here is listed in ``result.unrepaired`` with why."""
    found: dict[str, Recompute] = {}
    for key, check in list(todo.items()):
        if not _needs_work(check):
            continue
        try:
            how = rebuild(cache, check)
        except FeaturecacheError as exc:
            result.unrepaired.append(f"{key[0]}/{key[1]} cannot be recomputed: {exc}")
            todo.pop(key)  # said: not listed again
            continue
        # the backbones of one data set, extracted together as a pipeline would
        same = json.dumps([how.dataset.describe(), how.batch_size], sort_keys=True)
        if same in found:
            how = replace(found[same], backbones=found[same].backbones + how.backbones)
        found[same] = how
    return list(found.values())


def _gone(
    cache: Cache, check: GroupCheck, generation: str, rows: Collection[int], listing: Any
) -> list[dict[str, Any]]:
    """The damaged rows (of ``generation``) whose source image is no longer in the data set."""
    location = cache.location
    node = open_group(location, location.join(check.dataset, check.group, generation), mode="r")
    try:
        sources = read_arrays(node, ["sources"])["sources"]
    except (FeaturecacheError, KeyError):
        return []
    present = {storable(r.source) for r in listing.records}
    gone = [
        {"dataset": check.dataset, "group": check.group, "row": row, "source": str(sources[row])}
        for row in sorted(rows)
        if str(sources[row]) not in present
    ]
    for item in gone:
        log.warning(
            "cannot recompute row %d of %s: %s is gone", item["row"], check.group, item["source"]
        )
    return gone
