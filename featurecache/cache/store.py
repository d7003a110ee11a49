"""The zarr store: the only module that imports zarr or knows its file format.

Opening and creating groups at a :class:`~featurecache.cache.storage.Location` and
reading their attributes, creating the arrays a generation or a staging area holds
(:mod:`featurecache.cache.arrays` says which), appending and writing rows, reading arrays
back and checking their chunks. Where things are is :class:`featurecache.cache.Cache`'s
business; committing a generation is :mod:`featurecache.cache.writing`'s.

Every array is compressed with Blosc (zstd, level 5, byte shuffle) and each compressed
chunk carries a CRC-32C checksum (zarr v3's standard ``crc32c`` codec), so a damaged
chunk is detected when it is read (:class:`~featurecache.errors.DamagedError`) instead of
decoding to wrong numbers. zarr's ``LocalStore`` writes every chunk and metadata file by
rename, so a killed writer leaves no torn file.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine, Sequence
from typing import Any, Literal, TypeVar

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.errors import ContainsGroupError
from zarr.storage import FsspecStore, LocalStore

from featurecache.cache.arrays import ROW_COLUMNS, ArraySpec
from featurecache.cache.storage import Location
from featurecache.errors import DamagedError

COMPRESSOR = (BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"), Crc32cCodec())
CODEC_DESCRIPTION = "blosc(zstd, clevel=5, shuffle) + crc32c"
# Store every chunk, even one of zeros (zarr skips those by default): a missing chunk is
# then always damage, where zarr alone would read it as zeros.
_EVERY_CHUNK: Any = {"write_empty_chunks": True}  # zarr.create_array(config=...)
#: What reading a damaged chunk raises inside zarr: a checksum mismatch (ValueError),
#: a Blosc stream that does not decompress (RuntimeError), a chunk of the wrong size.
DECODE_ERRORS = (ValueError, RuntimeError, TypeError)
#: zarr v3's metadata document of a group or array (its attributes are in it).
METADATA = "zarr.json"
_T = TypeVar("_T")


def _store_sync(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run a zarr store coroutine (``store.exists(key)``, ``store.delete(key)``) from
    synchronous code, on zarr's own event loop.

    zarr 3.1 (3.1.6 when written) offers a store's key operations as coroutines only; the
    way its own synchronous API runs them is ``zarr.core.sync.sync``, a private module
    with no public equivalent. This is the one place featurecache uses it
    (tests/cache/test_store.py tests it).
    """
    from zarr.core.sync import sync

    return sync(coroutine)


def read_attrs(location: Location, path: str) -> dict[str, Any] | None:
    """The attributes of the zarr group at ``path``, read from its metadata document
    without opening it; None if the document is missing or unreadable."""
    raw = location.read_bytes(f"{path}/{METADATA}")
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    attrs = doc.get("attributes", {}) if isinstance(doc, dict) else None
    return attrs if isinstance(attrs, dict) else None


def is_node(location: Location, path: str) -> bool:
    """Whether a zarr group or array is at ``path`` (its metadata document exists)."""
    return location.is_file(f"{path}/{METADATA}")


#: How a group is opened: ``zarr.open_group``'s modes.
Mode = Literal["r", "r+", "a", "w", "w-"]


def open_group(location: Location, path: str, *, mode: Mode, **kwargs: Any) -> zarr.Group:
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
    _store_sync(store.delete(METADATA))
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
        node = group[name]
    except (ValueError, TypeError) as exc:  # a missing array is a KeyError: not caught
        where = _where(group.store)
        raise DamagedError(
            f"the cache is damaged: {where}, array {name!r} has unreadable metadata "
            f"(zarr.json: {exc}); run `featurecache verify --repair CACHE` to rewrite it",
            path=where,
            array=name,
        ) from exc
    if not isinstance(node, zarr.Array):
        raise KeyError(name)  # a group of that name: no such array
    return node


def read_rows(array: zarr.Array, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted ascending) of an array, each chunk read once; a
    :class:`DamagedError` if a chunk fails its checksum or decompression."""
    _require_chunks(array, np.unique(np.asarray(rows) // array.chunks[0]))
    try:
        selection = (rows,) + (slice(None),) * (array.ndim - 1)
        return np.asarray(array.get_orthogonal_selection(selection))
    except DECODE_ERRORS as exc:
        raise damaged(array) from exc


def read_slice(array: zarr.Array, rows: slice) -> np.ndarray:
    """Rows ``rows`` of an array; a :class:`DamagedError` as :func:`read_rows`."""
    first, stop, _ = rows.indices(array.shape[0])
    if stop > first:
        step = array.chunks[0]
        _require_chunks(array, range(first // step, (stop - 1) // step + 1))
    try:
        return np.asarray(array[rows])
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
    codecs = getattr(array.metadata, "codecs", ())  # zarr format 2 metadata has none
    return any(isinstance(c, Crc32cCodec) for c in codecs)


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
    return _store_sync(array.store.exists(prefix + key))


def damaged(array: zarr.Array) -> DamagedError:
    """The :class:`DamagedError` for an array whose reading failed: which rows, and the fix."""
    where, name = _where(array.store), array.path.rsplit("/", 1)[-1]
    problems = chunk_problems(array)
    rows = ", ".join(f"{a}-{b - 1}" for a, b, _ in problems) or "unknown"
    reason = problems[0][2] if problems else "unreadable"
    return DamagedError(
        f"the cache is damaged: {where}, array {name!r}, rows {rows} ({reason}); "
        "run `featurecache verify --repair CACHE` to recompute them from the images",
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
    array's :attr:`~featurecache.cache.arrays.ArraySpec.rows_per_chunk`, the columns' as
    the first array's)."""
    arrays = {}
    for spec in specs:
        n = rows or spec.rows_per_chunk
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
            dtype=ROW_COLUMNS[name],
            chunks=(column_rows,),
            compressors=compressors,
            dimension_names=("image",),
            config=_EVERY_CHUNK,
        )
    return arrays


def append_rows(array: zarr.Array, values: np.ndarray) -> None:
    """Append ``values`` (rows of ``array``'s shape) at the end of ``array``."""
    array.append(values, axis=0)


def group_attrs(group: zarr.Group) -> dict[str, Any]:
    """The attributes of an open group, as a plain dict."""
    return dict(group.attrs)


def set_attrs(group: zarr.Group, attrs: dict[str, Any]) -> None:
    """Add or replace attributes of ``group`` (written to its metadata document)."""
    group.attrs.update(attrs)


def write_batch(
    group: zarr.Group,
    batch: int,
    batch_size: int,
    arrays: dict[str, np.ndarray],
    keys: Sequence[str],
) -> None:
    """Write batch ``batch``'s rows (``[batch * batch_size, ...)``) of every array of
    ``arrays`` and of ``keys`` into ``group``'s arrays of the same names."""
    start = batch * batch_size
    stop = start + len(keys)
    for name, values in arrays.items():
        target = open_array(group, name)
        target[start:stop] = np.asarray(values, dtype=target.dtype)
    open_array(group, "keys")[start:stop] = np.asarray(keys, dtype=str)
