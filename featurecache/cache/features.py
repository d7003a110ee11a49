"""Bottleneck features read from the cache into memory: :class:`FeatureSet`.

The public reader's result (``featurecache.open_cache(...).features(...)``) and what
heads and fine-tuning train on. Reading one never imports TensorFlow or Keras.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from featurecache.errors import CacheError, DependencyError

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class FeatureSet:
    """One committed generation of a (data set, backbone) group, in memory.

    Attributes
    ----------
    X : ndarray of shape (n_images, feature_dim), dtype float32
        The bottleneck features, one row per image (float32 whatever the storage type;
        with ``taps``, the pooled taps follow the final features).
    y : ndarray of shape (n_images,), dtype int32
        Class index of each image: ``class_names[y[i]]`` is its label.
    split : ndarray of shape (n_images,), dtype object (str)
        ``"train"``, ``"validation"`` or ``"test"``.
    keys : ndarray of shape (n_images,), dtype object (str)
        Content hash of each image file (BLAKE2b, hex): the row's identity in the cache.
    sources : ndarray of shape (n_images,), dtype object (str)
        Where each image came from (a file path, or ``file.h5:dataset[index]``).
    class_names : list of str
    provenance : dict
        The generation's attributes: backbone, weights (SHA-256), preprocessing, resize,
        library versions, hashes, counts (the README's "Provenance").
    dataset, group, generation : str
        Where the rows were read from: data set, backbone group, ``gen-NNNNNN``.
    flipped : ndarray of shape (n_images, feature_dim), dtype float32, or None
        The same features of each image's horizontal flip, when they were read.

    Per-split views: ``fs.train``, ``fs.validation`` and ``fs.test`` are FeatureSets of
    one split's rows (:meth:`where`).
    """

    X: np.ndarray
    y: np.ndarray
    split: np.ndarray
    keys: np.ndarray
    sources: np.ndarray
    class_names: list[str]
    provenance: dict[str, Any]
    dataset: str = ""
    group: str = ""
    generation: str = ""
    flipped: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={int((self.split == s).sum())}" for s in self.splits)
        return (
            f"FeatureSet({self.dataset}/{self.group} {self.generation}: "
            f"X {self.X.shape[0]} x {self.X.shape[1]} {self.X.dtype}, "
            f"{len(self.class_names)} classes, {counts or 'no rows'})"
        )

    @property
    def splits(self) -> list[str]:
        """The splits present, in the order train, validation, test."""
        present = set(self.split.tolist())
        return [s for s in SPLITS if s in present]

    @property
    def backbone(self) -> str:
        """The backbone's name (``mobilenet_v2``, ``hub:dinov2_small``...)."""
        return str(self.provenance.get("backbone", {}).get("name", ""))

    def where(self, split: str) -> FeatureSet:
        """The rows of one split, as a FeatureSet (same class names and provenance).

        Raises
        ------
        CacheError
            If no image is in ``split`` (the message lists the splits present).
        """
        mask = self.split == split
        if not mask.any():
            raise CacheError(
                f"{self.dataset}/{self.group} has no {split!r} images; its splits are "
                f"{', '.join(self.splits) or 'empty'}"
            )
        return replace(
            self,
            X=self.X[mask],
            y=self.y[mask],
            split=self.split[mask],
            keys=self.keys[mask],
            sources=self.sources[mask],
            flipped=None if self.flipped is None else self.flipped[mask],
        )

    @property
    def train(self) -> FeatureSet:
        return self.where("train")

    @property
    def validation(self) -> FeatureSet:
        return self.where("validation")

    @property
    def test(self) -> FeatureSet:
        return self.where("test")

    def subset(self, split: str, *, flipped: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(X, y)`` of one split (of the flipped images if ``flipped``); empty arrays
        when the split has no images."""
        mask = self.split == split
        features = self.flipped if flipped else self.X
        if features is None:
            raise CacheError(f"{self.dataset}/{self.group}: no flipped views were read")
        return features[mask], self.y[mask]

    def to_xarray(self) -> Any:
        """The rows as an ``xarray.Dataset``.

        Dims ``image`` (n_images) and ``feature`` (feature_dim); variables ``features``
        (image, feature) float32 and ``label`` (image) int32; coordinates ``key``,
        ``source``, ``split`` and ``class_name`` along ``image``. ``attrs`` hold the
        provenance (nested dicts as JSON strings, so the Dataset can be written to
        netCDF or zarr) plus ``dataset``, ``group``, ``generation``, ``class_names``.

        Raises
        ------
        DependencyError
            If xarray is not installed.
        """
        import json

        try:
            import xarray as xr
        except ImportError as exc:
            raise DependencyError(
                f"FeatureSet.to_xarray needs xarray ({exc}); pip install xarray"
            ) from exc

        attrs = {
            k: json.dumps(v) if isinstance(v, dict | list) else v
            for k, v in self.provenance.items()
        }
        attrs.update(
            dataset=self.dataset,
            group=self.group,
            generation=self.generation,
            class_names=list(self.class_names),
        )
        names = np.asarray(self.class_names, dtype=str)
        return xr.Dataset(
            {
                "features": (("image", "feature"), self.X),
                "label": (("image",), self.y),
            },
            coords={
                "key": (("image",), self.keys.astype(str)),
                "source": (("image",), self.sources.astype(str)),
                "split": (("image",), self.split.astype(str)),
                "class_name": (("image",), names[self.y] if len(names) else self.y.astype(str)),
            },
            attrs=attrs,
        )


def choose_group(dataset: str, backbone: str | None, groups: dict[str, str]) -> str:
    """The group of ``groups`` (group name -> backbone name) that ``backbone`` names: a
    group name, a backbone name (``mobilenet_v2``) or a group-name prefix; ``None`` when
    the data set has exactly one group.

    Raises
    ------
    CacheError
        If none matches, or several do (the message lists them).
    """
    listed = ", ".join(sorted(groups)) or "none"
    if backbone is None:
        found = list(groups)
    elif backbone in groups:
        found = [backbone]
    else:  # an exact backbone name first: "resnet50" is also a prefix of "resnet50_v2-..."
        found = [g for g, name in groups.items() if name == backbone]
        found = found or [g for g in groups if g.startswith(backbone)]
    if len(found) == 1:
        return found[0]
    if not groups:
        raise CacheError(f"data set {dataset!r} has no cached features; run `featurecache run`")
    if not found:
        raise CacheError(f"no backbone {backbone!r} cached for {dataset!r}; it has: {listed}")
    raise CacheError(
        f"{dataset!r} has features of several backbones ({', '.join(sorted(found))}); "
        "name one: features(dataset, backbone=...)"
    )
