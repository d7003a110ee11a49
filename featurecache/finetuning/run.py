"""One fine-tuning run from images: the backbone's last block and the head, trained on
decoded images (:class:`Run`), and what every run shares: the starting dense head, the
parity check, the history and the result (:class:`FinetuneResult`).

The stage and its steps are described in :mod:`featurecache.finetuning.train`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from featurecache.backbones import BuiltBackbone, build_backbone
from featurecache.cache import FeatureSet, recipe
from featurecache.config import BackboneConfig, FinetuneConfig
from featurecache.datasets import Listing, Record
from featurecache.deps import gpu_available, import_keras
from featurecache.errors import ConfigError, NoTrainedHeadError, ParityError, WeightsChangedError
from featurecache.finetuning import model as models
from featurecache.finetuning.activations import damage_named
from featurecache.finetuning.data import cached_rows, image_batches, predict_images, read_pixels
from featurecache.finetuning.outputs import write_outputs
from featurecache.heads.files import load_model
from featurecache.metrics import evaluate
from featurecache.runs import HeadRecord, RunLayout
from featurecache.stopping import StopFlag, graceful_stop

log = logging.getLogger(__name__)

PARITY_IMAGES = 8
PARITY_TOLERANCE = 1e-4
#: Features cached as float16 carry rounding of about 1e-3 relative: the head's output
#: on them may differ from the live float32 model's by more than 1e-4.
PARITY_TOLERANCE_FLOAT16 = 5e-3


@dataclass
class FinetuneResult:
    """One fine-tuned model; ``--json`` prints these. ``seconds`` is wall time; the
    accuracies are top-1 per split, before (frozen-feature head) and after."""

    dataset: str
    backbone: str
    group: str
    folder: str
    device: str
    parity_max_abs_diff: float | None
    trainable_layers: int
    epochs_run: int
    steps_per_epoch: int
    resumed_from_epoch: int
    seconds: float
    frozen_accuracy: dict[str, float]
    finetuned_accuracy: dict[str, float]
    start_val_loss: float = float("nan")
    best_val_loss: float = float("nan")
    improved: bool = True
    source: str = "images"
    epoch_seconds: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_dense_head(folder: Path) -> tuple[Any, HeadRecord]:
    """The trained dense head in ``folder`` (its Keras model wrapper) and its record.

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
    """One data set x backbone being fine-tuned: start (model and parity check), train,
    finish (evaluate and write)."""

    def __init__(
        self,
        ft: FinetuneConfig,
        features: FeatureSet,
        listing: Listing,
        backbone: BackboneConfig,
        layout: RunLayout,
    ) -> None:
        self.ft, self.features, self.listing, self.backbone = ft, features, listing, backbone
        self.started = time.perf_counter()
        self.head_dir = layout.head_dir(features.dataset, features.group, ft.head)
        self.out = layout.finetune_dir(features.dataset, features.group, ft.head)
        self.records, self.rows = cached_rows(features, listing)
        self.labels = features.y[self.rows]
        self.splits = np.asarray(features.split[self.rows])

    def start(self) -> Run:
        """Build raw pixels -> backbone -> head, check parity, unfreeze, compile."""
        keras = import_keras()
        head, self.head_record = load_dense_head(self.head_dir)
        built = self._build(head)
        self.parity = _parity(
            self.model, head, self.features, self.listing, self.records, self.rows
        )
        self.device = "GPU" if gpu_available() else "CPU"
        if self.device == "GPU":  # mixed precision on the GPU (the parity check ran in float32)
            # The policy is global in Keras: set it for this build only, as the layers keep
            # the policy they were built with (and compile adds loss scaling for it).
            previous = keras.mixed_precision.global_policy()
            keras.mixed_precision.set_global_policy("mixed_float16")
            try:
                built = self._build(load_dense_head(self.head_dir)[0])
            finally:
                keras.mixed_precision.set_global_policy(previous)
        try:
            self.opened = models.unfreeze(built, self.ft.unfreeze)
        except ValueError as exc:
            raise ConfigError(f"[finetune] unfreeze: {exc}") from exc
        models.compile_for_finetuning(
            self.model, self.ft.learning_rate, self.ft.momentum, self.ft.optimizer
        )
        return self

    def _build(self, head: Any) -> BuiltBackbone:
        """Build the backbone (refusing other weights than the features'), then seed with
        ``[finetune] seed`` and build ``self.model`` around it and the head."""
        built = build_backbone(self.backbone)
        if built.weights_sha256 != self.features.provenance["weights"].get("sha256"):
            raise WeightsChangedError(
                f"the {self.backbone.name} weights now loaded differ from those the features "
                "were extracted with; extract again before fine-tuning"
            )
        import_keras().utils.set_random_seed(self.ft.seed)  # after the backbone's own seed
        self.model = models.build_model(built, head.model_, self.ft.augment, self.ft.seed)
        return built

    def train(self, progress: bool) -> Run:
        """``model.fit`` with early stopping, a checkpoint per epoch, and resumption."""
        keras, ft = import_keras(), self.ft
        train, val = self._batches()
        self.steps = min(len(train), ft.max_steps) if ft.max_steps else len(train)
        history_file, backup = self.out / "history.json", self.out / "backup"
        self.out.mkdir(parents=True, exist_ok=True)
        if not backup.exists():  # a fresh run, not the resumption of an interrupted one
            history_file.unlink(missing_ok=True)
        self.history = _load_history(history_file)
        self.resumed_from = len(self.history["loss"])
        if self.resumed_from:
            log.info("resuming fine-tuning after epoch %d (%s)", self.resumed_from, backup)
        # The starting point (the frozen-feature head on the backbone) is the baseline: if
        # no epoch improves on its validation loss, its weights are kept.
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
                    _history_writer(keras, history_file, self.history),
                    _stopper(keras, stop, ft.epochs),
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

    def _split_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Training and validation rows; without a validation split, 10% of train held
        out (stratified), as the dense head does."""
        train = np.flatnonzero(self.splits == "train")
        val = np.flatnonzero(self.splits == "validation")
        if len(val) == 0:
            from sklearn.model_selection import train_test_split

            train, val = train_test_split(
                train, test_size=0.1, random_state=self.ft.seed, stratify=self.labels[train]
            )
        return train, val

    def _batches(self) -> tuple[Any, Any]:
        """Training (shuffled) and validation batches of images (:meth:`_split_rows`)."""
        train_idx, val_idx = self._split_rows()
        size, batch = self.backbone.input_size, self.ft.batch_size
        pick = self.records
        return (
            image_batches(
                self.listing,
                [pick[i] for i in train_idx],
                self.labels[train_idx],
                size,
                batch,
                shuffle=True,
                seed=self.ft.seed,
            ),
            image_batches(
                self.listing, [pick[i] for i in val_idx], self.labels[val_idx], size, batch
            ),
        )

    def finish(self) -> FinetuneResult:
        """Save the model, evaluate it on every split, write its folder."""
        self.model.save(self.out / "model.keras")
        metrics = {}
        for split in ("train", "validation", "test"):
            idx = np.flatnonzero(self.splits == split)
            if len(idx):
                metrics[split] = evaluate(
                    self.labels[idx], self._proba(idx), self.features.class_names
                )
        return self._write(metrics)

    def _proba(self, idx: np.ndarray) -> np.ndarray:
        """Class probabilities of the rows ``idx`` (of ``self.records``)."""
        records = [self.records[i] for i in idx]
        size, batch = self.backbone.input_size, self.ft.batch_size
        return predict_images(self.model, self.listing, records, size, batch)

    def _write(self, metrics: dict[str, Any]) -> FinetuneResult:
        """Write the folder's records and plots; the result ``--json`` prints."""
        record = HeadRecord(self.out, self._info(), metrics)
        frozen = self.head_record.metrics
        title = f"{self.features.dataset} / {self.backbone.name} / fine-tuned"
        write_outputs(record, frozen, self.history, title)
        log.info(
            "fine-tuned %s x %s: test %s",
            self.features.dataset,
            self.backbone.name,
            metrics.get("test", {}).get("accuracy"),
        )
        return FinetuneResult(
            dataset=self.features.dataset,
            backbone=self.backbone.name,
            group=self.features.group,
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
            source=self.ft.source,
            epoch_seconds=list(self.history.get("seconds", [])),
        )

    def _info(self) -> dict[str, Any]:
        """``finetune.json``: what the model is, what it came from, how it was trained."""
        ft, attrs = self.ft, self.features.provenance
        return {
            "kind": "finetuned",
            "model_file": "model.keras",
            "input": "RGB pixels 0-255, float32, (batch, h, w, 3); resized inside to "
            f"{self.backbone.input_size} px",
            "class_names": self.features.class_names,
            "backbone": self.backbone.describe(),
            "weights": attrs["weights"],
            "recipe_hash": attrs["recipe_hash"],
            "cache_group": self.features.group,
            "started_from_head": self.head_record.name,
            "finetune": {**asdict(ft), "augment": asdict(ft.augment)},
            "trainable_layers": len(self.opened),
            "parity_max_abs_diff": self.parity,
            "source": ft.source,
            "seconds": round(time.perf_counter() - self.started, 1),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": recipe.versions(),
        }


def _parity(
    model: Any,
    head: Any,
    features: FeatureSet,
    listing: Listing,
    records: list[Record],
    rows: np.ndarray,
) -> float:
    """Max |model(pixels) - head(cached features)| over the first training images.

    Raises
    ------
    ParityError
        If it exceeds the tolerance: the cache and the live model disagree.
    """
    picks = list(range(min(PARITY_IMAGES, len(records))))
    size = features.provenance["input_size"]
    live = np.asarray(
        model.predict(read_pixels(listing, [records[i] for i in picks], size), verbose=0)
    )
    cached = np.asarray(head.predict_proba(features.X[rows[picks]]))
    diff = float(np.abs(live - cached).max())
    float16 = features.provenance.get("backbone", {}).get("dtype") == "float16"
    tolerance = PARITY_TOLERANCE_FLOAT16 if float16 else PARITY_TOLERANCE
    if diff > tolerance:
        raise ParityError(
            f"parity check failed: the rebuilt model and the head on cached features differ by "
            f"up to {diff:.2e} (> {tolerance:g}) on {len(picks)} images. The cache and "
            "the live model disagree (preprocessing, weights or library versions): extract "
            "and train the head again with this installation",
            difference=diff,
            tolerance=tolerance,
        )
    log.info("parity check passed: max abs difference %.2e on %d images", diff, len(picks))
    return diff


def _load_history(path: Path) -> dict[str, list[float]]:
    if path.is_file():
        return json.loads(path.read_text())
    return {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": [], "seconds": []}


def _stopper(keras: Any, stop: StopFlag, epochs: int) -> Any:
    """A callback ending training after the current step on SIGTERM or SIGINT: the last
    finished epoch's checkpoint (``BackupAndRestore``) stays for the next run to resume."""

    class Stopper(keras.callbacks.Callback):
        epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            stop.check(lambda: f"{self.epoch} of {epochs} epochs (checkpointed)")

    return Stopper()


def _history_writer(keras: Any, path: Path, history: dict[str, list[float]]) -> Any:
    """A callback appending each epoch's logs, and its wall time in seconds
    (``seconds``), to ``history`` and ``path`` (atomically)."""

    class HistoryWriter(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = {**(logs or {}), "seconds": time.perf_counter() - self.started}
            for key in history:
                history.setdefault(key, []).append(float(logs.get(key, float("nan"))))
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(history))
            os.replace(tmp, path)

    return HistoryWriter()
