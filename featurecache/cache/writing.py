"""The write side of a cache: create it, lock a data set, stage an extraction, commit a
generation.

:class:`CacheWriter` writes into a :class:`~featurecache.cache.Cache` (the read side).
Every write to a data set happens under its writer lock (:meth:`CacheWriter.lock`).

Commit protocol (:class:`GenerationWriter`): a new generation is written beside the old
one, then ``current`` is swapped to it with one atomic operation, so a reader sees the
old generation or the new one, never a mix (:mod:`featurecache.cache.storage` says how,
for a folder and for an object store). The previous generation is kept (a reader may
still be using it) until the next commit or ``featurecache gc``. Generation names are
:mod:`featurecache.cache.generations`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from featurecache.cache.arrays import ROW_ARRAYS, ROW_COLUMNS, ArraySpec
from featurecache.cache.generations import is_generation_folder, is_partial, next_generation
from featurecache.cache.layout import FORMAT_VERSION, STAGING, Cache
from featurecache.cache.staging import ComputeStage
from featurecache.cache.storage import Location
from featurecache.cache.store import (
    append_rows,
    create_arrays,
    create_group,
    is_node,
    open_group,
    set_attrs,
)
from featurecache.errors import CacheError, LockedError

log = logging.getLogger(__name__)


class CacheWriter:
    """Writes into ``cache``: its root group, data set locks, staging areas, generations."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.location = cache.location

    def ensure(self) -> None:
        """Create the root group if needed; refuse a folder that is something else.

        Raises
        ------
        CacheError
            If the folder holds something else, or cannot be created or written (a
            regular file in the path, no permission): one line naming the path and cause.
        """
        visible = [e for e in self.location.entries(self.location.root) if not e.startswith(".")]
        if visible and not self.cache.exists():
            raise CacheError(
                f"{self.cache.url!r} exists and is not a featurecache cache; choose another --cache"
            )
        if not self.cache.exists():
            with self.location.os_errors("create"):
                create_group(
                    self.location, self.location.root, {"featurecache_format": FORMAT_VERSION}
                )
        self.cache.check()

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
                    f"{self.cache.url!r}; try again later, or pass --wait to queue"
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
        work = self.location.workspace()
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
        for path in (self.location.join(dataset), self.location.join(dataset, group)):
            if not is_node(self.location, path):
                attrs = group_attrs if path == self.location.join(dataset, group) else {}
                with self.location.os_errors("write"):
                    create_group(self.location, path, attrs)
        committed = self.cache.committed(dataset, group)
        names = self.location.subdirs(self.location.join(dataset, group))
        for name in names:
            if is_partial(name):  # a killed writer's
                self.location.remove(self.location.join(dataset, group, name))
        return GenerationWriter(
            self.location,
            self.location.join(dataset, group),
            next_generation(names),
            committed,
            arrays=arrays,
        )

    def remove(self, path: str) -> None:
        """Delete ``path`` (a generation, a group, a staging area) and all it holds."""
        self.location.remove(path)


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
        self.rows_per_chunk = max(spec.rows_per_chunk for spec in arrays)
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
            joined = np.concatenate(parts, axis=0)
            append_rows(self._arrays[name], joined[:rows].astype(self.specs[name].dtype))
            self._values[name] = [joined[rows:]] if joined.shape[0] > rows else []
        for name, column in self._columns.items():
            append_rows(self._arrays[name], np.asarray(column[:rows], dtype=ROW_COLUMNS[name]))
            self._columns[name] = column[rows:]
        self._buffered -= rows
        self.n_rows += rows

    def commit(self, attrs: dict[str, Any]) -> str:
        """Flush, write ``attrs``, and make this generation ``current`` atomically.

        Generations other than this one and the one it replaces are deleted.
        """
        if self._buffered:
            self._flush(self._buffered)
        set_attrs(self._group, {**attrs, "n_images": self.n_rows, "generation": self.name})
        location = self.location
        location.publish(self.group_path, self.writing, self.name)
        location.set_pointer(self.group_path, self.name)
        for old in location.subdirs(self.group_path):
            if is_generation_folder(old) and not is_partial(old):
                if old not in (self.name, self.previous):
                    location.remove(f"{self.group_path}/{old}")
        return f"{self.group_path}/{self.name}"

    def abort(self) -> None:
        self.location.remove(f"{self.group_path}/{self.writing}")
