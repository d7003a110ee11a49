"""The feature cache: the only module that imports zarr.

Layout (zarr format 3, readable with plain ``zarr`` or ``xarray``)::

    cache/                                   root group, attrs {"featurecache_format": 2}
      <dataset>/                             group per data set
        <backbone>-<size>px-<pooling>-<recipe hash>/   group per backbone configuration
          gen-000001/, gen-000002/           generations: complete, immutable groups
          current -> gen-000002              symlink to the committed generation
      .staging/<dataset>/<group>/<plan>/     features being computed (resumable)
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
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from filelock import FileLock, Timeout
from zarr.codecs import BloscCodec

from featurecache.errors import CacheError, LockedError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
STAGING = ".staging"
LOCKS = ".locks"
CURRENT = "current"
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


def disk_bytes(path: Path) -> int:
    """Bytes on disk of a file, or of every file under a folder (links not followed)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def read_attrs(folder: Path) -> dict[str, Any] | None:
    """The attributes in ``folder/zarr.json``, or None if it is missing or unreadable."""
    meta = folder / "zarr.json"
    try:
        return json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return None


class Cache:
    """A featurecache store rooted at a local folder (created on first write)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ reading

    def exists(self) -> bool:
        return (self.root / "zarr.json").is_file()

    def check(self) -> None:
        """Raise :class:`CacheError` unless ``root`` is a featurecache cache."""
        if not self.root.exists():
            raise CacheError(f"no cache at {str(self.root)!r}; run `featurecache extract` first")
        attrs = read_attrs(self.root)
        if attrs is None:
            raise CacheError(f"{str(self.root)!r} is not a featurecache cache (no zarr.json)")
        if "featurecache_format" not in attrs:
            raise CacheError(f"{str(self.root)!r} is a zarr store but not a featurecache cache")
        if attrs["featurecache_format"] != FORMAT_VERSION:
            raise CacheError(
                f"{str(self.root)!r} has cache format {attrs['featurecache_format']}, this "
                f"featurecache reads format {FORMAT_VERSION}; extract into a new --cache"
            )

    def group_dirs(self) -> Iterator[tuple[str, str, Path]]:
        """Yield ``(dataset, group, folder)`` for every backbone group folder."""
        if not self.exists():
            return
        self.check()
        for dataset_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if dataset_dir.name.startswith("."):
                continue
            for group_dir in sorted(p for p in dataset_dir.iterdir() if p.is_dir()):
                yield dataset_dir.name, group_dir.name, group_dir

    def groups(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Yield ``(dataset, group, attrs)`` for every group with a committed generation."""
        for dataset, group, folder in self.group_dirs():
            attrs = read_attrs(folder / CURRENT)
            if attrs and "recipe_hash" in attrs:
                yield dataset, group, attrs

    def current(self, dataset: str, group: str) -> Path:
        """Folder of the committed generation (resolved, so it stays valid to read)."""
        link = self.root / dataset / group / CURRENT
        if not (link / "zarr.json").is_file():
            raise CacheError(
                f"the cache {str(self.root)!r} has no group {dataset}/{group}; "
                "run `featurecache extract` (see `featurecache info`)"
            )
        return link.resolve()

    def attrs(self, dataset: str, group: str) -> dict[str, Any]:
        return read_attrs(self.current(dataset, group)) or {}

    def open_rows(self, dataset: str, group: str) -> zarr.Group:
        """The committed generation as a read-only zarr group (arrays read lazily)."""
        return zarr.open_group(self.current(dataset, group), mode="r")

    def read(self, dataset: str, group: str) -> FeatureSet:
        """Read the committed generation into memory.

        Raises
        ------
        CacheError
            If the group does not exist or is incomplete.
        """
        folder = self.current(dataset, group)
        attrs = read_attrs(folder) or {}
        node = zarr.open_group(folder, mode="r")
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
        """Bytes on disk of the committed generation."""
        return disk_bytes(self.current(dataset, group))

    # ------------------------------------------------------------------ writing

    def ensure(self) -> None:
        """Create the root group if needed; refuse a folder that is something else."""
        visible = self.root.exists() and any(
            not p.name.startswith(".") for p in self.root.iterdir()
        )
        if visible and not self.exists():
            raise CacheError(
                f"{str(self.root)!r} exists and is not a featurecache cache; choose another --cache"
            )
        if not self.exists():
            zarr.open_group(self.root, mode="a", attributes={"featurecache_format": FORMAT_VERSION})
        self.check()

    @contextmanager
    def lock(self, dataset: str, *, wait: bool = True) -> Iterator[None]:
        """Hold the writer lock of one data set (an OS file lock, released by the
        kernel if the holder dies, so a killed run never blocks the next).

        Raises
        ------
        LockedError
            If ``wait`` is false and another process holds the lock.
        """
        folder = self.root / LOCKS
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(folder / f"{dataset}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if not wait:
                raise LockedError(
                    f"another featurecache process is writing data set {dataset!r} in "
                    f"{str(self.root)!r}; try again later, or pass --wait to queue"
                ) from None
            log.warning("waiting for another process writing data set %r", dataset)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def stage(
        self, dataset: str, group: str, plan: str, *, feature_dim: int, chunk: int = 32
    ) -> ComputeStage:
        """The resumable staging area for computing ``plan``'s features.

        Stale stages of the same group with another plan are removed (the caller
        holds the data set's lock, so no one else is using them).
        """
        parent = self.root / STAGING / dataset / group
        if parent.exists():
            for other in parent.iterdir():
                if other.name != plan:
                    log.info("removing stale staging %s", other)
                    shutil.rmtree(other, ignore_errors=True)
        return ComputeStage(parent / plan, feature_dim=feature_dim, chunk=chunk)

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
        folder = self.root / dataset / group
        for path in (self.root / dataset, folder):
            if not (path / "zarr.json").is_file():
                zarr.open_group(path, mode="a", attributes=group_attrs if path == folder else {})
        for partial in folder.glob("gen-*.partial"):
            shutil.rmtree(partial, ignore_errors=True)
        numbers = [int(p.name[4:]) for p in folder.glob("gen-*") if p.name[4:].isdigit()]
        name = f"gen-{max(numbers, default=0) + 1:06d}"
        return GenerationWriter(folder, name, feature_dim=feature_dim, dtype=dtype)

    def generations(self, dataset: str, group: str) -> list[Path]:
        folder = self.root / dataset / group
        return sorted(p for p in folder.glob("gen-*") if p.is_dir())


def _create_arrays(
    group: zarr.Group,
    feature_dim: int,
    rows: int,
    names: Sequence[str],
    dtype: str = "float32",
    compressors: Any = COMPRESSOR,
):
    arrays = {}
    for name in names:
        if name == "features":
            arrays[name] = group.create_array(
                "features",
                shape=(0, feature_dim),
                dtype=dtype,
                chunks=(rows, feature_dim),
                compressors=compressors,
                dimension_names=("image", "feature"),
            )
        else:
            arrays[name] = group.create_array(
                name,
                shape=(0,),
                dtype=_DTYPES[name],
                chunks=(rows,),
                compressors=compressors,
                dimension_names=("image",),
            )
    return arrays


class ComputeStage:
    """Features computed so far for one extraction plan, durable batch by batch.

    Rows are appended in compute order after every batch, then the progress
    attribute (``records_done``, ``skipped``) is written; both writes are atomic
    renames, so after a kill the stage holds every finished batch, and rows past
    the recorded progress (a batch written but not yet recorded) are dropped.
    """

    def __init__(self, folder: Path, *, feature_dim: int, chunk: int = 32) -> None:
        self.folder = folder
        if (folder / "zarr.json").is_file():
            self._group = zarr.open_group(folder, mode="r+")
            progress = dict(self._group.attrs.get("progress", {}))
            self.records_done = int(progress.get("records_done", 0))
            self.rows = int(progress.get("rows", 0))
            self.skipped: list[dict[str, str]] = list(progress.get("skipped", []))
            self._arrays = {n: self._group[n] for n in ("features", "keys")}
            for array in self._arrays.values():
                if array.shape[0] != self.rows:
                    array.resize((self.rows, *array.shape[1:]))
        else:
            folder.parent.mkdir(parents=True, exist_ok=True)
            self._group = zarr.open_group(folder, mode="w")
            # One chunk per batch, uncompressed: each batch is written once, cheaply
            # (the stage is temporary; the committed generation is compressed).
            self._arrays = _create_arrays(
                self._group, feature_dim, chunk, ("features", "keys"), compressors=None
            )
            self.records_done, self.rows, self.skipped = 0, 0, []
            self._group.attrs["progress"] = {"records_done": 0, "rows": 0, "skipped": []}

    def append(
        self,
        records_done: int,
        features: np.ndarray,
        keys: Sequence[str],
        skipped: Sequence[dict[str, str]],
    ) -> None:
        """Record one finished batch: ``records_done`` counts every record handled."""
        if len(keys):
            self._arrays["features"].append(np.asarray(features, dtype=np.float32), axis=0)
            self._arrays["keys"].append(np.asarray(keys, dtype=str), axis=0)
        self.rows += len(keys)
        self.records_done = records_done
        self.skipped.extend(skipped)
        self._group.attrs["progress"] = {
            "records_done": records_done,
            "rows": self.rows,
            "skipped": self.skipped,
        }

    def features(self) -> zarr.Array:
        return self._arrays["features"]

    def keys(self) -> list[str]:
        return [str(k) for k in self._arrays["keys"][...]] if self.rows else []

    def remove(self) -> None:
        """Delete the stage, and its parent folders when they are left empty."""
        shutil.rmtree(self.folder, ignore_errors=True)
        for parent in (self.folder.parent, self.folder.parent.parent):
            try:
                parent.rmdir()
            except OSError:
                break


class GenerationWriter:
    """Writes one generation chunk by chunk, then commits it by swapping ``current``."""

    def __init__(
        self, group_dir: Path, name: str, *, feature_dim: int, dtype: str = "float32"
    ) -> None:
        self.group_dir = group_dir
        self.name = name
        self.partial = group_dir / f"{name}.partial"
        self.feature_dim = feature_dim
        self.dtype = np.dtype(dtype)
        self.rows_per_chunk = chunk_rows(feature_dim, self.dtype.itemsize)
        self.n_rows = 0
        self._group = zarr.open_group(self.partial, mode="w")
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

    def commit(self, attrs: dict[str, Any]) -> Path:
        """Flush, write ``attrs``, and make this generation ``current`` atomically.

        Generations older than the one it replaces are deleted.
        """
        if self._buffered:
            self._flush(self._buffered)
        self._group.attrs.update({**attrs, "n_images": self.n_rows, "generation": self.name})
        final = self.group_dir / self.name
        os.replace(self.partial, final)
        link = self.group_dir / CURRENT
        previous = link.resolve().name if link.is_symlink() else None
        tmp = self.group_dir / f".{CURRENT}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.name)
        os.replace(tmp, link)
        for old in self.group_dir.glob("gen-*"):
            if old.name not in (self.name, previous) and not old.name.endswith(".partial"):
                shutil.rmtree(old, ignore_errors=True)
        return final

    def abort(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)
