"""Data sets whose objects hold many images (WebDataset shards, Parquet files): listing and reading.

Listing (:func:`list_members`) stats every object with listing requests only, takes the
members of unchanged objects from the :class:`~featurecache.datasets.index.ObjectIndex`,
and reads only new or changed objects, each whole (fetched, checked, retried), through a
``mapper``: a local thread pool, or Dask workers, so that on a cluster the client never
reads an image. Each image becomes one :class:`Record` whose source is
``<object URL>#<member name>``, whose stat is its object's, and whose content key is
known from the index, so planning matches it by stat or by key without reading it.

Reading (:class:`ObjectReader`) serves one image's bytes during extraction from a local
copy of its object, fetched once per process (:class:`FetchCache`).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, BinaryIO

from featurecache.config import DatasetConfig
from featurecache.datasets.fetching import FETCHED, ObjectGoneError, ObjectUnreadableError
from featurecache.datasets.files import SPLIT_ALIASES
from featurecache.datasets.index import ObjectIndex, describe_reader
from featurecache.datasets.members import (
    SUFFIXES,
    DamagedObjectError,
    Label,
    Members,
    ParquetRows,
    TarSample,
    image_extension,
    read_members,
    read_range,
    tar_samples,
)
from featurecache.datasets.objects import ObjectStat, expand, stat_objects
from featurecache.datasets.records import Record
from featurecache.datasets.splits import stratified_split
from featurecache.errors import DatasetError, ImageDecodeError

log = logging.getLogger(__name__)

#: Skipped images named in the log one by one (all of them are in the result).
LOGGED_SKIPS = 5
#: ``mapper(function, items)`` -> results in order: how new objects are read (locally by
#: threads, or on Dask workers).
Mapper = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]


@dataclass
class MemberListing:
    """What :func:`list_members` found: the records, class names, objects by URL, and
    the images (or objects) that cannot be used, each ``{"source", "reason"}``."""

    records: list[Record]
    class_names: list[str]
    objects: dict[str, ObjectStat]
    skipped: list[dict[str, str]] = field(default_factory=list)


def thread_mapper(function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """Read objects on a few threads of this process (downloads overlap, and hashing
    releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="index") as pool:
        return list(pool.map(function, items))


def list_members(
    config: DatasetConfig,
    index: ObjectIndex | None = None,
    mapper: Mapper | None = None,
    exclude: Collection[str] = (),
) -> MemberListing:
    """List a WebDataset or Parquet data set, reading only the objects ``index`` lacks.

    Objects in ``exclude`` are left out unread: those another process (a Dask client)
    found unusable, so that a worker lists what its client listed.

    Raises
    ------
    DatasetError
        If no object is found, the objects cannot be listed (credentials, server), or
        the labels cannot be named (the message says how).
    """
    index = index if index is not None else ObjectIndex()
    urls = _objects_by_split(config)
    everything = [u for found in urls.values() for u in found]
    stats: dict[str, ObjectStat] = {}
    for found in urls.values():  # by split: train-0000..., test-0000... share a prefix each
        stats.update(stat_objects(found))
    skipped = [
        {"source": u, "reason": f"{u}: not found (listed by the data set, absent from storage)"}
        for u in everything
        if u not in stats
    ]
    if not stats:
        raise DatasetError(
            f"data set {config.name!r}: none of its {len(everything)} objects exist "
            f"(the first: {everything[0]})"
        )
    for url in exclude:
        if stats.pop(url, None) is not None:
            skipped.append({"source": url, "reason": f"{url}: left out by the client"})
    reader = describe_reader(config.format, config.image, config.label)
    skipped += _index_stale(config, [stats[u] for u in everything if u in stats], index, mapper)
    for gone in [u for u in stats if index.get(stats[u], reader) is None]:
        del stats[gone]  # unreadable: skipped above
    index.forget(set(index.entries) - set(stats))
    index.save()
    contents = {u: index.get(s, reader) for u, s in stats.items()}
    for url, members in contents.items():
        assert members is not None
        skipped += members.skipped
        if members.damage:
            reason = f"{url}: {members.damage}; the images before it are kept"
            skipped.append({"source": url, "reason": reason})
    for item in skipped[:LOGGED_SKIPS]:
        log.warning("skipped %s", item["reason"])
    if len(skipped) > LOGGED_SKIPS:
        log.warning("... and %d more skipped (all are in the result)", len(skipped) - LOGGED_SKIPS)
    records, class_names = _records(config, urls, contents, stats)
    return MemberListing(records, class_names, stats, skipped)


def _objects_by_split(config: DatasetConfig) -> dict[str, list[str]]:
    """The object URLs the data set names, by split (``""``: none declared or named).

    Raises
    ------
    DatasetError
        If a folder holds no such objects, or one object is listed under two splits.
    """
    sources = config.files or {"": (str(config.path),)}
    urls = {split: expand(patterns, SUFFIXES[config.format]) for split, patterns in sources.items()}
    if "" in urls:
        urls = {**{k: v for k, v in urls.items() if k}, **_splits_by_name(urls[""])}
    everything = [u for found in urls.values() for u in found]
    twice = {u for u in everything if everything.count(u) > 1} if len(urls) > 1 else set()
    if twice:
        raise DatasetError(
            f"data set {config.name!r}: {sorted(twice)[0]} is listed under two splits"
        )
    return urls


def _index_stale(
    config: DatasetConfig, stats: list[ObjectStat], index: ObjectIndex, mapper: Mapper | None
) -> list[dict[str, str]]:
    """Read the objects ``index`` does not know at their stat, through ``mapper``, and
    record what each holds; the objects that cannot be read, named."""
    reader = describe_reader(config.format, config.image, config.label)
    stale = [stat for stat in stats if index.get(stat, reader) is None]
    if not stale:
        return []
    log.info("%s: reading %d new or changed objects of %d", config.name, len(stale), len(stats))
    skipped = []
    outcomes = (mapper or thread_mapper)(partial(index_object, config=config), stale)
    for stat, outcome in zip(stale, outcomes, strict=True):
        if isinstance(outcome, Members):
            index.put(stat, reader, outcome)
        else:
            skipped.append({"source": stat.url, "reason": outcome})
    return skipped


def _splits_by_name(urls: list[str]) -> dict[str, list[str]]:
    """Objects given without a split, by the split their path names, as split folders do:
    a folder ``train/`` (``validation``, ``val``, ``test``...) on the way, or a file name
    that starts with one (``train-000000.tar``, Hugging Face's ``test-00000-of-00001.parquet``).
    Where not every object names one, they all stay unsplit (``""``)."""
    found: dict[str, list[str]] = {}
    for url in urls:
        parts = url.split("://", 1)[-1].split("/")
        named = [SPLIT_ALIASES[p.lower()] for p in parts[1:-1] if p.lower() in SPLIT_ALIASES]
        stem = re.split(r"[-_.]", parts[-1], maxsplit=1)[0].lower()
        split = named[-1] if named else SPLIT_ALIASES.get(stem)
        if split is None:
            return {"": urls}
        found.setdefault(split, []).append(url)
    return found


def index_object(stat: ObjectStat, config: DatasetConfig) -> Members | str:
    """Read one object whole and hash its images (runs on a thread or a Dask worker).

    Returns its :class:`Members`, or a one-line reason why it cannot be used (gone since
    listing, unreadable after the retries, not a shard or Parquet file).

    Raises
    ------
    StorageError
        When storage cannot be used at all (credentials, server down): the run stops.
    DatasetError
        When the data set names columns the object lacks: the run stops.
    """
    try:
        with FETCHED.open(stat) as fh:
            return read_members(fh, stat.url, config)
    except (ObjectGoneError, ObjectUnreadableError, DamagedObjectError) as exc:
        return str(exc)


def _records(
    config: DatasetConfig,
    urls: dict[str, list[str]],
    contents: dict[str, Members | None],
    stats: dict[str, ObjectStat],
) -> tuple[list[Record], list[str]]:
    rows = []  # (url, member name, key, label, split or "")
    metadata_names: list[str] = []
    for split, found in urls.items():
        for url in found:
            members = contents.get(url)
            if members is None:
                continue
            metadata_names = metadata_names or members.class_names
            rows += [(url, m.name, m.key, m.label, split) for m in members.members]
    labels, class_names = _class_indices([r[3] for r in rows], config, metadata_names)
    keep = [i for i, label in enumerate(labels) if label is not None]
    locators = [f"{rows[i][0].rsplit('/', 1)[-1]}#{rows[i][1]}" for i in keep]
    declared = all(rows[i][4] for i in keep) and not config.resplit
    splits = (
        [rows[i][4] for i in keep]
        if declared
        else stratified_split(locators, [labels[i] or 0 for i in keep], config.split)
    )
    records = []
    for i, split, locator in zip(keep, splits, locators, strict=True):
        url, name, key, _, _ = rows[i]
        stat, label = stats[url], labels[i]
        assert label is not None
        records.append(Record(f"{url}#{name}", label, split, locator, stat.size, stat.version, key))
    return records, class_names


def _class_indices(
    labels: Sequence[Label], config: DatasetConfig, metadata_names: Sequence[str]
) -> tuple[list[int | None], list[str]]:
    """Each label's class index (None: a class ``config.classes`` leaves out) and the names.

    Integer labels index ``config.classes``, else the ``ClassLabel`` names, else they are
    their own names (``"0"``, ``"1"``...); string labels are class names, sorted, or
    kept in ``config.classes``' order.

    Raises
    ------
    DatasetError
        If labels mix integers and names, or an integer has no name in ``classes``.
    """
    numbers = [label for label in labels if isinstance(label, int)]
    if numbers and len(numbers) != len(labels):
        raise DatasetError(f"data set {config.name!r}: labels mix integers and class names")
    if numbers:
        names = list(config.classes or metadata_names)
        names = names or [str(i) for i in range(max(numbers) + 1)]
        too_big = [label for label in numbers if label >= len(names)]
        if too_big:
            raise DatasetError(
                f"data set {config.name!r}: label {too_big[0]} has no name among the "
                f"{len(names)} classes ({', '.join(names)}); list every class in 'classes'"
            )
        return list(numbers), names
    names = list(config.classes) or sorted({str(label) for label in labels})
    position = {name: i for i, name in enumerate(names)}
    return [position.get(str(label)) for label in labels], names


#: Objects whose member offsets (or Parquet row group) an :class:`ObjectReader` keeps.
KNOWN_OBJECTS = 16


@dataclass
class _Known:
    """What a reader keeps of one object: a tar's member ranges, or a Parquet file's rows
    (used under ``lock``). No file stays open: each read opens the local copy."""

    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)
    rows: ParquetRows | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class ObjectReader:
    """One image's bytes by record source (``<object URL>#<member>``), from local copies of
    the objects (safe from several decoding threads). It keeps what it learnt of the last
    :data:`KNOWN_OBJECTS` objects (member ranges, a Parquet row group); each read opens
    the local copy, so no file is left open."""

    def __init__(self, config: DatasetConfig, objects: dict[str, ObjectStat]) -> None:
        self.config = config
        self.objects = objects
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._failed: dict[str, str] = {}
        self._lock = threading.Lock()

    def read(self, source: str) -> bytes:
        """The image's bytes.

        Raises
        ------
        ImageDecodeError
            If its object is gone, unreadable, or no longer holds it (named).
        StorageError
            If storage cannot be used at all (credentials, server down).
        """
        url, _, name = source.rpartition("#")
        known = self._object(url)
        opener = partial(self._open, url)
        if known.rows is not None:
            with known.lock:
                return known.rows.read(int(name), opener)
        if name not in known.offsets:
            raise ImageDecodeError(f"{source}: not in the shard any more")
        with opener() as fh:
            return read_range(fh, *known.offsets[name])

    def _open(self, url: str) -> BinaryIO:
        try:
            return FETCHED.open(self.objects[url])
        except (ObjectGoneError, ObjectUnreadableError) as exc:
            with self._lock:
                self._failed[url] = str(exc)
            raise ImageDecodeError(str(exc)) from exc

    def _object(self, url: str) -> _Known:
        with self._lock:
            if url in self._failed:
                raise ImageDecodeError(self._failed[url])
            if url in self._known:
                self._known.move_to_end(url)
                return self._known[url]
        with self._open(url) as fh:
            try:
                if self.config.format == "parquet":
                    known = _Known(rows=ParquetRows(fh, url, self.config))
                else:
                    known = _Known(dict(_image_offsets(tar_samples(fh, url)[0], self.config)))
            except DamagedObjectError as exc:
                with self._lock:
                    self._failed[url] = str(exc)
                raise ImageDecodeError(str(exc)) from exc
        with self._lock:
            known = self._known.setdefault(url, known)
            while len(self._known) > KNOWN_OBJECTS:
                self._known.popitem(last=False)
            return known

    def close(self) -> None:
        """Forget what was learnt of the objects (their row groups' bytes, mainly)."""
        with self._lock:
            self._known.clear()


def _image_offsets(
    samples: Iterable[TarSample], config: DatasetConfig
) -> Iterable[tuple[str, tuple[int, int]]]:
    for sample in samples:
        ext = image_extension(sample, config)
        if ext is not None:
            yield f"{sample.key}.{ext}", sample.files[ext]
