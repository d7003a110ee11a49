"""Listing data sets: class folders, CSV manifests, HDF5 arrays, WebDataset shards, Parquet.

Listing only looks at names, sizes and modification times (no image is decoded), so
it is cheap enough to run before every extraction to decide whether the cache already
holds the answer. Decoding happens later, in :mod:`featurecache.images`, through
:meth:`Listing.read`. A data set that declares no split is split by
:func:`featurecache.datasets.splits.stratified_split`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featurecache.config import DatasetConfig, is_url
from featurecache.datasets.fetching import ObjectGoneError, ObjectUnreadableError, fetch
from featurecache.datasets.files import keep_classes, list_csv, list_folder, list_folder_url
from featurecache.datasets.hdf5 import RowReader, hdf5_records
from featurecache.datasets.huggingface import HFRows, hf_records
from featurecache.datasets.index import ObjectIndex
from featurecache.datasets.objects import ObjectStat, stat_objects
from featurecache.datasets.records import RawImage, Record
from featurecache.datasets.sharded import Mapper, ObjectReader, list_members
from featurecache.datasets.splits import assign_splits
from featurecache.errors import DatasetError, ImageDecodeError
from featurecache.images import content_key, decode


@dataclass
class Listing:
    """A listed data set: records, class names and a fingerprint of its inputs.

    The fingerprint is a BLAKE2b hash of every record's source, size and
    modification time (nanoseconds), label and split, and of the data set
    configuration: it changes when any input file changes, without reading them.
    ``skipped`` names what listing found unusable (a shard gone or cut short, a sample
    without a label), as ``{"source", "reason"}``; extraction reports it with the images
    it could not decode.
    """

    name: str
    class_names: list[str]
    records: list[Record]
    fingerprint: str
    config: DatasetConfig
    skipped: list[dict[str, str]] = field(default_factory=list)
    _arrays: dict[str, RowReader] = field(default_factory=dict, repr=False)
    _objects: ObjectReader | HFRows | None = field(default=None, repr=False)
    _remote: dict[str, ObjectStat] = field(default_factory=dict, repr=False)

    def split_counts(self) -> dict[str, int]:
        return dict(Counter(r.split for r in self.records))

    def read(self, record: Record, size: int, decoder: str = "pillow") -> tuple[str, np.ndarray]:
        """Read and decode one record (JPEGs by ``decoder``: ``pillow`` or ``simplejpeg``).

        Returns
        -------
        key : str
            The image's content key (:func:`featurecache.images.content_key`).
        pixels : ndarray of shape (size, size, 3), dtype uint8
            RGB pixels resized to ``size`` x ``size``.

        Raises
        ------
        ImageDecodeError
            If the file cannot be read or decoded; the message names the file.
        """
        key, pixels = self.read_sizes(record, (size,), decoder)
        return key, pixels[size]

    def read_sizes(
        self, record: Record, sizes: Sequence[int], decoder: str = "pillow"
    ) -> tuple[str, dict[int, np.ndarray]]:
        """Like :meth:`read` for several sizes: the file is read and hashed once, then
        decoded once per size (so each size's pixels equal a single-size read's)."""
        raw = self._raw(record)
        return raw.key, {s: decode(raw.data, s, source=raw.source, decoder=decoder) for s in sizes}

    def load(self, index: int) -> RawImage:
        """Record ``index``'s content and key, undecoded: what extraction's decoding
        threads read (:class:`featurecache.extraction.decoding.ImageSource`).

        Raises
        ------
        ImageDecodeError
            If the file cannot be read; the message names it.
        """
        return self._raw(self.records[index])

    def source_of(self, index: int) -> str:
        """Where record ``index`` comes from: a path, or ``file.h5[index]``."""
        return self.records[index].source

    def _raw(self, record: Record) -> RawImage:
        data = self._load(record)
        return RawImage(content_key(data), data, record.source)

    def content_key(self, record: Record) -> str | None:
        """The record's content key without decoding (as the stat index recorded it, or
        by reading the image's bytes); ``None`` if it cannot be read."""
        if record.key:
            return record.key
        try:
            return content_key(self._load(record))
        except ImageDecodeError:
            return None

    def _load(self, record: Record) -> np.ndarray | bytes:
        """The record's raw content: an HDF5 row, or a file's or object member's bytes."""
        if self.config.format == "hdf5":
            path, index = record.source.rsplit("[", 1)
            return self._arrays[path][int(index.rstrip("]"))]
        if self._objects is not None:
            return self._objects.read(record.source)
        if record.source in self._remote:
            try:
                data = fetch(self._remote[record.source])
            except (ObjectGoneError, ObjectUnreadableError) as exc:
                raise ImageDecodeError(str(exc)) from exc
            assert isinstance(data, bytes)
            return data
        try:
            return Path(record.source).read_bytes()
        except OSError as exc:
            raise ImageDecodeError(f"{record.source}: cannot read file: {exc.strerror}") from exc

    def close(self) -> None:
        if isinstance(self._objects, ObjectReader):
            self._objects.close()
        for handle in {id(r.file): r.file for r in self._arrays.values()}.values():
            handle.close()
        self._arrays.clear()


def list_dataset(
    config: DatasetConfig,
    index: ObjectIndex | None = None,
    mapper: Mapper | None = None,
    exclude: Collection[str] = (),
) -> Listing:
    """List a data set without decoding any image.

    WebDataset shards and Parquet files are objects of many images: those ``index`` (the
    cache's stat index) does not know at their current stat are read whole, through
    ``mapper`` (threads here, or Dask workers), to list and hash their images
    (:mod:`featurecache.datasets.sharded`); without ``index`` every one is read. Objects
    in ``exclude`` are left out unread (a Dask worker leaves out what its client skipped).

    Raises
    ------
    DatasetError
        If the path does not exist, an HDF5 key is missing, a class folder is
        empty, there are fewer than two classes, or storage cannot be listed (no
        credentials, server unreachable); the message says how to fix it.
    """
    config = canonical(config)
    listing = Listing(name=config.name, class_names=[], records=[], fingerprint="", config=config)
    if config.format == "hdf5":
        listing.records, listing.class_names, listing._arrays = hdf5_records(config)
    elif config.format == "huggingface":
        listing.records, listing.class_names, listing._objects = hf_records(config)
    elif config.format in ("webdataset", "parquet"):
        found = list_members(config, index, mapper, exclude)
        listing.records, listing.class_names = found.records, found.class_names
        listing.skipped = found.skipped
        listing._objects = ObjectReader(config, found.objects)
    else:
        listing.records, listing.class_names, known = _list_files(config)
        listing.records, listing._remote, listing.skipped = _stat_urls(listing.records, known)
    check_classes(config.name, listing.class_names, [r.label for r in listing.records])
    listing.fingerprint = fingerprint(config, listing.records, listing.class_names)
    return listing


def _stat_urls(
    records: list[Record], known: dict[str, ObjectStat]
) -> tuple[list[Record], dict[str, ObjectStat], list[dict[str, str]]]:
    """Records at URLs with their objects' stats (``known`` from listing their folder, or
    stat'ed now); those not found are left out and named."""
    urls = [r.source for r in records if is_url(r.source)]
    if not urls:
        return records, {}, []
    stats = {**known, **stat_objects([u for u in urls if u not in known])}
    kept, skipped = [], []
    for record in records:
        stat = stats.get(record.source) if is_url(record.source) else None
        if stat is not None:
            record = dataclasses.replace(record, size=stat.size, mtime_ns=stat.version)
        elif is_url(record.source):
            skipped.append({"source": record.source, "reason": f"{record.source}: not found"})
            continue
        kept.append(record)
    return kept, stats, skipped


def _list_files(
    config: DatasetConfig,
) -> tuple[list[Record], list[str], dict[str, ObjectStat]]:
    """A folder's or CSV manifest's records and class names, and the stats of the images
    at URLs that listing the folder gave (the rest are stat'ed by :func:`_stat_urls`)."""
    known: dict[str, ObjectStat] = {}
    path = config.path
    if isinstance(path, Path) and not path.exists() or path is None:
        raise DatasetError(
            f"data set {config.name!r}: path {str(path)!r} does not exist "
            "(relative paths are resolved against --data-root / FEATURECACHE_DATA_ROOT)"
        )
    if config.format == "csv":
        entries, class_names = list_csv(path)
    elif isinstance(path, str):  # a folder at a URL
        entries, class_names, known = list_folder_url(path)
    else:
        entries, class_names = list_folder(path)
    if config.classes:
        entries, class_names = keep_classes(config, entries, class_names)
    if config.resplit:
        entries = [(entry, label, None) for entry, label, _ in entries]
    records = assign_splits(entries, path, config.split)
    if config.format == "csv":  # after the split: locators stay the rows as written
        records = _canonical_rows(records)
    return records, class_names, known


def canonical(config: DatasetConfig) -> DatasetConfig:
    """``config`` with its paths absolute and canonical, so that one data set lists the
    same sources and fingerprint however its path is spelled (``data/photos``,
    ``./x/../data/photos``, a link to it).

    Only what names the data set is resolved (:meth:`pathlib.Path.resolve`, links
    followed): a folder, an HDF5 file, a CSV manifest's folder (its name is kept, so
    rows stay relative to where the manifest was found). The images inside a folder
    keep their paths under it, links included: an image's source is where the data set
    holds it, not where a link points. A path that does not exist is kept as given,
    for the error that names it.
    """
    path = config.path
    if isinstance(path, Path) and path.exists():
        path = path.parent.resolve() / path.name if config.format == "csv" else path.resolve()
    hdf5 = {
        split: dataclasses.replace(s, path=s.path.resolve()) if s.path.exists() else s
        for split, s in config.hdf5.items()
    }
    return dataclasses.replace(config, path=path, hdf5=hdf5)


def _canonical_rows(records: list[Record]) -> list[Record]:
    """CSV rows with their folders resolved (a row's own name is kept, as in a folder):
    ``imgs/../imgs/a.png`` and ``imgs/a.png`` are one source."""
    folders: dict[Path, Path] = {}
    out = []
    for record in records:
        if is_url(record.source):
            out.append(record)
            continue
        path = Path(record.source)
        if path.parent not in folders:
            folders[path.parent] = path.parent.resolve()
        out.append(dataclasses.replace(record, source=str(folders[path.parent] / path.name)))
    return out


def check_classes(name: str, class_names: Sequence[str], labels: Sequence[int]) -> None:
    if len(class_names) < 2:
        found = f"only {class_names[0]!r}" if class_names else "none"
        raise DatasetError(
            f"data set {name!r} needs at least two classes to train a classifier, found {found}"
        )
    if not labels:
        raise DatasetError(f"data set {name!r} has no images")


def fingerprint(
    config: DatasetConfig, records: Sequence[Record], class_names: Sequence[str]
) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(config.describe(), sort_keys=True).encode())
    digest.update(json.dumps(list(class_names)).encode())
    for record in records:
        digest.update(
            f"{record.source}\0{record.size}:{record.mtime_ns}\0{record.label}\0{record.split}\n".encode(
                "utf-8", "surrogateescape"
            )
        )
    return digest.hexdigest()
