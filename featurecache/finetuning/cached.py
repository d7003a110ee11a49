"""Fine-tuning from the cache (``[finetune] source = "cache"``): the layers after
``finetune_from`` and the head, trained on the cached activation maps instead of images
(:class:`CachedActivations`, a :class:`~featurecache.finetuning.source.Source`).

Extraction ran the frozen prefix of the backbone (everything up to ``finetune_from``)
once per image and stored its activation map (``activations``, and
``activations.flip`` with flipped views). Training then runs only the tail
(:func:`featurecache.backbones.taps.tail_model`) and the dense head, so an epoch costs
the tail's forward and backward passes, not the whole backbone's plus decoding.

Batches are streamed from zarr (:mod:`featurecache.finetuning.activations`), so memory
stays flat however many images the data set has.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from featurecache.backbones import BuiltBackbone
from featurecache.backbones.taps import tail_model
from featurecache.cache import Cache, storable
from featurecache.config import Augmentation, BackboneConfig, FinetuneConfig
from featurecache.datasets import Listing
from featurecache.deps import import_keras
from featurecache.errors import CacheError, ConfigError, ParityError
from featurecache.finetuning import model as models
from featurecache.finetuning.activations import activation_batches, predict_cached, view_array
from featurecache.finetuning.data import read_pixels
from featurecache.finetuning.source import PARITY_IMAGES

log = logging.getLogger(__name__)

#: The assembled model on raw pixels and the tail on the cached activations agree to
#: about float16's precision: activations are stored with an 11-bit significand
#: (relative rounding <= 2**-11, about 4.9e-4), which the tail and the softmax carry
#: into the probabilities. Measured on MobileNetV2 with ImageNet weights: 7e-5 before
#: training (a CIFAR-10 subset), 2.0e-4 after 9 epochs (clothing_small); the bound
#: leaves a margin of 50x over that (docs/finetune.md).
PARITY_TOLERANCE_ACTIVATIONS = 1e-2


def train_model(built: BuiltBackbone, head: Any, layer: str) -> Any:
    """Activation map of ``layer`` ``(batch, h, w, c)`` -> class probabilities
    ``(batch, k)``: the backbone's tail (BatchNormalization frozen and in inference
    mode, as in the Keras transfer-learning guide) and the dense head's model ``head``.

    Every tail layer but BatchNormalization is made trainable, the prefix frozen; the
    tail shares its layers with ``built.model``, which therefore holds the trained
    weights afterwards.
    """
    keras = import_keras()
    tail = tail_model(built.model, layer)
    names = {sub.name for sub in tail.layers}
    built.model.trainable = True
    for sub in built.model.layers:
        is_bn = isinstance(sub, keras.layers.BatchNormalization)
        sub.trainable = sub.name in names and not is_bn
        models.freeze_batch_norm(sub)  # and those nested in blocks (keras-hub's)
    inputs = keras.Input(shape=tuple(tail.input.shape[1:]), name="activations")
    outputs = head(tail(inputs, training=False))
    return keras.Model(inputs, outputs, name=f"{built.config.short_name}_from_{layer}")


def trainable_layers(built: BuiltBackbone) -> list[str]:
    """Names of the backbone's layers with trainable weights."""
    return [sub.name for sub in built.model.layers if sub.trainable and sub.weights]


class CachedActivations:
    """The cached activation maps of ``finetune_from``, streamed from zarr; the tail of
    the backbone and the head are trained on them.

    Every cached row is used (the images need not exist, but for the parity check); the
    metrics come from the cache, averaged over the cached views. On a GPU it trains in
    float32 (``mixed_precision`` is False).

    Parameters
    ----------
    ft : FinetuneConfig
        ``batch_size`` and ``seed`` are used here (``augment`` does not apply: the
        cached flipped views are the augmentation).
    cache : Cache
    group : str
        The cache group of ``listing``'s data set x ``backbone``.
    listing : Listing
        The data set as it is now, for the parity check's images.
    backbone : BackboneConfig

    Raises
    ------
    ConfigError
        If the backbone has no ``finetune_from``.
    CacheError
        If the group holds no activation maps.
    """

    name = "cache"
    mixed_precision = False
    warmup = True

    def __init__(
        self,
        ft: FinetuneConfig,
        cache: Cache,
        group: str,
        listing: Listing,
        backbone: BackboneConfig,
    ) -> None:
        if not backbone.finetune_from:
            raise ConfigError(
                f"fine-tuning {backbone.name} from the cache needs its activation maps: set "
                "finetune_from = true on the backbone and extract again",
                key="finetune_from",
            )
        self.layer: str = backbone.finetune_from  # where the cached activation maps come from
        self.ft, self.listing, self.backbone = ft, listing, backbone
        self.features = cache.read(listing.name, group, with_features=False)
        stored = self.features.provenance.get("arrays", {})
        if "activations" not in stored:
            raise CacheError(
                f"{listing.name}/{group} holds no activation maps; extract again with this "
                "featurecache (finetune_from is set)"
            )
        self.generation = cache.open_rows(listing.name, group)
        self.views = [v for v in backbone.views if view_array(v) in stored]
        self.labels = self.features.y
        self.splits = np.asarray(self.features.split)

    def model(self, built: BuiltBackbone, head: Any) -> Any:
        """Activation maps -> tail -> head (:func:`train_model`)."""
        return train_model(built, head, self.layer)

    def on_pixels(self, built: BuiltBackbone, head: Any, trained: Any) -> Any:
        """The assembled model: raw pixels -> resize -> preprocessing -> backbone (its
        tail as trained so far, shared with ``trained``) -> head; no augmentation."""
        return models.build_model(built, head, Augmentation.off())

    def parity(self, on_pixels: Any, trained: Any, head: Any) -> float | None:
        """:meth:`parity_after` on the untrained model (``head`` unused: the tail
        carries the head)."""
        return self.parity_after(on_pixels, trained)

    def parity_after(self, on_pixels: Any, trained: Any) -> float | None:
        """Max |assembled model(raw pixels) - tail and head(cached activations)| over the
        first training images that are still in the data set's listing (``None``, and
        a warning, if none is), in probabilities.

        Raises
        ------
        ParityError
            Above :data:`PARITY_TOLERANCE_ACTIVATIONS`.
        """
        by_source = {storable(r.source): r for r in self.listing.records}
        rows = [
            i
            for i in np.flatnonzero(self.splits == "train")
            if self.features.sources[i] in by_source
        ][:PARITY_IMAGES]
        if not rows:
            log.warning(
                "parity check skipped: none of the cached training images is in the data "
                "set's listing (moved, deleted, or listed under another path)"
            )
            return None
        records = [by_source[self.features.sources[i]] for i in rows]
        pixels = read_pixels(self.listing, records, self.backbone.input_size, self.backbone.decoder)
        live = np.asarray(on_pixels.predict(pixels, verbose=0))
        cached = predict_cached(
            trained, self.generation, np.asarray(rows), ("identity",), len(rows)
        )
        diff = float(np.abs(live - cached).max())
        if diff > PARITY_TOLERANCE_ACTIVATIONS:
            raise ParityError(
                f"parity check failed: the assembled model on raw pixels and the tail on the "
                f"cached activations differ by up to {diff:.2e} (> "
                f"{PARITY_TOLERANCE_ACTIVATIONS:g}) on {len(rows)} images; extract again "
                "with this installation",
                difference=diff,
                tolerance=PARITY_TOLERANCE_ACTIVATIONS,
            )
        log.info("parity check passed: max abs difference %.2e on %d images", diff, len(rows))
        return diff

    def unfreeze(self, built: BuiltBackbone, extra: Sequence[str]) -> list[str]:
        """The tail's layers, made trainable by :func:`train_model` already (``extra``
        does not apply: the prefix was run at extraction)."""
        opened = trainable_layers(built)
        log.info(
            "training %d layers after %s and the head from the cache",
            len(opened),
            self.backbone.finetune_from,
        )
        return opened

    def batches(self, train: np.ndarray, val: np.ndarray) -> tuple[Any, Any]:
        """Activation maps ``(batch, h, w, c)`` float32 and their labels, streamed
        (:func:`activation_batches`; rows ascending, as the stream reads chunks in order);
        training rows in a view drawn per row and epoch."""
        train, val = np.sort(train), np.sort(val)
        batch, gen = self.ft.batch_size, self.generation
        return (
            activation_batches(
                gen,
                train,
                self.labels[train],
                batch,
                views=self.views,
                shuffle=True,
                seed=self.ft.seed,
            ),
            activation_batches(gen, val, self.labels[val], batch),
        )

    def proba(self, model: Any, rows: np.ndarray) -> np.ndarray:
        """``model`` on the cached activations of ``rows``, averaged over the views:
        ``(len(rows), n_classes)`` float64."""
        return predict_cached(model, self.generation, rows, self.views, self.ft.batch_size)

    def info(self) -> dict[str, Any]:
        """``finetune_from``, the views, and where the metrics come from."""
        return {
            "finetune_from": self.backbone.finetune_from,
            "views": self.views,
            "metrics_from": "the cached activation maps, class probabilities averaged over "
            f"the views {self.views}; model.keras predicts one view of raw pixels",
        }
