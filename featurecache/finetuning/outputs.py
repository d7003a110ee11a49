"""What a fine-tuning run leaves in its folder, beside ``model.keras``, and what it
returns (:class:`FinetuneResult`, printed by ``finetune --json``).

``finetune.json`` and ``metrics.json`` (a :class:`featurecache.runs.HeadRecord` of kind
``finetuned``, same form as train-head's), ``curves.png``, a confusion matrix per split,
and ``comparison.md`` / ``comparison.json``: the frozen-feature head and the fine-tuned
model side by side on the same splits.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from featurecache.plots import confusion_matrix_png, curves_png
from featurecache.runs import HeadRecord


@dataclass
class FinetuneResult:
    """One fine-tuned model; ``--json`` prints these. ``seconds`` is wall time; the
    accuracies are top-1 per split, before (frozen-feature head) and after.
    ``parity_max_abs_diff`` is in probabilities (0-1), ``None`` when no image could be
    compared; ``source`` is ``"images"`` or ``"cache"``."""

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


def write_outputs(
    record: HeadRecord, frozen: dict[str, Any], history: dict[str, list[float]], title: str
) -> None:
    """Write ``record`` (``finetune.json``, ``metrics.json``), the plots and the comparison
    with ``frozen`` (the starting head's ``metrics.json``)."""
    record.write()
    out, metrics = record.folder, record.metrics
    if history["loss"]:
        curves_png(history, out / "curves.png", title)
    for split, m in metrics.items():
        confusion_matrix_png(
            m["confusion_matrix"],
            record.info["class_names"],
            out / f"confusion_matrix_{split}.png",
            f"{title}\n{split} split: top-1 {m['accuracy']:.3f}",
        )
    _comparison(out, metrics, frozen)


def _comparison(out: Path, metrics: dict[str, Any], frozen: dict[str, Any]) -> None:
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
