"""One fine-tuning run (:class:`Run`): the dense head back on the backbone, checked,
trained and written, whatever the data comes from (a
:class:`~featurecache.finetuning.source.Source`: images or cached activations).

The stage and its steps are described in :mod:`featurecache.finetuning.train`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from featurecache.backbones import BuiltBackbone, build_backbone
from featurecache.cache import recipe
from featurecache.config import BackboneConfig, FinetuneConfig
from featurecache.deps import gpu_available, import_keras
from featurecache.errors import ConfigError, NoTrainedHeadError, WeightsChangedError
from featurecache.finetuning import model as models
from featurecache.finetuning.activations import damage_named
from featurecache.finetuning.callbacks import empty_history, history_writer, load_history, stopper
from featurecache.finetuning.outputs import FinetuneResult, write_outputs
from featurecache.finetuning.source import Source, split_rows
from featurecache.heads.files import load_model
from featurecache.metrics import evaluate
from featurecache.runs import HeadRecord, RunLayout
from featurecache.stopping import graceful_stop

log = logging.getLogger(__name__)


def load_dense_head(folder: Path) -> tuple[Any, HeadRecord]:
    """The trained dense head in ``folder`` (its Keras model wrapper: ``predict_proba``
    and the Keras model ``model_``, features ``(batch, feature_dim)`` -> probabilities
    ``(batch, n_classes)``) and its record.

    Raises
    ------
    NoTrainedHeadError
        If there is no trained head there.
    ConfigError
        If it is not a dense head, or it was trained on pooled taps too.
    """
    if not (folder / "head.json").is_file():
        raise NoTrainedHeadError(
            f"no trained head in {folder}; fine-tuning starts from a dense head: declare "
            '[[heads]] kind = "dense" and run `featurecache train-head` first'
        )
    record = HeadRecord.read(folder)
    if record.info["kind"] != "dense":
        raise ConfigError(
            f"head {folder.name!r} is a {record.info['kind']} head; fine-tuning needs a dense "
            'head ([finetune] head = the name of a kind = "dense" head)'
        )
    if record.info.get("taps"):
        raise ConfigError(
            f"head {folder.name!r} was trained on pooled taps besides the final features; "
            "fine-tuning starts from a dense head on the final features alone ([finetune] head)"
        )
    return load_model(record.model_path), record


class Run:
    """One data set x backbone being fine-tuned from ``source``: :meth:`start` (model,
    parity check, compile), :meth:`train`, :meth:`finish` (evaluate and write).

    Parameters
    ----------
    ft : FinetuneConfig
    source : Source
        Where the batches come from, and what differs with it (the model trained, the
        parity check, the evaluation, the output folder's kind).
    backbone : BackboneConfig
    layout : RunLayout
        Where the starting head is read and the output folder written.
    """

    def __init__(
        self, ft: FinetuneConfig, source: Source, backbone: BackboneConfig, layout: RunLayout
    ) -> None:
        self.ft, self.source, self.backbone = ft, source, backbone
        self.started = time.perf_counter()
        features = source.features
        self.head_dir = layout.head_dir(features.dataset, features.group, ft.head)
        self.out = layout.finetune_dir(features.dataset, features.group, ft.head, source.name)
        # Set by start():
        self.device = ""
        self.head: Any = None
        self.head_record: HeadRecord | None = None
        self.built: BuiltBackbone | None = None
        self.model: Any = None  # what model.fit trains (the source's inputs)
        self.parity: float | None = None
        self.opened: list[str] = []
        self.train_rows = self.val_rows = np.zeros(0, dtype=int)
        self.steps = 0
        # Set by train():
        self.history = empty_history()
        self.resumed_from = 0
        self.start_val_loss = self.best = float("nan")

    def start(self) -> Run:
        """Load the dense head, build the backbone and the source's model around them,
        check parity, open the trained layers, compile.

        The parity check runs on a float32 build, at float32's tolerance. On a GPU, a
        source that trains in mixed precision then gets its model built again under
        ``mixed_float16`` (:meth:`_build_mixed`).

        Raises
        ------
        NoTrainedHeadError, WeightsChangedError, ParityError
            No dense head; other weights than the features'; the rebuilt model does not
            reproduce the cache (all :class:`~featurecache.errors.CacheError`).
        ConfigError
            If the head is not a dense head, or no layer would be trained.
        """
        self.device = "GPU" if gpu_available() else "CPU"
        self.head, self.head_record = load_dense_head(self.head_dir)
        self.built = self._build_backbone()
        self.model = self.source.model(self.built, self.head.model_)
        on_pixels = self.source.on_pixels(self.built, self.head.model_, self.model)
        self.parity = self.source.parity(on_pixels, self.model, self.head)
        if self.device == "GPU" and self.source.mixed_precision:
            self._build_mixed()
        self.opened = self.source.unfreeze(self.built, self.ft.unfreeze)
        self.train_rows, self.val_rows = split_rows(
            self.source.splits, self.source.labels, self.ft.seed
        )
        steps = math.ceil(len(self.train_rows) / self.ft.batch_size)
        self.steps = min(steps, self.ft.max_steps) if self.ft.max_steps else steps
        warmup = self.steps if self.source.warmup else 0  # one epoch
        models.compile_for_finetuning(
            self.model,
            self.ft.learning_rate,
            self.ft.momentum,
            self.ft.optimizer,
            warmup_steps=warmup,
            total_steps=warmup * self.ft.epochs,
        )
        return self

    def _build_mixed(self) -> None:
        """Build the head, the backbone and the source's model again under
        ``mixed_float16``, to train on a GPU.

        Keras layers keep the dtype policy they were built with, so training in mixed
        precision takes a second build. The parity check is not run on it: a model that
        computes in float16 differs from the float32 cached features by up to about 2e-3
        (measured on the CPU with Keras's mixed_float16: MobileNetV2, ImageNet weights,
        64 catvnoncat images), which would hide a real disagreement of that size at
        float32's 1e-4.
        """
        with models.mixed_precision(True):
            self.head = load_dense_head(self.head_dir)[0]
            self.built = self._build_backbone()
            self.model = self.source.model(self.built, self.head.model_)

    def _build_backbone(self) -> BuiltBackbone:
        """Build the backbone, refusing other weights than the features', then seed the
        global random generators with ``[finetune] seed`` (after the backbone's own seed).

        Raises
        ------
        WeightsChangedError
            If the weights' SHA-256 differs from the one the features recorded.
        """
        built = build_backbone(self.backbone)
        if built.weights_sha256 != self.source.features.provenance["weights"].get("sha256"):
            raise WeightsChangedError(
                f"the {self.backbone.name} weights now loaded differ from those the features "
                "were extracted with; extract again before fine-tuning"
            )
        import_keras().utils.set_random_seed(self.ft.seed)
        return built

    def train(self, progress: bool) -> Run:
        """``model.fit`` with early stopping, a checkpoint per epoch, and resumption.

        The starting point (the frozen-feature head on the backbone) is the baseline: if
        no epoch improves on its validation loss, its weights are kept.
        """
        keras, ft = import_keras(), self.ft
        train, val = self.source.batches(self.train_rows, self.val_rows)
        history_file, backup = self.out / "history.json", self.out / "backup"
        self.out.mkdir(parents=True, exist_ok=True)
        if not backup.exists():  # a fresh run, not the resumption of an interrupted one
            history_file.unlink(missing_ok=True)
        self.history = load_history(history_file)
        self.resumed_from = len(self.history["loss"])
        if self.resumed_from:
            log.info("resuming fine-tuning after epoch %d (%s)", self.resumed_from, backup)
        start_weights = self.model.get_weights()
        self.start_val_loss = float(self.model.evaluate(val, verbose=0, return_dict=True)["loss"])
        with graceful_stop() as stop, damage_named():
            self.model.fit(
                train,
                validation_data=val,
                epochs=ft.epochs,
                steps_per_epoch=self.steps,
                verbose=1 if progress else 0,
                callbacks=[
                    keras.callbacks.BackupAndRestore(str(backup)),
                    keras.callbacks.EarlyStopping(
                        monitor="val_loss", patience=ft.patience, restore_best_weights=True
                    ),
                    history_writer(keras, history_file, self.history),
                    stopper(keras, stop, ft.epochs),
                ],
            )
        self.best = min(self.history["val_loss"], default=float("inf"))
        if self.best >= self.start_val_loss:
            log.warning(
                "fine-tuning did not improve the validation loss (%.4f, start %.4f): "
                "keeping the starting weights",
                self.best,
                self.start_val_loss,
            )
            self.model.set_weights(start_weights)
        return self

    def _started(self) -> tuple[BuiltBackbone, HeadRecord]:
        """The backbone and the starting head's record that :meth:`start` made.

        Raises
        ------
        RuntimeError
            If :meth:`start` has not run (an internal error).
        """
        if self.built is None or self.head_record is None:
            raise RuntimeError("internal error: Run.start() has not run")
        return self.built, self.head_record

    def finish(self) -> FinetuneResult:
        """Save the model on raw pixels (``model.keras``), check it again where the
        source can, evaluate every split, write the folder.

        Raises
        ------
        ParityError
            If the saved model no longer reproduces the cache (``model.keras`` stays).
        """
        built, _ = self._started()
        saved = self.source.on_pixels(built, self.head.model_, self.model)
        saved.save(self.out / "model.keras")  # kept even if the parity check below fails
        after = self.source.parity_after(saved, self.model)
        if after is not None:
            self.parity = max(after, self.parity or 0.0)
        metrics = {}
        for split in ("train", "validation", "test"):
            rows = np.flatnonzero(self.source.splits == split)
            if len(rows):
                proba = self.source.proba(self.model, rows)
                labels = self.source.labels[rows]
                metrics[split] = evaluate(labels, proba, self.source.features.class_names)
        return self._write(metrics)

    def _write(self, metrics: dict[str, Any]) -> FinetuneResult:
        """Write the folder's records and plots; the result ``--json`` prints."""
        features, frozen = self.source.features, self._started()[1].metrics
        write_outputs(
            HeadRecord(self.out, self._info(), metrics),
            frozen,
            self.history,
            f"{features.dataset} / {self.backbone.name} / fine-tuned",
        )
        log.info(
            "fine-tuned %s x %s: test %s",
            features.dataset,
            self.backbone.name,
            metrics.get("test", {}).get("accuracy"),
        )
        return FinetuneResult(
            dataset=features.dataset,
            backbone=self.backbone.name,
            group=features.group,
            folder=str(self.out),
            device=self.device,
            parity_max_abs_diff=self.parity,
            trainable_layers=len(self.opened),
            epochs_run=len(self.history["loss"]),
            steps_per_epoch=self.steps,
            resumed_from_epoch=self.resumed_from,
            seconds=time.perf_counter() - self.started,
            frozen_accuracy={s: m["accuracy"] for s, m in frozen.items()},
            finetuned_accuracy={s: m["accuracy"] for s, m in metrics.items()},
            start_val_loss=self.start_val_loss,
            best_val_loss=self.best,
            improved=self.best < self.start_val_loss,
            source=self.source.name,
            epoch_seconds=list(self.history.get("seconds", [])),
        )

    def _info(self) -> dict[str, Any]:
        """``finetune.json``: what the model is, what it came from, how it was trained,
        then what the source adds (:meth:`Source.info`)."""
        ft, features = self.ft, self.source.features
        return {
            "kind": "finetuned",
            "model_file": "model.keras",
            "input": "RGB pixels 0-255, float32, (batch, h, w, 3); resized inside to "
            f"{self.backbone.input_size} px",
            "class_names": features.class_names,
            "backbone": self.backbone.describe(),
            "weights": features.provenance["weights"],
            "recipe_hash": features.provenance["recipe_hash"],
            "cache_group": features.group,
            "started_from_head": self._started()[1].name,
            "finetune": {**asdict(ft), "augment": asdict(ft.augment)},
            "trainable_layers": len(self.opened),
            "parity_max_abs_diff": self.parity,
            "source": self.source.name,
            "seconds": round(time.perf_counter() - self.started, 1),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": recipe.versions(),
            **self.source.info(),
        }
