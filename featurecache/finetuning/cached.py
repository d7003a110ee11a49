"""Fine-tuning from the cache: the layers after ``finetune_from`` and the head, trained
on the cached activation maps instead of images.

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
import math
import time
from typing import Any

import numpy as np

from featurecache.backbones import BuiltBackbone
from featurecache.backbones.taps import tail_model
from featurecache.cache import Cache, storable
from featurecache.config import Augmentation, BackboneConfig, FinetuneConfig
from featurecache.datasets import Listing
from featurecache.deps import gpu_available, import_keras
from featurecache.errors import CacheError, ConfigError, ParityError
from featurecache.finetuning import model as models
from featurecache.finetuning.activations import activation_batches, predict_cached, view_array
from featurecache.finetuning.data import read_pixels
from featurecache.finetuning.run import PARITY_IMAGES, FinetuneResult, Run, load_dense_head
from featurecache.metrics import evaluate
from featurecache.runs import RunLayout

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
    inputs = keras.Input(shape=tuple(tail.input.shape[1:]), name="activations")
    outputs = head(tail(inputs, training=False))
    return keras.Model(inputs, outputs, name=f"{built.config.name}_from_{layer}")


def trainable_layers(built: BuiltBackbone) -> list[str]:
    """Names of the backbone's layers with trainable weights."""
    return [sub.name for sub in built.model.layers if sub.trainable and sub.weights]


class CacheRun(Run):
    """One data set x backbone fine-tuned from its cached activation maps.

    The stage's steps are :class:`~featurecache.finetuning.run.Run`'s (start, train with
    early stopping and per-epoch checkpoints, finish); what differs is the model trained
    (:func:`train_model`), the batches (:func:`activation_batches`), the parity check
    (the assembled model on raw pixels against the tail on cached activations) and the
    evaluation (from the cache, averaged over the cached views).
    """

    def __init__(
        self,
        ft: FinetuneConfig,
        cache: Cache,
        group: str,
        listing: Listing,
        backbone: BackboneConfig,
        layout: RunLayout,
    ) -> None:
        self.ft, self.listing, self.backbone = ft, listing, backbone
        self.started = time.perf_counter()
        if not backbone.finetune_from:
            raise ConfigError(
                f"fine-tuning {backbone.name} from the cache needs its activation maps: set "
                "finetune_from = true on the backbone and extract again",
                key="finetune_from",
            )
        self.features = cache.read(listing.name, group, with_features=False)
        stored = self.features.provenance.get("arrays", {})
        if "activations" not in stored:
            raise CacheError(
                f"{listing.name}/{group} holds no activation maps; extract again with this "
                "featurecache (finetune_from is set)"
            )
        self.generation = cache.open_rows(listing.name, group)
        self.views = [v for v in backbone.views if view_array(v) in stored]
        self.head_dir = layout.head_dir(listing.name, group, ft.head)
        self.out = layout.finetune_dir(listing.name, group, ft.head, "cache")
        self.labels = self.features.y
        self.splits = np.asarray(self.features.split)

    def start(self) -> CacheRun:
        """Build the backbone, the full model and the tail + head; check parity."""
        self.head, self.head_record = load_dense_head(self.head_dir)
        self.built = self._build(self.head)
        self.device = "GPU" if gpu_available() else "CPU"
        self.model = train_model(self.built, self.head.model_, self.backbone.finetune_from)
        self.parity = self._parity(self.model_on_pixels())
        self.opened = trainable_layers(self.built)
        log.info(
            "training %d layers after %s and the head from the cache",
            len(self.opened),
            self.backbone.finetune_from,
        )
        train, _ = self._split_rows()
        steps = math.ceil(len(train) / self.ft.batch_size)
        steps = min(steps, self.ft.max_steps) if self.ft.max_steps else steps
        models.compile_for_finetuning(
            self.model,
            self.ft.learning_rate,
            self.ft.momentum,
            self.ft.optimizer,
            warmup_steps=steps,  # one epoch
            total_steps=steps * self.ft.epochs,
        )
        return self

    def model_on_pixels(self) -> Any:
        """The assembled model: raw pixels -> resize -> preprocessing -> backbone (its
        tail as trained so far) -> head."""
        return models.build_model(self.built, self.head.model_, Augmentation.off())

    def _batches(self) -> tuple[Any, Any]:
        train, val = self._split_rows()
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

    def _split_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`Run._split_rows`, ascending (the stream reads rows in chunk order)."""
        train, val = super()._split_rows()
        return np.sort(train), np.sort(val)

    def finish(self) -> FinetuneResult:
        """Assemble the whole model, check it against the cache path, save, evaluate."""
        full = self.model_on_pixels()
        full.save(self.out / "model.keras")  # kept even if the parity check below fails
        after = self._parity(full)
        self.parity = None if after is None else max(after, self.parity or 0.0)
        metrics = {}
        for split in ("train", "validation", "test"):
            idx = np.flatnonzero(self.splits == split)
            if len(idx):
                proba = predict_cached(
                    self.model, self.generation, idx, self.views, self.ft.batch_size
                )
                metrics[split] = evaluate(self.labels[idx], proba, self.features.class_names)
        return self._write(metrics)

    def _parity(self, full: Any) -> float | None:
        """Max |assembled model(raw pixels) - tail and head(cached activations)| over the
        first training images that are still in the data set's listing (``None``, and
        a warning, if none is).

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
        live = np.asarray(
            full.predict(read_pixels(self.listing, records, self.backbone.input_size), verbose=0)
        )
        cached = predict_cached(
            self.model, self.generation, np.asarray(rows), ("identity",), len(rows)
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

    def _info(self) -> dict[str, Any]:
        info = super()._info()
        info["input"] = (
            "RGB pixels 0-255, float32, (batch, h, w, 3); resized inside to "
            f"{self.backbone.input_size} px"
        )
        info["finetune_from"] = self.backbone.finetune_from
        info["views"] = self.views
        info["metrics_from"] = (
            "the cached activation maps, class probabilities averaged over the views "
            f"{self.views}; model.keras predicts one view of raw pixels"
        )
        info.pop("parity_max_abs_diff")
        info["parity_max_abs_diff"] = self.parity
        return info
