"""Images for fine-tuning: the cached rows that still exist, fed through Keras in batches.

Fine-tuning trains on images, not on cached features (the backbone changes), so it
reads and decodes each batch again; :func:`image_batches` feeds them to ``model.fit``
from a few threads, and :func:`predict_images` runs a model over a split.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from featurecache.cache import FeatureSet, storable
from featurecache.datasets import Listing, Record
from featurecache.deps import import_keras


def cached_rows(features: FeatureSet, listing: Listing) -> tuple[list[Record], np.ndarray]:
    """The records of the cached rows whose images still exist, and those row numbers.

    Returns
    -------
    records : list of Record
    rows : ndarray of shape (n,), int
        Row of each record in ``features``.
    """
    by_source = {storable(r.source): r for r in listing.records}
    rows = [i for i, s in enumerate(features.sources) if s in by_source]
    return [by_source[features.sources[i]] for i in rows], np.asarray(rows, dtype=int)


def read_pixels(
    listing: Listing, records: Sequence[Record], size: int, decoder: str = "pillow"
) -> np.ndarray:
    """Decoded images (JPEGs by ``decoder``, the backbone's) as float32 RGB 0-255 of shape
    ``(len(records), size, size, 3)``."""
    return np.stack([listing.read(r, size, decoder)[1] for r in records]).astype(np.float32)


def image_batches(
    listing: Listing,
    records: Sequence[Record],
    labels: np.ndarray,
    size: int,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    decoder: str = "pillow",
) -> Any:
    """A ``keras.utils.PyDataset`` of ``(pixels, labels)`` batches, reshuffled every epoch
    when ``shuffle``; images are decoded by up to 4 threads ahead of the model."""
    keras = import_keras()

    base: Any = keras.utils.PyDataset  # Keras is imported on first use: a runtime base

    class ImageBatches(base):
        def __init__(self) -> None:
            super().__init__(workers=min(4, os.cpu_count() or 1), use_multiprocessing=False)
            self.rng = np.random.default_rng(seed)
            self.order = np.arange(len(records))
            self.on_epoch_end()

        def __len__(self) -> int:
            return math.ceil(len(records) / batch_size)

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            picks = self.order[index * batch_size : (index + 1) * batch_size]
            images = read_pixels(listing, [records[i] for i in picks], size, decoder)
            return images, labels[picks]

        def on_epoch_end(self) -> None:
            if shuffle:
                self.rng.shuffle(self.order)

    return ImageBatches()


def predict_images(
    model: Any,
    listing: Listing,
    records: Sequence[Record],
    size: int,
    batch_size: int,
    decoder: str = "pillow",
) -> np.ndarray:
    """``model``'s class probabilities for ``records``: ``(len(records), n_classes)`` float64."""
    proba = [
        np.asarray(
            model.predict(
                read_pixels(listing, records[i : i + batch_size], size, decoder), verbose=0
            )
        )
        for i in range(0, len(records), batch_size)
    ]
    return np.concatenate(proba).astype(np.float64)
