"""The zarr store: the only module that imports zarr.

Everything that reads or writes zarr arrays is here: opening a group at a
:class:`~featurecache.cache.storage.Location`, the staging arrays of an extraction
(:class:`ComputeStage`), writing a generation (:class:`GenerationWriter`) and reading
its arrays back. Where things are (data set and backbone groups, generations, the
``current`` pointer, locks) is :class:`featurecache.cache.Cache`'s business.

Each generation holds, per image (rows in data-set listing order)::

    features  (n_images, feature_dim) float32   bottleneck features (or float16)
    labels    (n_images,)             int32     index into attrs["class_names"]
    split     (n_images,)             string    "train" | "validation" | "test"
    keys      (n_images,)             string    BLAKE2b-128 of the image bytes
    sources   (n_images,)             string    file path, or "file.h5[index]"
    sizes     (n_images,)             int64     source file size, bytes
    mtimes    (n_images,)             int64     source modification time, ns

Rows are chunked along ``n_images`` only, with at least 1 MiB of features per chunk;
every array is compressed with Blosc (zstd, level 5, byte shuffle). zarr's
``LocalStore`` writes every chunk and metadata file by rename, so a killed writer
leaves no torn file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.errors import ContainsGroupError
from zarr.storage import FsspecStore, LocalStore

from featurecache.cache.storage import Location
from featurecache.errors import CacheError

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


def open_group(location: Location, path: str, *, mode: str, **kwargs: Any) -> zarr.Group:
    """The zarr group at ``path`` of ``location`` (``mode`` as ``zarr.open_group``'s)."""
    read_only = mode == "r"
    if location.local:
        store = LocalStore(path, read_only=read_only)
    else:  # fsspec (s3fs...); zarr wraps a synchronous file system such as memory://
        store = FsspecStore.from_url(location.url(path), read_only=read_only)
    return zarr.open_group(store, mode=mode, **kwargs)


def create_group(location: Location, path: str, attributes: dict[str, Any]) -> None:
    """Create the group at ``path`` with ``attributes`` unless it exists.

    Two processes may both find it missing and both create it (two first runs on a new
    cache): zarr then refuses the second, which finds the group it wanted.
    """
    try:
        open_group(location, path, mode="a", attributes=attributes)
    except ContainsGroupError:
        pass


def read_arrays(group: zarr.Group, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Whole arrays of ``group`` by name (a ``KeyError`` names a missing one)."""
    return {name: group[name][...] for name in names}


def read_rows(array: zarr.Array, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted ascending) of a 2-d array: each chunk is read once."""
    return array.get_orthogonal_selection((rows, slice(None)))


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


@dataclass
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

    """

    location: Location
    path: str
    n_records: int
    feature_dim: int
    batch: int
    done: set[int] = field(init=False)
    skipped: list[dict[str, str]] = field(init=False)

    def __post_init__(self) -> None:
        if self.location.is_file(f"{self.path}/zarr.json"):
            self._group = open_group(self.location, self.path, mode="r+")
            progress = dict(self._group.attrs.get("progress", {}))
            self.done = {int(b) for b in progress.get("batches", [])}
            self.skipped = list(progress.get("skipped", []))
        else:
            self._group = open_group(self.location, self.path, mode="w")
            # One chunk per batch, uncompressed: each batch is written once, cheaply
            # (the stage is temporary; the committed generation is compressed).
            _create_arrays(
                self._group,
                self.feature_dim,
                self.batch,
                ("features", "keys"),
                compressors=None,
                rows_total=self.n_records,
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
        location = self.location
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
    group = open_group(Location.parse(cache_url), path, mode="r+")
    _write_batch(group, batch, batch_size, features, keys)


def _write_batch(group: zarr.Group, batch: int, batch_size: int, features, keys) -> None:
    start = batch * batch_size
    stop = start + len(keys)
    group["features"][start:stop] = np.asarray(features, dtype=np.float32)
    group["keys"][start:stop] = np.asarray(keys, dtype=str)


class GenerationWriter:
    """Writes one generation chunk by chunk, then commits it by naming it ``current``.

    The generation is written beside the committed one, under a name no reader looks
    at (``gen-N.partial`` in a folder; its final name at a URL, where nothing points at it
    yet), and :meth:`commit` publishes it (see :mod:`featurecache.cache.storage`).
    """

    def __init__(
        self,
        location: Location,
        group_path: str,
        name: str,
        previous: str | None,
        *,
        feature_dim: int,
        dtype: str = "float32",
    ) -> None:
        self.location = location
        self.group_path = group_path
        self.name = name
        self.previous = previous
        self.writing = location.writing_name(name)
        self.feature_dim = feature_dim
        self.dtype = np.dtype(dtype)
        self.rows_per_chunk = chunk_rows(feature_dim, self.dtype.itemsize)
        self.n_rows = 0
        self._group = open_group(location, f"{group_path}/{self.writing}", mode="w")
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
        location = self.location
        location.publish(self.group_path, self.writing, self.name)
        location.set_pointer(self.group_path, self.name)
        for old in location.subdirs(self.group_path):
            if old.startswith("gen-") and old not in (self.name, self.previous):
                if not old.endswith(".partial"):
                    location.remove(f"{self.group_path}/{old}")
        return f"{self.group_path}/{self.name}"

    def abort(self) -> None:
        self.location.remove(f"{self.group_path}/{self.writing}")
