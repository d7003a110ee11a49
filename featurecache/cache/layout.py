"""The cache's layout: data set groups, backbone groups, generations, staging, locks.

Layout (zarr format 3, readable with plain ``zarr`` or ``xarray``)::

    cache/                                   root group, attrs {"featurecache_format": 2}
      <dataset>/                             group per data set
        <backbone>-<size>px-<pooling>-<recipe hash>/   group per backbone configuration
          gen-000001/, gen-000002/           generations: complete, immutable groups
          current -> gen-000002              symlink to the committed generation
    .cache.featurecache/                     the workspace, beside the cache (outside zarr's view)
      staging/<dataset>/<group>/<plan>/      features being computed (resumable; batch b = chunk b)
      locks/<dataset>.lock                   one writer per data set at a time
      engines/                               ONNX exports of the backbones

A generation's arrays are described in :mod:`featurecache.cache.store`.

Commit protocol: a new generation is written beside the old one, then ``current`` is
swapped with one ``os.replace`` of a symlink (atomic on POSIX), so a reader sees the
old generation or the new one, never a mix. The previous generation is kept (a reader
may still be using it) until the next commit or ``featurecache gc``. At an fsspec URL
(``s3://bucket/prefix``) a generation is written in place and ``current`` is an object
holding its name, written last (:mod:`featurecache.cache.storage`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from featurecache.cache.features import FeatureSet, choose_group
from featurecache.cache.staging import ComputeStage
from featurecache.cache.storage import LEGACY_BOOKKEEPING, Location
from featurecache.cache.store import (
    ROW_ARRAYS,
    ArraySpec,
    GenerationWriter,
    create_group,
    open_group,
    read_arrays,
)
from featurecache.config import is_url
from featurecache.errors import CacheError, LockedError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
STAGING = "staging"


def cache_id(root: str | Path) -> str:
    """How a cache is named in head.json: an absolute folder path, or its URL."""
    return str(Path(root).resolve()) if not is_url(root) else str(root)


class Cache:
    """A featurecache store at a local folder or an fsspec URL (created on first write).

    ``root`` is a folder path, or a URL such as ``s3://bucket/prefix`` or
    ``memory://name`` (see :mod:`featurecache.cache.storage`).
    """

    def __init__(self, root: str | Path) -> None:
        self.location = Location.parse(root)
        self.root: Path | str = Path(self.location.root) if self.location.local else root
        self.url = self.location.url()

    workspace = property(lambda self: self.location.workspace(), doc="Staging: beside the cache.")

    def _path(self, *parts: str) -> str:
        return self.location.join(*parts)

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
        """Names of the data set groups."""
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

    def _generation(self, dataset: str, group: str, name: str) -> str:
        """Path of generation ``name`` (``"current"``: the committed one)."""
        path = self.current(dataset, group)
        if name != "current":
            kept = [p.rsplit("/", 1)[-1] for p in self.generations(dataset, group)]
            if name not in kept:
                raise CacheError(
                    f"{dataset}/{group} has no generation {name!r}; it keeps "
                    f"{', '.join(kept)} (current: {path.rsplit('/', 1)[-1]})"
                )
            path = self._path(dataset, group, name)
        return path

    def attrs(self, dataset: str, group: str) -> dict[str, Any]:
        return self.location.read_json(self.current(dataset, group)) or {}

    def open_rows(self, dataset: str, group: str) -> Any:
        """The committed generation as a read-only zarr group (arrays read lazily)."""
        return open_group(self.location, self.current(dataset, group), mode="r")

    def read(
        self,
        dataset: str,
        group: str,
        *,
        taps: tuple[str, ...] = (),
        flipped: bool = False,
        with_features: bool = True,
        generation: str = "current",
    ) -> FeatureSet:
        """Read the committed generation (or the kept ``gen-NNNNNN`` named) into memory.

        ``taps``: pooled taps to concatenate after the final features, in that order;
        ``flipped``: read the flipped view's features too. Without ``with_features`` only
        the row columns are read (``X`` is ``(n_images, 0)``), for readers that stream.

        Raises
        ------
        CacheError
            If the group or generation does not exist or is incomplete, or lacks a tap
            or the flipped view asked for.
        """
        path = self._generation(dataset, group, generation)
        attrs = self.location.read_json(path) or {}
        node = open_group(self.location, path, mode="r")
        names = ["features", *(f"pooled.{tap}" for tap in taps)] if with_features else []
        views = ["", ".flip"] if flipped else [""]
        stored = set(attrs.get("arrays", {"features": None}))
        missing = [n + v for v in views for n in names if n + v not in stored]
        if missing:
            raise CacheError(
                f"group {dataset}/{group} has no {', '.join(missing)}: add the layer to the "
                "backbone's taps (or 'flip' to its views) and extract again"
            )
        try:
            arrays = read_arrays(node, [n + v for v in views for n in names] + list(ROW_ARRAYS[:4]))
        except KeyError as exc:
            raise CacheError(
                f"group {dataset}/{group} is incomplete ({exc}); run `featurecache gc` "
                "and extract again"
            ) from exc

        def joined(view: str) -> np.ndarray:
            if not names:
                return np.zeros((len(arrays["labels"]), 0), np.float32)
            return np.concatenate([arrays[n + view] for n in names], axis=1).astype(np.float32)

        return FeatureSet(
            X=joined(""),
            flipped=joined(".flip") if flipped else None,
            y=np.asarray(arrays["labels"], dtype=np.int32),
            split=np.asarray(arrays["split"], dtype=object),
            keys=np.asarray(arrays["keys"], dtype=object),
            sources=np.asarray(arrays["sources"], dtype=object),
            class_names=list(attrs["class_names"]),
            provenance=attrs,
            dataset=dataset,
            group=group,
            generation=path.rsplit("/", 1)[-1],
        )

    def backbones(self, dataset: str) -> dict[str, str]:
        """The data set's groups with a committed generation -> their backbone names."""
        return {
            group: attrs.get("backbone", {}).get("name", "")
            for name, group, attrs in self.groups()
            if name == dataset
        }

    def features(
        self, dataset: str, backbone: str | None = None, *, generation: str = "current"
    ) -> FeatureSet:
        """The cached features of ``dataset`` by ``backbone``: a group name
        (``mobilenet_v2-224px-avg-3c3debfc2c``), a backbone name (``mobilenet_v2``), or
        ``None`` if only one backbone was extracted. ``generation``: ``"current"`` (the
        committed one) or a kept ``"gen-NNNNNN"``. Never imports TensorFlow.

        Raises
        ------
        CacheError
            If the data set, backbone or generation is not cached, or ``backbone`` is
            ambiguous; the message lists what is there.
        DamagedError
            If a chunk read fails its checksum (run ``featurecache verify --repair``).
        """
        if dataset not in self.datasets():
            raise CacheError(
                f"no data set {dataset!r} in the cache {self.url!r}; it has: "
                f"{', '.join(self.datasets()) or 'nothing yet'}"
            )
        group = choose_group(dataset, backbone, self.backbones(dataset))
        return self.read(dataset, group, generation=generation)

    def nbytes(self, dataset: str, group: str) -> int:
        """Bytes stored for the committed generation."""
        return self.location.size(self.current(dataset, group))

    def size(self, path: str) -> int:
        return self.location.size(path)

    def remove(self, path: str) -> None:
        self.location.remove(path)

    def relative(self, path: str) -> str:
        """``path`` relative to the cache root, for messages (whole, if outside it)."""
        if not path.startswith(self.location.root.rstrip("/") + "/"):
            return path
        return path[len(self.location.root) :].lstrip("/")

    def generations(self, dataset: str, group: str) -> list[str]:
        """Paths of every generation folder of a group (committed or not), oldest first."""
        return [
            self._path(dataset, group, name)
            for name in self.location.subdirs(self._path(dataset, group))
            if name.startswith("gen-")
        ]

    def staged_datasets(self) -> list[str]:
        try:  # s3://bucket alone has no workspace, so nothing staged
            return self.workspace.subdirs(self.workspace.join(STAGING))
        except CacheError:
            return []

    def staging_path(self, dataset: str) -> str:
        return self.workspace.join(STAGING, dataset)

    def legacy_bookkeeping(self) -> list[str]:
        """Bookkeeping folders earlier versions kept inside the cache root."""
        entries = set(self.location.entries(self.location.root))
        return [self._path(name) for name in LEGACY_BOOKKEEPING if name in entries]

    # ------------------------------------------------------------------ writing

    def ensure(self) -> None:
        """Create the root group if needed; refuse a folder that is something else.

        Raises
        ------
        CacheError
            If the folder holds something else, or cannot be created or written (a
            regular file in the path, no permission): one line naming the path and cause.
        """
        visible = [e for e in self.location.entries(self.location.root) if not e.startswith(".")]
        if visible and not self.exists():
            raise CacheError(
                f"{self.url!r} exists and is not a featurecache cache; choose another --cache"
            )
        if not self.exists():
            with self.location.os_errors("create"):
                create_group(
                    self.location, self.location.root, {"featurecache_format": FORMAT_VERSION}
                )
        self.check()

    @contextmanager
    def lock(self, dataset: str, *, wait: bool = True) -> Iterator[None]:
        """Hold the writer lock of one data set (an OS file lock, released by the
        kernel if the holder dies, so a killed run never blocks the next). For a
        cache at a URL the lock file is on this machine (see
        :mod:`featurecache.cache.storage`).

        Raises
        ------
        LockedError
            If ``wait`` is false and another process holds the lock.
        CacheError
            If the lock file cannot be created.
        """
        path = self.location.lock_file(dataset)
        lock = FileLock(path)
        with self.location.os_errors("lock a data set of"):
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)  # filelock's Timeout is an OSError: not wrapped above
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
        self,
        dataset: str,
        group: str,
        plan: str,
        *,
        n_records: int,
        arrays: list[ArraySpec],
        batch: int,
    ) -> ComputeStage:
        """The resumable staging area for computing ``plan``'s ``n_records`` images'
        ``arrays``.

        Stale stages of the same group with another plan are removed (the caller
        holds the data set's lock, so no one else is using them).
        """
        work = self.workspace
        parent = work.join(STAGING, dataset, group)
        for other in work.subdirs(parent):
            if other != plan:
                log.info("removing stale staging %s", f"{parent}/{other}")
                work.remove(work.join(STAGING, dataset, group, other))
        path = work.join(STAGING, dataset, group, plan)
        with work.os_errors("write the staging area of"):
            return ComputeStage(work, path, n_records, arrays, batch)

    def generation_writer(
        self,
        dataset: str,
        group: str,
        *,
        arrays: list[ArraySpec],
        group_attrs: dict[str, Any],
    ) -> GenerationWriter:
        """Start the next generation of a group, holding ``arrays`` (``features`` first,
        each with its storage type) and the row columns; invisible until ``commit``."""
        for path in (self._path(dataset), self._path(dataset, group)):
            if not self.location.is_file(f"{path}/zarr.json"):
                attrs = group_attrs if path == self._path(dataset, group) else {}
                with self.location.os_errors("write"):
                    create_group(self.location, path, attrs)
        committed = self.committed(dataset, group)
        names = self.location.subdirs(self._path(dataset, group))
        for name in names:
            if name.endswith(".partial"):
                self.location.remove(self._path(dataset, group, name))
        numbers = [int(n[4:]) for n in names if n.startswith("gen-") and n[4:].isdigit()]
        name = f"gen-{max(numbers, default=0) + 1:06d}"
        return GenerationWriter(
            self.location,
            self._path(dataset, group),
            name,
            committed,
            arrays=arrays,
        )
