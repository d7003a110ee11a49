"""The staging area of an extraction: features computed so far, durable batch by batch.

Its zarr arrays are made and written by :mod:`featurecache.cache.store`; this module keeps
the bookkeeping (which batches are done, which images were skipped) that makes a killed
extraction resume where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featurecache.cache.arrays import ArraySpec
from featurecache.cache.storage import Location
from featurecache.cache.store import (
    create_arrays,
    group_attrs,
    is_node,
    open_array,
    open_group,
    read_arrays,
    set_attrs,
    write_batch,
)


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
        if is_node(self.location, self.path):
            self._group = open_group(self.location, self.path, mode="r+")
            progress: dict[str, Any] = group_attrs(self._group).get("progress", {})
            self.done = {int(b) for b in progress.get("batches", [])}
            self.skipped = list(progress.get("skipped", []))
        else:
            self._group = open_group(self.location, self.path, mode="w")
            # One chunk per batch, uncompressed: each batch is written once, cheaply
            # (the stage is temporary; the committed generation is compressed).
            create_arrays(
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
        image was skipped).

        Raises
        ------
        CacheError
            If the disk is full or not writable (one line: path, cause, fix).
        """
        with self.location.os_errors("write the staging area of"):
            write_batch(self._group, batch, self.batch, arrays, keys)

    def record(self, batches: Sequence[int], skipped: Sequence[dict[str, str]]) -> None:
        """Mark ``batches`` (already written) done, with the images they skipped."""
        self.done.update(batches)
        self.skipped.extend(skipped)
        with self.location.os_errors("record progress in the staging area of"):
            self._record()

    def _record(self) -> None:
        progress = {
            "batches": sorted(self.done),
            "records_done": self.records_done,
            "skipped": self.skipped,
        }
        set_attrs(self._group, {"progress": progress})

    def array(self, name: str) -> Any:
        """The staged array ``name`` (a zarr array, rows read with
        :func:`~featurecache.cache.store.read_rows`)."""
        return open_array(self._group, name)

    def keys(self) -> list[str]:
        """Every row's content key; ``""`` for a skipped image."""
        if not self.n_records:
            return []
        return [str(k) for k in read_arrays(self._group, ["keys"])["keys"]]

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
    write_batch(group, batch, batch_size, arrays, keys)
