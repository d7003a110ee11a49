"""What a generation holds: its per-image arrays and row columns, declared once.

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

The per-image arrays are described by :class:`ArraySpec` (listed in a generation's
``arrays`` attribute), the row columns by :data:`ROW_COLUMNS`. Rows are chunked along
``n_images`` only, with at least 1 MiB per chunk of each array (:func:`chunk_rows`); how
they are stored is :mod:`featurecache.cache.store`'s business.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_CHUNK_BYTES = 1 << 20

#: The row columns of every generation, by name, with their stored types (the table
#: above); created and listed in this order. Readers name the columns they want.
ROW_COLUMNS: dict[str, Any] = {
    "labels": "int32",
    "split": str,
    "keys": str,
    "sources": str,
    "sizes": "int64",
    "mtimes": "int64",
}
ROW_ARRAYS = tuple(ROW_COLUMNS)


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
    def rows_per_chunk(self) -> int:
        """Rows in one chunk of this array (:func:`chunk_rows` of its row's size)."""
        return chunk_rows(self.row_values, np.dtype(self.dtype).itemsize)

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
