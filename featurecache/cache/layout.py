"""The cache's layout, and its read side: finding groups and generations, reading features.

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

A generation's arrays are described in :mod:`featurecache.cache.arrays`, its name by
:mod:`featurecache.cache.generations`. :class:`Cache` only reads; creating the cache,
locking, staging and committing generations are the write side's
(:class:`featurecache.cache.writing.CacheWriter`), and checking every chunk is
:mod:`featurecache.cache.verify`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from featurecache.cache.features import FeatureSet, choose_group
from featurecache.cache.generations import is_generation_folder
from featurecache.cache.storage import LEGACY_BOOKKEEPING, Location
from featurecache.cache.store import is_node, open_group, read_arrays, read_attrs
from featurecache.config import is_url
from featurecache.errors import CacheError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
STAGING = "staging"
#: The stat indexes of data sets whose objects hold many images (featurecache.datasets.index).
OBJECTS = "objects"
#: The row columns a :class:`FeatureSet` holds (:data:`featurecache.cache.arrays.ROW_COLUMNS`).
FEATURESET_COLUMNS = ("labels", "split", "keys", "sources")


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
        return is_node(self.location, self.location.root)

    def check(self) -> None:
        """Raise :class:`CacheError` unless ``root`` is a featurecache cache."""
        if self.location.local and not Path(self.location.root).exists():
            raise CacheError(f"no cache at {self.url!r}; run `featurecache extract` first")
        attrs = read_attrs(self.location, self.location.root)
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
            attrs = read_attrs(self.location, self._path(dataset, group, name)) if name else None
            if attrs and "recipe_hash" in attrs:
                yield dataset, group, attrs

    def committed(self, dataset: str, group: str) -> str | None:
        """Name of the group's committed generation (``gen-NNNNNN``), or None."""
        return self.location.pointer(self._path(dataset, group))

    def current(self, dataset: str, group: str) -> str:
        """Path of the committed generation (resolved, so it stays valid to read)."""
        name = self.committed(dataset, group)
        path = self._path(dataset, group, name) if name else None
        if path is None or not is_node(self.location, path):
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
        return read_attrs(self.location, self.current(dataset, group)) or {}

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
        attrs = read_attrs(self.location, path) or {}
        names = ["features", *(f"pooled.{tap}" for tap in taps)] if with_features else []
        views = ["", ".flip"] if flipped else [""]
        arrays = self._read_arrays(
            dataset, group, path, attrs, [n + v for v in views for n in names]
        )

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

    def _read_arrays(
        self, dataset: str, group: str, path: str, attrs: dict[str, Any], wanted: list[str]
    ) -> dict[str, np.ndarray]:
        """The per-image arrays ``wanted`` and the :data:`FEATURESET_COLUMNS` of the
        generation at ``path``, whole (a :class:`CacheError` if one is not stored)."""
        stored = set(attrs.get("arrays", {"features": None}))
        missing = [name for name in wanted if name not in stored]
        if missing:
            raise CacheError(
                f"group {dataset}/{group} has no {', '.join(missing)}: add the layer to the "
                "backbone's taps (or 'flip' to its views) and extract again"
            )
        node = open_group(self.location, path, mode="r")
        try:
            return read_arrays(node, [*wanted, *FEATURESET_COLUMNS])
        except KeyError as exc:
            raise CacheError(
                f"group {dataset}/{group} is incomplete ({exc}); run `featurecache gc` "
                "and extract again"
            ) from exc

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
            if is_generation_folder(name)
        ]

    def staged_datasets(self) -> list[str]:
        try:  # s3://bucket alone has no workspace, so nothing staged
            return self.workspace.subdirs(self.workspace.join(STAGING))
        except CacheError:
            return []

    def staging_path(self, dataset: str) -> str:
        return self.workspace.join(STAGING, dataset)

    def object_index_url(self, dataset: str) -> str | None:
        """Where the stat index of ``dataset``'s objects (tar shards, Parquet files) is kept:
        a path or URL in the workspace (:class:`featurecache.datasets.index.ObjectIndex`);
        None where the cache has no workspace (the root of a bucket)."""
        try:
            return self.workspace.url(self.workspace.join(OBJECTS, f"{dataset}.json.gz"))
        except CacheError:
            return None

    def legacy_bookkeeping(self) -> list[str]:
        """Bookkeeping folders earlier versions kept inside the cache root."""
        entries = set(self.location.entries(self.location.root))
        return [self._path(name) for name in LEGACY_BOOKKEEPING if name in entries]
