"""The zarr store: the only module that imports zarr.

Opening a group at a :class:`~featurecache.cache.storage.Location`, staging arrays,
writing a generation (:class:`GenerationWriter`), reading arrays back and checking their
chunks. Where things are is :class:`featurecache.cache.Cache`'s business.

Each generation holds, per image (rows in data-set listing order)::

    features  (n_images, feature_dim) float32   bottleneck features (or float16)
    labels    (n_images,)             int32     index into attrs["class_names"]
    split     (n_images,)             string    "train" | "validation" | "test"
    keys      (n_images,)             string    BLAKE2b-128 of the image bytes
    sources   (n_images,)             string    file path, or "file.h5[index]"
    sizes     (n_images,)             int64     source file size, bytes
    mtimes    (n_images,)             int64     source modification time, ns

and, where the backbone asks for them (``taps``, ``finetune_from``, ``views``)::

    pooled.<layer>  (n_images, channels)    float32   a tap's pooled output (dim <layer>.feature)
    activations     (n_images, h, w, c)     float16   the activation map of finetune_from
    <name>.flip     same as <name>                    the horizontally flipped image's

Rows are chunked along ``n_images`` only, with at least 1 MiB per chunk of each array
(:func:`chunk_rows`); every array is compressed with Blosc (zstd, level 5, byte shuffle) and
each compressed chunk carries a CRC-32C checksum (zarr v3's standard ``crc32c`` codec), so a
damaged chunk is detected when it is read (:class:`~featurecache.errors.DamagedError`) instead
of decoding to wrong numbers. zarr's ``LocalStore`` writes every chunk and metadata file by
rename, so a killed writer leaves no torn file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.sync import sync
from zarr.errors import ContainsGroupError
from zarr.storage import FsspecStore, LocalStore

from featurecache.cache.storage import Location
from featurecache.errors import CacheError, DamagedError

MIN_CHUNK_BYTES = 1 << 20
COMPRESSOR = (BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"), Crc32cCodec())
CODEC_DESCRIPTION = "blosc(zstd, clevel=5, shuffle) + crc32c"
# Store every chunk, even one of zeros (zarr skips those by default): a missing chunk is
# then always damage, where zarr alone would read it as zeros.
_EVERY_CHUNK = {"write_empty_chunks": True}
#: What reading a damaged chunk raises inside zarr: a checksum mismatch (ValueError),
#: a Blosc stream that does not decompress (RuntimeError), a chunk of the wrong size.
DECODE_ERRORS = (ValueError, RuntimeError, TypeError)
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
        """zarr v3 names (xarray's dims): ``image``, then ``feature`` (``<tap>.feature``
        for a pooled tap: widths differ) or ``y, x, channel``."""
        if len(self.shape) == 3:
            return ("image", "y", "x", "channel")
        base = self.name.removesuffix(".flip")
        return ("image", "feature" if base == "features" else f"{base}.feature")

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


def open_group(location: Location, path: str, *, mode: str, **kwargs: Any) -> zarr.Group:
    """The zarr group at ``path`` of ``location`` (``mode`` as ``zarr.open_group``'s)."""
    return zarr.open_group(_store(location, path, read_only=mode == "r"), mode=mode, **kwargs)


def _store(location: Location, path: str, *, read_only: bool) -> Any:
    if location.local:
        return LocalStore(path, read_only=read_only)
    # fsspec (s3fs...); zarr wraps a synchronous file system such as memory://
    return FsspecStore.from_url(location.url(path), read_only=read_only)


def rewrite_group_metadata(location: Location, path: str, attributes: dict[str, Any]) -> None:
    """Write the group metadata (``zarr.json``) at ``path`` again, with ``attributes``,
    leaving what the group holds untouched (``verify --repair`` of unreadable metadata)."""
    store = _store(location, path, read_only=False)
    sync(store.delete("zarr.json"))
    zarr.open_group(store, mode="a", attributes=attributes)


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
    """Whole arrays of ``group`` by name (a ``KeyError`` names a missing one).

    Raises
    ------
    DamagedError
        If a chunk is missing or fails its checksum or decompression.
    """
    return {name: read_slice(open_array(group, name), slice(None)) for name in names}


def open_array(group: zarr.Group, name: str) -> zarr.Array:
    """Array ``name`` of ``group`` (a ``KeyError`` if there is none).

    Raises
    ------
    DamagedError
        If its metadata (``zarr.json``) is not valid JSON or not zarr's.
    """
    try:
        return group[name]
    except (ValueError, TypeError) as exc:  # a missing array is a KeyError: not caught
        where = _where(group.store)
        raise DamagedError(
            f"the cache is damaged: {where}, array {name!r} has unreadable metadata "
            f"(zarr.json: {exc}); run `featurecache verify --repair PIPELINE` to rewrite it",
            path=where,
            array=name,
        ) from exc


def read_rows(array: zarr.Array, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted ascending) of an array, each chunk read once; a
    :class:`DamagedError` if a chunk fails its checksum or decompression."""
    _require_chunks(array, np.unique(np.asarray(rows) // array.chunks[0]))
    try:
        return array.get_orthogonal_selection((rows,) + (slice(None),) * (array.ndim - 1))
    except DECODE_ERRORS as exc:
        raise damaged(array) from exc


def read_slice(array: zarr.Array, rows: slice) -> np.ndarray:
    """Rows ``rows`` of an array; a :class:`DamagedError` as :func:`read_rows`."""
    first, stop, _ = rows.indices(array.shape[0])
    if stop > first:
        step = array.chunks[0]
        _require_chunks(array, range(first // step, (stop - 1) // step + 1))
    try:
        return array[rows]
    except DECODE_ERRORS as exc:
        raise damaged(array) from exc


def _require_chunks(array: zarr.Array, chunks: Any) -> None:
    """A :class:`DamagedError` if one of the chunks (numbers along rows) is not stored:
    zarr would read it as zeros. Only checksummed arrays store every chunk. Every chunk
    asked for: one listing (``nchunks_initialized``), not one request per chunk."""
    if not checksummed(array):
        return
    chunks = list(chunks)
    if len(chunks) == array.nchunks:
        if array.nchunks_initialized < array.nchunks:
            raise damaged(array)
    elif not all(_chunk_stored(array, chunk) for chunk in chunks):
        raise damaged(array)


def checksummed(array: zarr.Array) -> bool:
    """Whether the array's chunks carry CRC-32C checksums (written since they do)."""
    return any(isinstance(c, Crc32cCodec) for c in array.metadata.codecs)


def chunk_problems(array: zarr.Array) -> list[tuple[int, int, str]]:
    """Every damaged chunk of ``array``, read one by one.

    Returns ``(first row, stop row, problem)`` per damaged chunk: "missing" (zarr would
    read its fill value, zeros, silently), "checksum mismatch" or the decoder's error.
    Missing chunks count only in checksummed arrays: older ones did not store chunks that
    were all zeros.
    """
    n, step = array.shape[0], array.chunks[0]
    every_chunk_stored = checksummed(array)
    problems = []
    for first in range(0, n, step):
        stop = min(n, first + step)
        if every_chunk_stored and not _chunk_stored(array, first // step):
            problems.append((first, stop, "missing"))
            continue
        try:
            array[first:stop]
        except DECODE_ERRORS as exc:
            text = str(exc)
            reason = "checksum mismatch" if "checksum" in text else text.split("\n")[0][:120]
            problems.append((first, stop, reason))
    return problems


def _where(store: Any) -> str:
    """The generation a store opens, for messages: a folder, or a URL."""
    if isinstance(store, FsspecStore):
        return store.fs.unstrip_protocol(store.path)
    return str(getattr(store, "root", "")).rstrip("/")


def _chunk_stored(array: zarr.Array, chunk: int) -> bool:
    """Whether chunk number ``chunk`` (along rows) of ``array`` is in its store."""
    key = array.metadata.encode_chunk_key((int(chunk),) + (0,) * (array.ndim - 1))
    prefix = f"{array.path}/" if array.path else ""
    return sync(array.store.exists(prefix + key))


def damaged(array: zarr.Array) -> DamagedError:
    """The :class:`DamagedError` for an array whose reading failed: which rows, and the fix."""
    where, name = _where(array.store), array.path.rsplit("/", 1)[-1]
    problems = chunk_problems(array)
    rows = ", ".join(f"{a}-{b - 1}" for a, b, _ in problems) or "unknown"
    reason = problems[0][2] if problems else "unreadable"
    return DamagedError(
        f"the cache is damaged: {where}, array {name!r}, rows {rows} ({reason}); "
        "run `featurecache verify --repair PIPELINE` to recompute them from the images",
        path=where,
        array=name,
        rows=[(a, b) for a, b, _ in problems],
    )


def create_arrays(
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
            config=_EVERY_CHUNK,
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
            config=_EVERY_CHUNK,
        )
    return arrays


def write_batch(group: zarr.Group, batch: int, batch_size: int, arrays, keys) -> None:
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
        self._arrays = create_arrays(self._group, arrays, ROW_ARRAYS)
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
