"""The feature cache: the only module that imports zarr.

Layout (zarr format 3, readable with plain ``zarr`` or ``xarray``)::

    cache/                                  root group, attrs {"featurecache_format": 1}
      <dataset>/                            group per data set
        <backbone>-<recipe hash>/           group per backbone configuration
          features   (n_images, feature_dim) float32   bottleneck features
          labels     (n_images,)             int32      index into attrs["class_names"]
          split      (n_images,)             string     "train" | "validation" | "test"
          keys       (n_images,)             string     BLAKE2b-128 of the image bytes
          sources    (n_images,)             string     file path, or "file.h5[index]"
          zarr.json  attributes: provenance (see README, "The cache")
      .staging/                             groups being written (never read)

Rows are chunked along ``n_images`` only, ``chunk_rows`` rows per chunk, chosen so
that a chunk of features holds at least 1 MiB; every array is compressed with
Blosc (zstd, level 5, byte shuffle).

A group becomes visible in one step: it is written under ``.staging/`` and then
renamed into place (``os.replace``, atomic on one POSIX file system), so readers
never see half-written arrays. A staging folder left by a killed process is
removed by the next writer.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from featurecache.errors import CacheError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
STAGING = ".staging"
MIN_CHUNK_BYTES = 1 << 20
COMPRESSOR = BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")
CODEC_DESCRIPTION = "blosc(zstd, clevel=5, shuffle)"
_ARRAYS = ("features", "labels", "split", "keys", "sources")


def chunk_rows(feature_dim: int, itemsize: int = 4) -> int:
    """Rows per chunk: the smallest power of two whose feature chunk is >= 1 MiB."""
    rows = MIN_CHUNK_BYTES / max(1, feature_dim * itemsize)
    return 1 << max(0, math.ceil(math.log2(rows)))


@dataclass(frozen=True)
class FeatureSet:
    """One committed group, read into memory.

    Attributes
    ----------
    features : ndarray of shape (n_images, feature_dim), dtype float32
    labels : ndarray of shape (n_images,), dtype int32
    split : ndarray of shape (n_images,), dtype object (str)
    keys, sources : ndarray of shape (n_images,), dtype object (str)
    class_names : list of str
    attrs : dict
        The group's provenance attributes.
    """

    features: np.ndarray
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
        order = ("train", "validation", "test")
        present = set(self.split.tolist())
        return [s for s in order if s in present]


class Cache:
    """A featurecache store rooted at a local folder (created on first write)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ reading

    def exists(self) -> bool:
        return (self.root / "zarr.json").is_file()

    def check(self) -> None:
        if not self.root.exists():
            raise CacheError(f"no cache at {str(self.root)!r}; run `featurecache extract` first")
        meta = self.root / "zarr.json"
        if not meta.is_file():
            raise CacheError(f"{str(self.root)!r} is not a featurecache cache (no zarr.json)")
        attrs = json.loads(meta.read_text()).get("attributes", {})
        if "featurecache_format" not in attrs:
            raise CacheError(f"{str(self.root)!r} is a zarr store but not a featurecache cache")

    def groups(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Yield ``(dataset, group, attrs)`` for every committed group."""
        if not self.exists():
            return
        self.check()
        for dataset_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if dataset_dir.name.startswith("."):
                continue
            for group_dir in sorted(p for p in dataset_dir.iterdir() if p.is_dir()):
                meta = group_dir / "zarr.json"
                if meta.is_file():
                    attrs = json.loads(meta.read_text()).get("attributes", {})
                    if "recipe_hash" in attrs:
                        yield dataset_dir.name, group_dir.name, attrs

    def attrs(self, dataset: str, group: str) -> dict[str, Any]:
        meta = self.root / dataset / group / "zarr.json"
        if not meta.is_file():
            raise CacheError(
                f"the cache {str(self.root)!r} has no group {dataset}/{group}; "
                "run `featurecache extract` (see `featurecache info`)"
            )
        return json.loads(meta.read_text()).get("attributes", {})

    def read(self, dataset: str, group: str) -> FeatureSet:
        """Read a committed group into memory.

        Raises
        ------
        CacheError
            If the group does not exist or is not a complete featurecache group.
        """
        attrs = self.attrs(dataset, group)
        node = zarr.open_group(self.root / dataset / group, mode="r")
        try:
            arrays = {name: node[name][...] for name in _ARRAYS}
        except KeyError as exc:
            raise CacheError(
                f"group {dataset}/{group} is incomplete ({exc}); delete it and extract again"
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
        """Bytes on disk of one group (sum of its files' sizes)."""
        folder = self.root / dataset / group
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

    # ------------------------------------------------------------------ writing

    def _ensure_root(self) -> None:
        visible = self.root.exists() and any(
            not p.name.startswith(".") for p in self.root.iterdir()
        )
        if visible and not self.exists():
            raise CacheError(
                f"{str(self.root)!r} exists and is not a featurecache cache; choose another --cache"
            )
        if not self.exists():
            zarr.open_group(self.root, mode="a", attributes={"featurecache_format": FORMAT_VERSION})
        staging = self.root / STAGING
        if staging.exists():
            for stale in staging.iterdir():
                if not _owned_by_live_process(stale):
                    log.info("removing %s left by an interrupted run", stale)
                    shutil.rmtree(stale, ignore_errors=True)

    def writer(
        self, dataset: str, group: str, *, feature_dim: int, dataset_attrs: dict
    ) -> GroupWriter:
        """Start writing a group; nothing is visible until :meth:`GroupWriter.commit`."""
        self._ensure_root()
        dataset_dir = self.root / dataset
        if not (dataset_dir / "zarr.json").is_file():
            zarr.open_group(dataset_dir, mode="a", attributes={"dataset": dataset_attrs})
        staging = self.root / STAGING / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        return GroupWriter(staging, dataset_dir / group, feature_dim=feature_dim)


def _owned_by_live_process(staging: Path) -> bool:
    pid = staging.name.split("-", 1)[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class GroupWriter:
    """Appends rows chunk by chunk into a staging group, then commits it atomically.

    Rows are buffered until a whole chunk is ready, so each chunk is written once.
    """

    def __init__(self, staging: Path, final: Path, *, feature_dim: int) -> None:
        self.staging = staging
        self.final = final
        self.feature_dim = feature_dim
        self.rows_per_chunk = chunk_rows(feature_dim)
        self.n_rows = 0
        self._features: list[np.ndarray] = []
        self._columns: dict[str, list[Any]] = {
            n: [] for n in ("labels", "split", "keys", "sources")
        }
        self._buffered = 0
        self._group = zarr.open_group(staging, mode="w")
        rows = self.rows_per_chunk
        self._arrays = {
            "features": self._group.create_array(
                "features",
                shape=(0, feature_dim),
                dtype="float32",
                chunks=(rows, feature_dim),
                compressors=COMPRESSOR,
                dimension_names=("image", "feature"),
            ),
            "labels": self._create_1d("labels", "int32"),
            "split": self._create_1d("split", str),
            "keys": self._create_1d("keys", str),
            "sources": self._create_1d("sources", str),
        }

    def _create_1d(self, name: str, dtype: Any):
        return self._group.create_array(
            name,
            shape=(0,),
            dtype=dtype,
            chunks=(self.rows_per_chunk,),
            compressors=COMPRESSOR,
            dimension_names=("image",),
        )

    def append(
        self,
        features: np.ndarray,
        labels: Sequence[int],
        split: Sequence[str],
        keys: Sequence[str],
        sources: Sequence[str],
    ) -> None:
        """Add rows. ``features`` has shape ``(b, feature_dim)``; the others length ``b``."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise CacheError(
                f"features of shape {features.shape} do not match feature_dim {self.feature_dim}"
            )
        self._features.append(features)
        for name, values in (
            ("labels", labels),
            ("split", split),
            ("keys", keys),
            ("sources", sources),
        ):
            self._columns[name].extend(values)
        self._buffered += features.shape[0]
        while self._buffered >= self.rows_per_chunk:
            self._flush(self.rows_per_chunk)

    def _flush(self, rows: int) -> None:
        features = np.concatenate(self._features, axis=0)
        self._arrays["features"].append(features[:rows], axis=0)
        self._features = [features[rows:]] if features.shape[0] > rows else []
        for name, values in self._columns.items():
            dtype = np.int32 if name == "labels" else str
            self._arrays[name].append(np.asarray(values[:rows], dtype=dtype), axis=0)
            self._columns[name] = values[rows:]
        self._buffered -= rows
        self.n_rows += rows

    def commit(self, attrs: dict[str, Any]) -> Path:
        """Flush, write ``attrs`` and make the group visible under its final name.

        An existing group of the same name (same recipe, older data) is replaced.
        """
        if self._buffered:
            self._flush(self._buffered)
        self._group.attrs.update({**attrs, "n_images": self.n_rows})
        self.final.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(self.final, old)
        os.replace(self.staging, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
