"""Fine-tuning from decoded images (``[finetune] source = "images"``): the backbone's
last block and the dense head, trained on the images decoded again every batch, with
augmentation; the parity check compares the rebuilt model with the head on the cached
features.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from featurecache.backbones import BuiltBackbone
from featurecache.cache import Cache
from featurecache.config import BackboneConfig, FinetuneConfig
from featurecache.datasets import Listing
from featurecache.errors import ConfigError, ParityError
from featurecache.finetuning import model as models
from featurecache.finetuning.data import cached_rows, image_batches, predict_images, read_pixels
from featurecache.finetuning.source import PARITY_IMAGES

log = logging.getLogger(__name__)

#: The rebuilt float32 model and the head on float32 cached features compute the same
#: thing: they agree to float32 round-off.
PARITY_TOLERANCE = 1e-4
#: Features cached as float16 carry rounding of about 1e-3 relative: the head's output
#: on them may differ from the live float32 model's by more than 1e-4.
PARITY_TOLERANCE_FLOAT16 = 5e-3


class ImageSource:
    """The cached rows whose images still exist, decoded again for every batch.

    Parameters
    ----------
    ft : FinetuneConfig
        ``batch_size``, ``seed`` and ``augment`` are used here.
    cache : Cache
    group : str
        The cache group of ``listing``'s data set x ``backbone`` the head was trained on.
    listing : Listing
        The data set as it is now: rows whose image is gone are left out.
    backbone : BackboneConfig

    Raises
    ------
    CacheError
        If the group cannot be read.
    """

    name = "images"
    mixed_precision = True  # on a GPU
    warmup = False

    def __init__(
        self,
        ft: FinetuneConfig,
        cache: Cache,
        group: str,
        listing: Listing,
        backbone: BackboneConfig,
    ) -> None:
        self.ft, self.listing, self.backbone = ft, listing, backbone
        self.features = cache.read(listing.name, group)
        self.records, self.rows = cached_rows(self.features, listing)
        self.labels = self.features.y[self.rows]
        self.splits = np.asarray(self.features.split[self.rows])

    def model(self, built: BuiltBackbone, head: Any) -> Any:
        """Raw pixels -> resize, augmentation, preprocessing, backbone, head
        (:func:`featurecache.finetuning.model.build_model`)."""
        return models.build_model(built, head, self.ft.augment, self.ft.seed)

    def on_pixels(self, built: BuiltBackbone, head: Any, trained: Any) -> Any:
        """``trained`` itself: it takes raw pixels (augmentation is off at inference)."""
        return trained

    def parity(self, on_pixels: Any, trained: Any, head: Any) -> float:
        """Max |model(pixels) - head(cached features)| over the first training images
        (the first :data:`PARITY_IMAGES` rows), in probabilities.

        The tolerance is :data:`PARITY_TOLERANCE`, :data:`PARITY_TOLERANCE_FLOAT16` for
        features cached as float16.

        Raises
        ------
        ParityError
            If it exceeds the tolerance: the cache and the live model disagree.
        """
        picks = list(range(min(PARITY_IMAGES, len(self.records))))
        size = self.features.provenance["input_size"]
        picked = [self.records[i] for i in picks]
        pixels = read_pixels(self.listing, picked, size, self.backbone.decoder)
        live = np.asarray(on_pixels.predict(pixels, verbose=0))
        cached = np.asarray(head.predict_proba(self.features.X[self.rows[picks]]))
        diff = float(np.abs(live - cached).max())
        float16 = self.features.provenance.get("backbone", {}).get("dtype") == "float16"
        tolerance = PARITY_TOLERANCE_FLOAT16 if float16 else PARITY_TOLERANCE
        if diff > tolerance:
            raise ParityError(
                f"parity check failed: the rebuilt model and the head on cached features "
                f"differ by up to {diff:.2e} (> {tolerance:g}) on {len(picks)} images. The "
                "cache and the live model disagree (preprocessing, weights or library "
                "versions): extract and train the head again with this installation",
                difference=diff,
                tolerance=tolerance,
            )
        log.info("parity check passed: max abs difference %.2e on %d images", diff, len(picks))
        return diff

    def parity_after(self, on_pixels: Any, trained: Any) -> None:
        """``None``: the cached features are the untrained backbone's, so nothing
        describes the trained one."""
        return None

    def unfreeze(self, built: BuiltBackbone, extra: Sequence[str]) -> list[str]:
        """The backbone's registered last block and the layers matching ``extra``
        (:func:`featurecache.finetuning.model.unfreeze`).

        Raises
        ------
        ConfigError
            If no layer matches (``[finetune] unfreeze``).
        """
        try:
            return models.unfreeze(built, extra)
        except ValueError as exc:
            raise ConfigError(f"[finetune] unfreeze: {exc}") from exc

    def batches(self, train: np.ndarray, val: np.ndarray) -> tuple[Any, Any]:
        """Decoded images ``(batch, size, size, 3)`` float32 0-255 and their labels
        (:func:`featurecache.finetuning.data.image_batches`)."""
        size, batch, pick = self.backbone.input_size, self.ft.batch_size, self.records
        return (
            image_batches(
                self.listing,
                [pick[i] for i in train],
                self.labels[train],
                size,
                batch,
                shuffle=True,
                seed=self.ft.seed,
                decoder=self.backbone.decoder,
            ),
            image_batches(
                self.listing,
                [pick[i] for i in val],
                self.labels[val],
                size,
                batch,
                decoder=self.backbone.decoder,
            ),
        )

    def proba(self, model: Any, rows: np.ndarray) -> np.ndarray:
        """``model`` on the decoded images of ``rows``: ``(len(rows), n_classes)`` float64."""
        records = [self.records[i] for i in rows]
        size, batch = self.backbone.input_size, self.ft.batch_size
        return predict_images(model, self.listing, records, size, batch, self.backbone.decoder)

    def info(self) -> dict[str, Any]:
        """Nothing besides what every run writes."""
        return {}
