"""Stage 4: fine-tune the backbone's last block under the trained dense head.

For each data set x backbone of a pipeline, starting from the dense head that
``train-head`` wrote (``[finetune] head``, default ``dense``):

1. build raw images -> backbone -> head (:func:`featurecache.finetune.build_model`);
2. **parity check**: on a few training images, the rebuilt model's output must
   equal the head's output on the cached features (max absolute difference
   <= 1e-4); otherwise the cache and the live model disagree (preprocessing,
   weights or library versions) and fine-tuning stops with that message;
3. unfreeze the last block, compile with SGD, train with augmentation and early
   stopping on validation loss, a checkpoint after every epoch
   (``keras.callbacks.BackupAndRestore``): an interrupted run resumes at the last
   finished epoch. The best epoch's weights are kept (``restore_best_weights``); if no
   epoch beats the starting model's validation loss, the starting weights are kept,
   so fine-tuning never hands back a model worse on validation than it was given;
4. write ``model.keras`` (raw pixels in, probabilities out; ``featurecache
   predict`` takes its folder), ``metrics.json`` (same form as train-head's),
   ``curves.png``, ``history.json``, ``finetune.json`` and ``comparison.md`` /
   ``comparison.json``: frozen-feature head vs fine-tuned on the same splits.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from featurecache import recipe
from featurecache.backbones import BackboneConfig, build_backbone, import_keras
from featurecache.config import FinetuneConfig, Pipeline
from featurecache.datasets import Listing, Record, list_dataset
from featurecache.errors import CacheError, ConfigError
from featurecache.heads import load_head
from featurecache.store import Cache, FeatureSet, storable

log = logging.getLogger(__name__)

PARITY_IMAGES = 8
PARITY_TOLERANCE = 1e-4
#: Features cached as float16 carry rounding of about 1e-3 relative: the head's output
#: on them may differ from the live float32 model's by more than 1e-4.
PARITY_TOLERANCE_FLOAT16 = 5e-3
FINETUNE_JSON = "finetune.json"


@dataclass
class FinetuneResult:
    """One fine-tuned model; ``--json`` prints these."""

    dataset: str
    backbone: str
    group: str
    folder: str
    device: str
    parity_max_abs_diff: float
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def finetune(pipeline: Pipeline, *, progress: bool = False) -> list[FinetuneResult]:
    """Fine-tune every data set x backbone of ``pipeline`` (see the module docstring).

    Raises
    ------
    CacheError
        If the features or the dense head are missing (run ``featurecache run``), or
        the parity check fails.
    ConfigError
        If the starting head is not a dense head.
    """
    cache = Cache(pipeline.cache)
    results = []
    for dataset in pipeline.datasets:
        listing = list_dataset(dataset)
        try:
            for backbone in pipeline.backbones:
                found = recipe.find_group(cache, dataset.name, backbone)
                if found is None:
                    raise CacheError(
                        f"no cached features for {dataset.name} x {backbone.name}; run "
                        "`featurecache run` with the same pipeline first"
                    )
                group_dir = pipeline.output / pipeline.name / dataset.name / found.group
                results.append(
                    _finetune_one(
                        pipeline.finetune,
                        cache.read(dataset.name, found.group),
                        listing,
                        backbone,
                        group_dir,
                        found.group,
                        progress=progress,
                    )
                )
        finally:
            listing.close()
    return results


def _load_dense_head(folder: Path):
    if not (folder / "head.json").is_file():
        raise CacheError(
            f"no trained head in {folder}; fine-tuning starts from a dense head: declare "
            '[[heads]] kind = "dense" and run `featurecache train-head` first'
        )
    head, info = load_head(folder)
    if info["kind"] != "dense":
        raise ConfigError(
            f"head {folder.name!r} is a {info['kind']} head; fine-tuning needs a dense head "
            '([finetune] head = the name of a kind = "dense" head)'
        )
    return head, info


def _rows(features: FeatureSet, listing: Listing) -> tuple[list[Record], np.ndarray, np.ndarray]:
    """Records of the cached rows that still exist, with their labels and splits."""
    by_source = {storable(r.source): r for r in listing.records}
    rows = [i for i, s in enumerate(features.sources) if s in by_source]
    records = [by_source[features.sources[i]] for i in rows]
    return records, np.asarray(rows), np.asarray([features.split[i] for i in rows])


def _finetune_one(
    ft: FinetuneConfig,
    features: FeatureSet,
    listing: Listing,
    backbone: BackboneConfig,
    group_dir: Path,
    group: str,
    *,
    progress: bool,
) -> FinetuneResult:
    keras = import_keras()
    from featurecache.finetune import (
        build_model,
        compile_for_finetuning,
        gpu_available,
        unfreeze,
    )

    start = time.perf_counter()
    head_dir = group_dir / ft.head
    head, head_info = _load_dense_head(head_dir)
    out = group_dir / f"finetune-{ft.head}"
    out.mkdir(parents=True, exist_ok=True)
    records, rows, splits = _rows(features, listing)
    labels = features.labels[rows]
    size = backbone.input_size
    keras.utils.set_random_seed(ft.seed)

    built = build_backbone(backbone)
    if built.weights_sha256 != features.attrs["weights"].get("sha256"):
        raise CacheError(
            f"the {backbone.name} weights now loaded differ from those the features were "
            "extracted with; extract again before fine-tuning"
        )
    model = build_model(built, head.model_, ft.augment, ft.seed)
    parity = _parity(model, listing, records, rows, features, head, size)

    device = "GPU" if gpu_available() else "CPU"
    if device == "GPU":  # mixed precision on the GPU (the parity check ran in float32)
        keras.mixed_precision.set_global_policy("mixed_float16")
        built = build_backbone(backbone)
        head, _ = _load_dense_head(head_dir)
        model = build_model(built, head.model_, ft.augment, ft.seed)
    try:
        opened = unfreeze(built, ft.unfreeze)
    except ValueError as exc:
        raise ConfigError(f"[finetune] unfreeze: {exc}") from exc
    compile_for_finetuning(model, ft.learning_rate, ft.momentum)

    train_idx = np.flatnonzero(splits == "train")
    val_idx = np.flatnonzero(splits == "validation")
    if len(val_idx) == 0:  # hold out 10% of train, stratified, as the dense head does
        from sklearn.model_selection import train_test_split

        train_idx, val_idx = train_test_split(
            train_idx, test_size=0.1, random_state=ft.seed, stratify=labels[train_idx]
        )
    batches = _batches_class(keras)
    train = batches(
        listing,
        [records[i] for i in train_idx],
        labels[train_idx],
        size,
        ft.batch_size,
        shuffle=True,
        seed=ft.seed,
    )
    val = batches(listing, [records[i] for i in val_idx], labels[val_idx], size, ft.batch_size)
    steps = min(len(train), ft.max_steps) if ft.max_steps else len(train)
    history_file = out / "history.json"
    backup = out / "backup"
    if not backup.exists():  # a fresh run, not the resumption of an interrupted one
        history_file.unlink(missing_ok=True)
    history = _load_history(history_file)
    resumed_from = len(history["loss"])
    if resumed_from:
        log.info("resuming fine-tuning after epoch %d (checkpoint in %s)", resumed_from, backup)
    # The starting point (the frozen-feature head on the backbone) is the baseline: if no
    # epoch improves on its validation loss, its weights are kept.
    start_weights = model.get_weights()
    start_val_loss = float(model.evaluate(val, verbose=0, return_dict=True)["loss"])
    model.fit(
        train,
        validation_data=val,
        epochs=ft.epochs,
        steps_per_epoch=steps,
        verbose=1 if progress else 0,
        callbacks=[
            keras.callbacks.BackupAndRestore(str(backup)),
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=ft.patience, restore_best_weights=True
            ),
            _HistoryWriter(keras, history_file, history),
        ],
    )
    best = min(history["val_loss"], default=float("inf"))
    improved = best < start_val_loss
    if not improved:
        log.warning(
            "fine-tuning did not improve the validation loss (%.4f, start %.4f): "
            "keeping the starting weights",
            best,
            start_val_loss,
        )
        model.set_weights(start_weights)
    model.save(out / "model.keras")

    metrics = _evaluate(
        model, listing, records, labels, splits, size, ft.batch_size, features.class_names
    )
    frozen = json.loads((head_dir / "metrics.json").read_text())
    _write_outputs(
        out,
        metrics,
        frozen,
        history,
        features,
        backbone,
        ft,
        parity,
        len(opened),
        head_info,
        group,
    )
    log.info(
        "fine-tuned %s x %s: test %s",
        listing.name,
        backbone.name,
        metrics.get("test", {}).get("accuracy"),
    )
    return FinetuneResult(
        dataset=listing.name,
        backbone=backbone.name,
        group=group,
        folder=str(out),
        device=device,
        parity_max_abs_diff=parity,
        trainable_layers=len(opened),
        epochs_run=len(history["loss"]),
        steps_per_epoch=steps,
        resumed_from_epoch=resumed_from,
        seconds=time.perf_counter() - start,
        frozen_accuracy={s: m["accuracy"] for s, m in frozen.items()},
        finetuned_accuracy={s: m["accuracy"] for s, m in metrics.items()},
        start_val_loss=start_val_loss,
        best_val_loss=best,
        improved=improved,
    )


def _parity(model, listing, records, rows, features, head, size) -> float:
    """Max |model(pixels) - head(cached features)| over the first training images."""
    picks = list(range(min(PARITY_IMAGES, len(records))))
    pixels = np.stack([listing.read(records[i], size)[1] for i in picks]).astype(np.float32)
    live = np.asarray(model.predict(pixels, verbose=0))
    cached = np.asarray(head.predict_proba(features.features[rows[picks]]))
    diff = float(np.abs(live - cached).max())
    float16 = features.attrs.get("backbone", {}).get("dtype") == "float16"
    tolerance = PARITY_TOLERANCE_FLOAT16 if float16 else PARITY_TOLERANCE
    if diff > tolerance:
        raise CacheError(
            f"parity check failed: the rebuilt model and the head on cached features differ by "
            f"up to {diff:.2e} (> {tolerance:g}) on {len(picks)} images. The cache and "
            "the live model disagree (preprocessing, weights or library versions): extract "
            "and train the head again with this installation"
        )
    log.info("parity check passed: max abs difference %.2e on %d images", diff, len(picks))
    return diff


def _batches_class(keras):
    """A ``keras.utils.PyDataset`` of decoded images (defined here: Keras is lazy)."""

    class ImageBatches(keras.utils.PyDataset):
        def __init__(self, listing, records, labels, size, batch_size, shuffle=False, seed=0):
            super().__init__(workers=min(4, os.cpu_count() or 1), use_multiprocessing=False)
            self.listing, self.records, self.labels = listing, records, np.asarray(labels)
            self.size, self.batch_size, self.shuffle = size, batch_size, shuffle
            self.rng = np.random.default_rng(seed)
            self.order = np.arange(len(records))
            self.on_epoch_end()

        def __len__(self) -> int:
            return math.ceil(len(self.records) / self.batch_size)

        def __getitem__(self, index):
            picks = self.order[index * self.batch_size : (index + 1) * self.batch_size]
            pixels = np.stack([self.listing.read(self.records[i], self.size)[1] for i in picks])
            return pixels.astype(np.float32), self.labels[picks]

        def on_epoch_end(self) -> None:
            if self.shuffle:
                self.rng.shuffle(self.order)

    return ImageBatches


def _load_history(path: Path) -> dict[str, list[float]]:
    if path.is_file():
        return json.loads(path.read_text())
    return {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}


def _HistoryWriter(keras, path: Path, history: dict[str, list[float]]):  # noqa: N802
    """A callback appending each epoch's logs to ``history`` and ``path`` (atomically)."""

    class HistoryWriter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            for key in history:
                history[key].append(float((logs or {}).get(key, float("nan"))))
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(history))
            os.replace(tmp, path)

    return HistoryWriter()


def _evaluate(model, listing, records, labels, splits, size, batch_size, class_names):
    from featurecache.metrics import evaluate

    metrics = {}
    for split in ("train", "validation", "test"):
        idx = np.flatnonzero(splits == split)
        if len(idx) == 0:
            continue
        proba = []
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            pixels = np.stack([listing.read(records[i], size)[1] for i in chunk])
            proba.append(np.asarray(model.predict(pixels.astype(np.float32), verbose=0)))
        metrics[split] = evaluate(
            labels[idx], np.concatenate(proba).astype(np.float64), class_names
        )
    return metrics


def _write_outputs(
    out,
    metrics,
    frozen,
    history,
    features,
    backbone,
    ft,
    parity,
    n_trainable,
    head_info,
    group,
) -> None:
    from featurecache.plots import confusion_matrix_png, curves_png

    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    title = f"{features.attrs['dataset']['name']} / {backbone.name} / fine-tuned"
    if history["loss"]:
        curves_png(history, out / "curves.png", title)
    for split, m in metrics.items():
        confusion_matrix_png(
            m["confusion_matrix"],
            features.class_names,
            out / f"confusion_matrix_{split}.png",
            f"{title}\n{split} split: top-1 {m['accuracy']:.3f}",
        )
    table = {
        split: {
            "frozen_head": frozen[split]["accuracy"] if split in frozen else None,
            "finetuned": m["accuracy"],
        }
        for split, m in metrics.items()
    }
    (out / "comparison.json").write_text(json.dumps(table, indent=2))
    lines = [
        "| split | frozen-feature head top-1 | fine-tuned top-1 | change |",
        "| --- | ---: | ---: | ---: |",
    ]
    for split, row in table.items():
        before = row["frozen_head"]
        change = "" if before is None else f"{row['finetuned'] - before:+.3f}"
        shown = "" if before is None else f"{before:.3f}"
        lines.append(f"| {split} | {shown} | {row['finetuned']:.3f} | {change} |")
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    (out / FINETUNE_JSON).write_text(
        json.dumps(
            {
                "kind": "finetuned",
                "model_file": "model.keras",
                "input": "RGB pixels 0-255, float32, (batch, h, w, 3); resized inside to "
                f"{backbone.input_size} px",
                "class_names": features.class_names,
                "backbone": backbone.describe(),
                "weights": features.attrs["weights"],
                "recipe_hash": features.attrs["recipe_hash"],
                "cache_group": group,
                "started_from_head": head_info["name"],
                "finetune": {**asdict(ft), "augment": asdict(ft.augment)},
                "trainable_layers": n_trainable,
                "parity_max_abs_diff": parity,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "versions": recipe.versions(),
            },
            indent=2,
        )
    )
    # `featurecache predict` reads head.json: point it at the whole model.
    (out / "head.json").write_text((out / FINETUNE_JSON).read_text())
