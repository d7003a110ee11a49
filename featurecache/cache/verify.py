"""Checking a cache's bytes (``featurecache verify``): every chunk, pointer and attribute.

Each backbone group's committed generation is read chunk by chunk: a chunk that is
missing, fails its CRC-32C checksum or does not decompress is damage, reported with the
rows it holds. So are a missing or dangling ``current`` pointer, unreadable attributes
and array metadata, and arrays shorter or longer than the generation. Generations
written before chunks carried checksums are reported as such (not as damage):
``verify --repair`` rewrites them with checksums.

Nothing here writes; :mod:`featurecache.extraction.repair` repairs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from featurecache.cache.arrays import ROW_ARRAYS, ArraySpec
from featurecache.cache.layout import Cache
from featurecache.cache.store import (
    checksummed,
    chunk_problems,
    is_node,
    open_array,
    open_group,
    read_attrs,
)
from featurecache.errors import CacheError, DamagedError

log = logging.getLogger(__name__)

#: What a generation's attributes must hold for featurecache to read it.
REQUIRED_ATTRS = ("n_images", "class_names", "recipe_hash", "request_hash", "dataset")


@dataclass
class Damage:
    """One damaged thing: ``what`` (``"array features"``, ``"current pointer"``, ...) of
    ``dataset``/``group`` (empty for the cache root), ``rows`` as ``(first, stop)``
    ranges (empty when it is not about rows) and the ``problem`` found."""

    dataset: str
    group: str
    what: str
    problem: str
    rows: list[tuple[int, int]] = field(default_factory=list)
    generation: str = ""

    @property
    def n_rows(self) -> int:
        return sum(b - a for a, b in self.rows)

    def describe(self) -> str:
        where = "/".join(p for p in (self.dataset, self.group, self.generation) if p) or "root"
        rows = ", ".join(f"{a}-{b - 1}" for a, b in self.rows)
        return f"{where}: {self.what}: {self.problem}" + (f" (rows {rows})" if rows else "")


@dataclass
class GroupCheck:
    """What was checked in one backbone group, and what was found."""

    dataset: str
    group: str
    generation: str | None
    n_images: int = 0
    arrays: int = 0
    chunks: int = 0
    checksummed: bool = True
    request_hash: str = ""
    damage: list[Damage] = field(default_factory=list)

    def damaged_rows(self) -> set[int] | None:
        """Rows of the committed generation to recompute; None when the generation cannot
        be used at all (its rows' sources or keys are unreadable, or it is missing)."""
        rows: set[int] = set()
        for item in self.damage:
            if not item.rows or item.what.removeprefix("array ") in ROW_ARRAYS:
                return None
            for a, b in item.rows:
                rows.update(range(a, b))
        return rows


@dataclass
class VerifyResult:
    """Everything ``verify`` checked in the cache at ``cache``, and the damage found."""

    cache: str
    groups: list[GroupCheck] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)  # the root's and data sets'

    @property
    def all_damage(self) -> list[Damage]:
        return self.damage + [d for g in self.groups for d in g.damage]

    @property
    def clean(self) -> bool:
        return not self.all_damage

    def to_dict(self) -> dict[str, Any]:
        return {
            "cache": self.cache,
            "clean": self.clean,
            "damage": [{**asdict(d), "n_rows": d.n_rows} for d in self.all_damage],
            "groups": [{k: v for k, v in asdict(g).items() if k != "damage"} for g in self.groups],
        }


def verify_cache(
    root: str | Path,
    *,
    accept: Callable[[str, str], bool] = lambda dataset, request_hash: True,
    progress: bool = False,
) -> VerifyResult:
    """Read every chunk of every committed generation in the cache at ``root``.

    ``accept(dataset, request_hash)`` limits the check to some groups (those of the
    pipelines given); the root's and the data sets' metadata are always checked.

    Raises
    ------
    CacheError
        If there is no cache at ``root``, or it is not a featurecache cache of this
        format (an unreadable root ``zarr.json`` above data set groups is damage).
    """
    cache = Cache(root)
    result = VerifyResult(cache=cache.url)
    location = cache.location
    if location.local and not Path(location.root).exists():
        raise CacheError(f"no cache at {cache.url!r}; run `featurecache extract` first")
    datasets = [d for d in location.subdirs(location.root) if not d.startswith(".")]
    if read_attrs(location, location.root) is None and datasets:  # lost, or not JSON
        result.damage.append(Damage("", "", "root metadata", "zarr.json unreadable"))
    else:
        cache.check()  # not a cache, or another format: a CacheError, not damage
    todo = []
    for dataset in datasets:
        if read_attrs(location, location.join(dataset)) is None:
            result.damage.append(Damage(dataset, "", "group metadata", "zarr.json unreadable"))
        for group in cache.group_names(dataset):
            group_attrs = read_attrs(location, location.join(dataset, group))
            request_hash = (group_attrs or {}).get("request_hash", "")
            if group_attrs is not None and not accept(dataset, request_hash):
                continue
            todo.append((dataset, group, group_attrs))
    bar = tqdm(todo, unit="group", disable=not progress, desc="verify", dynamic_ncols=True)
    for dataset, group, group_attrs in bar:
        check = check_group(cache, dataset, group, group_attrs)
        result.groups.append(check)
        for item in check.damage:
            log.info("damaged: %s", item.describe())
    return result


def check_group(
    cache: Cache,
    dataset: str,
    group: str,
    group_attrs: dict[str, Any] | None,
    generation: str | None = None,
) -> GroupCheck:
    """Check one backbone group's committed generation (or ``generation``, by name)."""
    location = cache.location
    path = location.join(dataset, group)
    name = generation or location.pointer(path)
    check = GroupCheck(
        dataset, group, name, request_hash=(group_attrs or {}).get("request_hash", "")
    )
    if group_attrs is None:
        check.damage.append(Damage(dataset, group, "group metadata", "zarr.json unreadable"))
    if name is None or not is_node(location, location.join(dataset, group, name)):
        problem = "missing" if name is None else f"points at {name}, which is gone"
        check.damage.append(Damage(dataset, group, "current pointer", problem))
        check.generation = None
        return check
    gen_path = location.join(dataset, group, name)
    attrs = read_attrs(location, gen_path)
    lacking = [k for k in REQUIRED_ATTRS if k not in (attrs or {})]
    if attrs is None or lacking:
        problem = "zarr.json unreadable" if attrs is None else f"lacks {', '.join(lacking)}"
        check.damage.append(Damage(dataset, group, "generation attributes", problem, [], name))
        return check
    try:
        check.n_images = int(attrs["n_images"])
        node = open_group(location, gen_path, mode="r")
        names = [spec.name for spec in ArraySpec.from_attrs(attrs)] + list(ROW_ARRAYS)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # JSON, not ours
        problem = f"not valid generation metadata ({type(exc).__name__}: {exc})"
        check.damage.append(Damage(dataset, group, "generation attributes", problem, [], name))
        return check
    check.request_hash = check.request_hash or attrs["request_hash"]
    for array_name in names:
        check.arrays += 1
        for item in _check_array(node, array_name, check):
            item.dataset, item.group, item.generation = dataset, group, name
            check.damage.append(item)
    return check


def _check_array(node: Any, name: str, check: GroupCheck) -> Iterator[Damage]:
    every_row = [(0, check.n_images)] if check.n_images else []
    try:
        array = open_array(node, name)
    except KeyError:
        yield Damage("", "", f"array {name}", "missing", every_row)
        return
    except DamagedError as exc:
        yield Damage("", "", f"array {name}", f"metadata unreadable ({exc.__cause__})", every_row)
        return
    if array.shape[0] != check.n_images:
        problem = f"{array.shape[0]} rows, the generation has {check.n_images}"
        yield Damage("", "", f"array {name}", problem, every_row)
        return
    check.checksummed &= checksummed(array)
    check.chunks += array.nchunks
    for first, stop, problem in chunk_problems(array):
        yield Damage("", "", f"array {name}", problem, [(first, stop)])
