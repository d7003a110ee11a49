"""The feature cache: the only module that imports zarr.

Layout (zarr format 3, readable with plain ``zarr`` or ``xarray``)::

    cache/                                   root group, attrs {"featurecache_format": 2}
      <dataset>/                             group per data set
        <backbone>-<size>px-<pooling>-<recipe hash>/   group per backbone configuration
          gen-000001/, gen-000002/           generations: complete, immutable groups
          current -> gen-000002              symlink to the committed generation
      .staging/<dataset>/<group>/<plan>/     features being computed (resumable; batch b = chunk b)
      .locks/<dataset>.lock                  one writer per data set at a time

Each generation holds, per image (rows in data-set listing order):

    features  (n_images, feature_dim) float32   bottleneck features
    labels    (n_images,)             int32     index into attrs["class_names"]
    split     (n_images,)             string    "train" | "validation" | "test"
    keys      (n_images,)             string    BLAKE2b-128 of the image bytes
    sources   (n_images,)             string    file path, or "file.h5[index]"
    sizes     (n_images,)             int64     source file size, bytes
    mtimes    (n_images,)             int64     source modification time, ns

Rows are chunked along ``n_images`` only, with at least 1 MiB of features per
chunk; every array is compressed with Blosc (zstd, level 5, byte shuffle).

Commit protocol: a new generation is written beside the old one, then ``current``
is swapped with one ``os.replace`` of a symlink (atomic on POSIX), so a reader
sees the old generation or the new one, never a mix. zarr's ``LocalStore`` writes
every chunk and metadata file by rename too, so a killed writer leaves no torn
file. The previous generation is kept (a reader may still be using it) until the
next commit or ``featurecache gc``.

The cache may also live at an fsspec URL (``s3://bucket/prefix``): then a
generation is written in place and ``current`` is an object holding its name,
written last (see :mod:`featurecache.storage`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from filelock import FileLock, Timeout
from zarr.codecs import BloscCodec
from zarr.storage import FsspecStore, LocalStore

from featurecache.errors import CacheError, LockedError
from featurecache.storage import CURRENT, Location, is_url  # noqa: F401

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
STAGING = ".staging"
MIN_CHUNK_BYTES = 1 << 20
COMPRESSOR = BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")
CODEC_DESCRIPTION = "blosc(zstd, clevel=5, shuffle)"
ROW_ARRAYS = ("labels", "split", "keys", "sources", "sizes", "mtimes")
_DTYPES = {
    "labels": "int32",
    "split": str,
    "keys": str,
    "sources": str,
    "sizes": "int64",
    "mtimes": "int64",
}


def chunk_rows(feature_dim: int, itemsize: int = 4) -> int:
    """Rows per chunk: the smallest power of two whose feature chunk is >= 1 MiB."""
    rows = MIN_CHUNK_BYTES / max(1, feature_dim * itemsize)
    return 1 << max(0, math.ceil(math.log2(rows)))


def storable(text: str) -> str:
    """A path as zarr can store it (UTF-8): undecodable bytes of a non-UTF-8 file
    name become ``\\xNN`` escapes, deterministically."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class FeatureSet:
    """One committed generation, read into memory.

    Attributes
    ----------
    features : ndarray of shape (n_images, feature_dim), dtype float32
    labels : ndarray of shape (n_images,), dtype int32
    split, keys, sources : ndarray of shape (n_images,), dtype object (str)
    class_names : list of str
    attrs : dict
        The generation's provenance attributes.
    """

    features: np.ndarray  # always float32 in memory, whatever the storage type
    labels: np.ndarray
    split: np.ndarray
    keys: np.ndarray
    sources: np.ndarray
    class_names: list[str]
    attrs: dict[str, Any]

    def subset(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels of one split."""
        mask = self.split == split
        return self.features[mask], self.labels[mask]

    @property
    def splits(self) -> list[str]:
        present = set(self.split.tolist())
        return [s for s in ("train", "validation", "test") if s in present]


def cache_id(root: str | Path) -> str:
    """How a cache is named in head.json: an absolute folder path, or its URL."""
    return str(Path(root).resolve()) if not is_url(root) else str(root)


class Cache:
    """A featurecache store at a local folder or an fsspec URL (created on first write).

    ``root`` is a folder path, or a URL such as ``s3://bucket/prefix`` or
    ``memory://name`` (see :mod:`featurecache.storage`).
    """

    def __init__(self, root: str | Path) -> None:
        self.location = Location.parse(root)
        self.root: Path | str = Path(self.location.root) if self.location.local else root
        self.url = self.location.url()

    def _path(self, *parts: str) -> str:
        return self.location.join(*parts)

    def _open(self, path: str, *, mode: str, **kwargs: Any) -> zarr.Group:
        read_only = mode == "r"
        if self.location.local:
            store = LocalStore(path, read_only=read_only)
        else:  # fsspec (s3fs...); zarr wraps a synchronous file system such as memory://
            store = FsspecStore.from_url(self.location.url(path), read_only=read_only)
        return zarr.open_group(store, mode=mode, **kwargs)

    # ------------------------------------------------------------------ reading

    def exists(self) -> bool:
        return self.location.is_file(self._path("zarr.json"))

    def check(self) -> None:
        """Raise :class:`CacheError` unless ``root`` is a featurecache cache."""
        if self.location.local and not Path(self.location.root).exists():
            raise CacheError(f"no cache at {self.url!r}; run `featurecache extract` first")
        attrs = self.location.read_json(self.location.root)
        if attrs is None:
            if not self.location.local and not self.location.entries(self.location.root):
                raise CacheError(f"no cache at {self.url!r}; run `featurecache extract` first")
            raise CacheError(f"{self.url!r} is not a featurecache cache (no zarr.json)")
        if "featurecache_format" not in attrs:
            raise CacheError(f"{self.url!r} is a zarr store but not a featurecache cache")
        if attrs["featurecache_format"] != FORMAT_VERSION:
            raise CacheError(
                f"{self.url!r} has cache format {attrs['featurecache_format']}, this "
                f"featurecache reads format {FORMAT_VERSION}; extract into a new --cache"
            )

    def datasets(self) -> list[str]:
        """Names of the data set groups (hidden folders such as .staging excluded)."""
        if not self.exists():
            return []
        self.check()
        return [d for d in self.location.subdirs(self.location.root) if not d.startswith(".")]

    def group_names(self, dataset: str) -> list[str]:
        return self.location.subdirs(self._path(dataset))

    def group_dirs(self) -> Iterator[tuple[str, str, str]]:
        """Yield ``(dataset, group, path)`` for every backbone group folder."""
        for dataset in self.datasets():
            for group in self.group_names(dataset):
                yield dataset, group, self._path(dataset, group)

    def groups(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Yield ``(dataset, group, attrs)`` for every group with a committed generation."""
        for dataset, group, _ in self.group_dirs():
            name = self.committed(dataset, group)
            attrs = self.location.read_json(self._path(dataset, group, name)) if name else None
            if attrs and "recipe_hash" in attrs:
                yield dataset, group, attrs

    def committed(self, dataset: str, group: str) -> str | None:
        """Name of the group's committed generation (``gen-NNNNNN``), or None."""
        return self.location.pointer(self._path(dataset, group))

    def current(self, dataset: str, group: str) -> str:
        """Path of the committed generation (resolved, so it stays valid to read)."""
        name = self.committed(dataset, group)
        path = self._path(dataset, group, name) if name else None
        if path is None or not self.location.is_file(f"{path}/zarr.json"):
            raise CacheError(
                f"the cache {self.url!r} has no group {dataset}/{group}; "
                "run `featurecache extract` (see `featurecache info`)"
            )
        return path

    def attrs(self, dataset: str, group: str) -> dict[str, Any]:
        return self.location.read_json(self.current(dataset, group)) or {}

    def open_rows(self, dataset: str, group: str) -> zarr.Group:
        """The committed generation as a read-only zarr group (arrays read lazily)."""
        return self._open(self.current(dataset, group), mode="r")

    def read(self, dataset: str, group: str) -> FeatureSet:
        """Read the committed generation into memory.

        Raises
        ------
        CacheError
            If the group does not exist or is incomplete.
        """
        path = self.current(dataset, group)
        attrs = self.location.read_json(path) or {}
        node = self._open(path, mode="r")
        try:
            arrays = {name: node[name][...] for name in ("features", *ROW_ARRAYS[:4])}
        except KeyError as exc:
            raise CacheError(
                f"group {dataset}/{group} is incomplete ({exc}); run `featurecache gc` "
                "and extract again"
            ) from exc
        return FeatureSet(
            features=np.asarray(arrays["features"], dtype=np.float32),
            labels=np.asarray(arrays["labels"], dtype=np.int32),
            split=np.asarray(arrays["split"], dtype=object),
            keys=np.asarray(arrays["keys"], dtype=object),
            sources=np.asarray(arrays["sources"], dtype=object),
            class_names=list(attrs["class_names"]),
            attrs=attrs,
        )

    def nbytes(self, dataset: str, group: str) -> int:
        """Bytes stored for the committed generation."""
        return self.location.size(self.current(dataset, group))

    def size(self, path: str) -> int:
        return self.location.size(path)

    def remove(self, path: str) -> None:
        self.location.remove(path)

    def relative(self, path: str) -> str:
        """``path`` relative to the cache root, for messages."""
        return path[len(self.location.root) :].lstrip("/")

    def generations(self, dataset: str, group: str) -> list[str]:
        """Paths of every generation folder of a group (committed or not), oldest first."""
        return [
            self._path(dataset, group, name)
            for name in self.location.subdirs(self._path(dataset, group))
            if name.startswith("gen-")
        ]

    def staged_datasets(self) -> list[str]:
        return self.location.subdirs(self._path(STAGING))

    def staging_path(self, dataset: str) -> str:
        return self._path(STAGING, dataset)

    # ------------------------------------------------------------------ writing

    def ensure(self) -> None:
        """Create the root group if needed; refuse a folder that is something else."""
        visible = [e for e in self.location.entries(self.location.root) if not e.startswith(".")]
        if visible and not self.exists():
            raise CacheError(
                f"{self.url!r} exists and is not a featurecache cache; choose another --cache"
            )
        if not self.exists():
            self._open(
                self.location.root, mode="a", attributes={"featurecache_format": FORMAT_VERSION}
            )
        self.check()

    @contextmanager
    def lock(self, dataset: str, *, wait: bool = True) -> Iterator[None]:
        """Hold the writer lock of one data set (an OS file lock, released by the
        kernel if the holder dies, so a killed run never blocks the next). For a
        cache at a URL the lock file is on this machine (see
        :mod:`featurecache.storage`).

        Raises
        ------
        LockedError
            If ``wait`` is false and another process holds the lock.
        """
        path = self.location.lock_file(dataset)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if not wait:
                raise LockedError(
                    f"another featurecache process is writing data set {dataset!r} in "
                    f"{self.url!r}; try again later, or pass --wait to queue"
                ) from None
            log.warning("waiting for another process writing data set %r", dataset)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def stage(
        self, dataset: str, group: str, plan: str, *, n_records: int, feature_dim: int, batch: int
    ) -> ComputeStage:
        """The resumable staging area for computing ``plan``'s ``n_records`` features.

        Stale stages of the same group with another plan are removed (the caller
        holds the data set's lock, so no one else is using them).
        """
        parent = self._path(STAGING, dataset, group)
        for other in self.location.subdirs(parent):
            if other != plan:
                log.info("removing stale staging %s", self.relative(f"{parent}/{other}"))
                self.location.remove(self.location.join(STAGING, dataset, group, other))
        return ComputeStage(
            self, self._path(STAGING, dataset, group, plan), n_records, feature_dim, batch
        )

    def generation_writer(
        self,
        dataset: str,
        group: str,
        *,
        feature_dim: int,
        group_attrs: dict[str, Any],
        dtype: str = "float32",
    ) -> GenerationWriter:
        """Start the next generation of a group; invisible until ``commit``.

        ``dtype`` is the features' storage type, ``float32`` or ``float16``.
        """
        for path in (self._path(dataset), self._path(dataset, group)):
            if not self.location.is_file(f"{path}/zarr.json"):
                attrs = group_attrs if path == self._path(dataset, group) else {}
                self._open(path, mode="a", attributes=attrs)
        committed = self.committed(dataset, group)
        names = self.location.subdirs(self._path(dataset, group))
        for name in names:
            if name.endswith(".partial"):
                self.location.remove(self._path(dataset, group, name))
        numbers = [int(n[4:]) for n in names if n.startswith("gen-") and n[4:].isdigit()]
        name = f"gen-{max(numbers, default=0) + 1:06d}"
        return GenerationWriter(
            self, dataset, group, name, committed, feature_dim=feature_dim, dtype=dtype
        )


def _create_arrays(
    group: zarr.Group,
    feature_dim: int,
    rows: int,
    names: Sequence[str],
    dtype: str = "float32",
    compressors: Any = COMPRESSOR,
    rows_total: int = 0,
):
    """Create the row arrays, ``rows_total`` long (0: grown by appends)."""
    arrays = {}
    for name in names:
        if name == "features":
            arrays[name] = group.create_array(
                "features",
                shape=(rows_total, feature_dim),
                dtype=dtype,
                chunks=(rows, feature_dim),
                compressors=compressors,
                dimension_names=("image", "feature"),
            )
        else:
            arrays[name] = group.create_array(
                name,
                shape=(rows_total,),
                dtype=_DTYPES[name],
                chunks=(rows,),
                compressors=compressors,
                dimension_names=("image",),
            )
    return arrays


class ComputeStage:
    """Features computed so far for one extraction plan, durable batch by batch.

    Row ``i`` holds the ``i``-th image of the plan's compute list; batch ``b`` is
    rows ``[b * batch, (b + 1) * batch)``, which is exactly one chunk, so each
    batch is written by exactly one writer (one process, or one Dask worker) and
    never shares a chunk with another (zarr chunks must have one writer). A
    skipped (undecodable) image leaves a zero row and an empty key.

    Only the coordinator records progress (``batches`` done, ``skipped``), after
    the batch's chunks are written; both are whole-object writes, so after a kill
    the stage holds every recorded batch, and a batch written but not recorded is
    simply computed and written again.

    Raises
    ------
    CacheError
        If an existing stage has another shape (it is then removed by the caller's
        next plan).
    """

    def __init__(
        self, cache: Cache, path: str, n_records: int, feature_dim: int, batch: int
    ) -> None:
        self.cache = cache
        self.path = path
        self.n_records = n_records
        self.batch = batch
        self.feature_dim = feature_dim
        if cache.location.is_file(f"{path}/zarr.json"):
            self._group = cache._open(path, mode="r+")
            progress = dict(self._group.attrs.get("progress", {}))
            self.done: set[int] = {int(b) for b in progress.get("batches", [])}
            self.skipped: list[dict[str, str]] = list(progress.get("skipped", []))
        else:
            self._group = cache._open(path, mode="w")
            # One chunk per batch, uncompressed: each batch is written once, cheaply
            # (the stage is temporary; the committed generation is compressed).
            _create_arrays(
                self._group,
                feature_dim,
                batch,
                ("features", "keys"),
                compressors=None,
                rows_total=n_records,
            )
            self.done, self.skipped = set(), []
            self._record()

    @property
    def n_batches(self) -> int:
        return math.ceil(self.n_records / self.batch)

    def missing(self) -> list[int]:
        """Batch numbers not yet recorded as done, in order."""
        return [b for b in range(self.n_batches) if b not in self.done]

    @property
    def records_done(self) -> int:
        return sum(min(self.batch, self.n_records - b * self.batch) for b in self.done)

    def write(self, batch: int, features: np.ndarray, keys: Sequence[str]) -> None:
        """Write batch ``batch``'s rows (``features`` zero and key ``""`` where skipped)."""
        _write_batch(self._group, batch, self.batch, features, keys)

    def record(self, batches: Sequence[int], skipped: Sequence[dict[str, str]]) -> None:
        """Mark ``batches`` (already written) done, with the images they skipped."""
        self.done.update(batches)
        self.skipped.extend(skipped)
        self._record()

    def _record(self) -> None:
        self._group.attrs["progress"] = {
            "batches": sorted(self.done),
            "records_done": self.records_done,
            "skipped": self.skipped,
        }

    def features(self) -> zarr.Array:
        return self._group["features"]

    def keys(self) -> list[str]:
        """Every row's content key; ``""`` for a skipped image."""
        return [str(k) for k in self._group["keys"][...]] if self.n_records else []

    def remove(self) -> None:
        """Delete the stage, and its parent folders when they are left empty."""
        location = self.cache.location
        location.remove(self.path)
        parent = self.path
        for _ in range(2):
            parent = parent.rsplit("/", 1)[0]
            if location.entries(parent):
                break
            location.remove(parent)


def write_stage_batch(
    cache_url: str, path: str, batch: int, batch_size: int, features: np.ndarray, keys
) -> None:
    """Write one batch's rows into the stage at ``path`` of the cache at ``cache_url``.

    Called by whichever process computed the batch (a Dask worker, or the local
    process); rows ``[batch * batch_size, ...)`` are one chunk of each array.
    """
    _write_batch(Cache(cache_url)._open(path, mode="r+"), batch, batch_size, features, keys)


def _write_batch(group: zarr.Group, batch: int, batch_size: int, features, keys) -> None:
    start = batch * batch_size
    stop = start + len(keys)
    group["features"][start:stop] = np.asarray(features, dtype=np.float32)
    group["keys"][start:stop] = np.asarray(keys, dtype=str)


class GenerationWriter:
    """Writes one generation chunk by chunk, then commits it by naming it ``current``."""

    def __init__(
        self,
        cache: Cache,
        dataset: str,
        group: str,
        name: str,
        previous: str | None,
        *,
        feature_dim: int,
        dtype: str = "float32",
    ) -> None:
        self.cache = cache
        self.group_path = cache._path(dataset, group)
        self.name = name
        self.previous = previous
        self.writing = cache.location.writing_name(name)
        self.feature_dim = feature_dim
        self.dtype = np.dtype(dtype)
        self.rows_per_chunk = chunk_rows(feature_dim, self.dtype.itemsize)
        self.n_rows = 0
        self._group = cache._open(f"{self.group_path}/{self.writing}", mode="w")
        self._arrays = _create_arrays(
            self._group, feature_dim, self.rows_per_chunk, ("features", *ROW_ARRAYS), dtype
        )
        self._features: list[np.ndarray] = []
        self._columns: dict[str, list[Any]] = {n: [] for n in ROW_ARRAYS}
        self._buffered = 0

    def append(self, features: np.ndarray, **columns: Sequence[Any]) -> None:
        """Add rows: ``features`` of shape ``(b, feature_dim)`` and every row column."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise CacheError(
                f"features of shape {features.shape} do not match feature_dim {self.feature_dim}"
            )
        self._features.append(features)
        for name in ROW_ARRAYS:
            self._columns[name].extend(columns[name])
        self._buffered += features.shape[0]
        while self._buffered >= self.rows_per_chunk:
            self._flush(self.rows_per_chunk)

    def _flush(self, rows: int) -> None:
        features = np.concatenate(self._features, axis=0)
        self._arrays["features"].append(features[:rows].astype(self.dtype), axis=0)
        self._features = [features[rows:]] if features.shape[0] > rows else []
        for name, values in self._columns.items():
            self._arrays[name].append(np.asarray(values[:rows], dtype=_DTYPES[name]), axis=0)
            self._columns[name] = values[rows:]
        self._buffered -= rows
        self.n_rows += rows

    def commit(self, attrs: dict[str, Any]) -> str:
        """Flush, write ``attrs``, and make this generation ``current`` atomically.

        Generations other than this one and the one it replaces are deleted.
        """
        if self._buffered:
            self._flush(self._buffered)
        self._group.attrs.update({**attrs, "n_images": self.n_rows, "generation": self.name})
        location = self.cache.location
        location.publish(self.group_path, self.writing, self.name)
        location.set_pointer(self.group_path, self.name)
        for old in location.subdirs(self.group_path):
            if old.startswith("gen-") and old not in (self.name, self.previous):
                if not old.endswith(".partial"):
                    location.remove(f"{self.group_path}/{old}")
        return f"{self.group_path}/{self.name}"

    def abort(self) -> None:
        self.cache.location.remove(f"{self.group_path}/{self.writing}")
