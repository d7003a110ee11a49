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

and, where the backbone asks for them (``taps``, ``finetune_from``, ``views``)::

    pooled.<layer>  (n_images, channels)    float32   a tap's pooled output (or float16)
    activations     (n_images, h, w, c)     float16   the activation map of finetune_from
    <name>.flip     same as <name>                    the horizontally flipped image's

Rows are chunked along ``n_images`` only, with at least 1 MiB per chunk of each array
(:func:`chunk_rows`); every array is compressed with Blosc (zstd, level 5, byte shuffle). zarr's
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
    """Rows per chunk: the smallest power of two whose chunk of ``feature_dim`` values
    per row is >= 1 MiB."""
    rows = MIN_CHUNK_BYTES / max(1, feature_dim * itemsize)
    return 1 << max(0, math.ceil(math.log2(rows)))


@dataclass(frozen=True)
class ArraySpec:
    """One per-image array of a generation: its ``name``, the ``shape`` of one image's
    row (``(feature_dim,)`` or ``(h, w, c)``) and the ``dtype`` it is stored as."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def row_values(self) -> int:
        return math.prod(self.shape)

    @property
    def dimension_names(self) -> tuple[str, ...]:
        if len(self.shape) == 3:
            return ("image", "y", "x", "channel")
        return ("image", "feature")

    def describe(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> list[ArraySpec]:
        """The arrays a generation's attributes list (only ``features`` before they did)."""
        arrays = attrs.get("arrays") or {
            "features": {
                "shape": [attrs["feature_dim"]],
                "dtype": attrs.get("backbone", {}).get("dtype", "float32"),
            }
        }
        return [cls(n, tuple(a["shape"]), a["dtype"]) for n, a in arrays.items()]


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
    """Rows ``rows`` (sorted ascending) of an array: each chunk is read once."""
    return array.get_orthogonal_selection((rows,) + (slice(None),) * (array.ndim - 1))


def _create_arrays(
    group: zarr.Group,
    specs: Sequence[ArraySpec],
    names: Sequence[str],
    rows: int | None = None,
    compressors: Any = COMPRESSOR,
    rows_total: int = 0,
):
    """Create the per-image arrays ``specs`` and the row columns ``names``,
    ``rows_total`` long (0: grown by appends); chunks of ``rows`` rows (default: each
    array's :func:`chunk_rows`, the columns' as the first array's)."""
    arrays = {}
    for spec in specs:
        n = rows or chunk_rows(spec.row_values, np.dtype(spec.dtype).itemsize)
        arrays[spec.name] = group.create_array(
            spec.name,
            shape=(rows_total, *spec.shape),
            dtype=spec.dtype,
            chunks=(n, *spec.shape),
            compressors=compressors,
            dimension_names=spec.dimension_names,
        )
    column_rows = rows or arrays[specs[0].name].chunks[0]
    for name in names:
        arrays[name] = group.create_array(
            name,
            shape=(rows_total,),
            dtype=_DTYPES[name],
            chunks=(column_rows,),
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

    ``arrays`` are the per-image arrays one image gives (``features`` first).
    """

    location: Location
    path: str
    n_records: int
    arrays: Sequence[ArraySpec]
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
                self.arrays,
                ("keys",),
                self.batch,
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

    def write(self, batch: int, arrays: dict[str, np.ndarray], keys: Sequence[str]) -> None:
        """Write batch ``batch``'s rows of every array (zero rows and key ``""`` where an
        image was skipped)."""
        _write_batch(self._group, batch, self.batch, arrays, keys)

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

    def array(self, name: str) -> zarr.Array:
        return self._group[name]

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
    cache_url: str, path: str, batch: int, batch_size: int, arrays: dict[str, np.ndarray], keys
) -> None:
    """Write one batch's rows into the stage at ``path`` of the cache at ``cache_url``.

    Called by whichever process computed the batch (a Dask worker, or the local
    process); rows ``[batch * batch_size, ...)`` are one chunk of each array.
    """
    group = open_group(Location.parse(cache_url), path, mode="r+")
    _write_batch(group, batch, batch_size, arrays, keys)


def _write_batch(group: zarr.Group, batch: int, batch_size: int, arrays, keys) -> None:
    start = batch * batch_size
    stop = start + len(keys)
    for name, values in arrays.items():
        target = group[name]
        target[start:stop] = np.asarray(values, dtype=target.dtype)
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
        arrays: Sequence[ArraySpec],
    ) -> None:
        self.location = location
        self.group_path = group_path
        self.name = name
        self.previous = previous
        self.writing = location.writing_name(name)
        self.specs = {spec.name: spec for spec in arrays}
        self.n_rows = 0
        self._group = open_group(location, f"{group_path}/{self.writing}", mode="w")
        self._arrays = _create_arrays(self._group, arrays, ROW_ARRAYS)
        # Rows are written in whole chunks of every array (all powers of two).
        self.rows_per_chunk = max(self._arrays[s.name].chunks[0] for s in arrays)
        self._values: dict[str, list[np.ndarray]] = {n: [] for n in self.specs}
        self._columns: dict[str, list[Any]] = {n: [] for n in ROW_ARRAYS}
        self._buffered = 0

    def append(self, arrays: dict[str, np.ndarray], **columns: Sequence[Any]) -> None:
        """Add rows: every per-image array, ``(b, *spec.shape)``, and every row column.

        Raises
        ------
        CacheError
            If an array is missing or its rows have another shape than its spec's.
        """
        rows = len(columns["keys"])
        for name, spec in self.specs.items():
            values = arrays.get(name)
            if values is None or values.shape != (rows, *spec.shape):
                raise CacheError(
                    f"array {name!r} of shape {None if values is None else values.shape} does "
                    f"not match {(rows, *spec.shape)}"
                )
            self._values[name].append(values)
        for name in ROW_ARRAYS:
            self._columns[name].extend(columns[name])
        self._buffered += rows
        while self._buffered >= self.rows_per_chunk:
            self._flush(self.rows_per_chunk)

    def _flush(self, rows: int) -> None:
        for name, parts in self._values.items():
            values = np.concatenate(parts, axis=0)
            self._arrays[name].append(values[:rows].astype(self.specs[name].dtype), axis=0)
            self._values[name] = [values[rows:]] if values.shape[0] > rows else []
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
