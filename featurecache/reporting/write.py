"""Writing ``featurecache report``: one Markdown file, the same as HTML, and JSON.

The Markdown links its figures (copied next to it into ``<name>_files/``), so it reads
well on GitHub; the HTML embeds them (base64), so it is one file to mail or open
offline. Both come from the same text (:func:`featurecache.reporting.render.render`): the
HTML is the Markdown converted by Python-Markdown. ``<name>.json`` holds every number
shown, as read from each head's ``metrics.json``.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featurecache.reporting.collect import Collection
from featurecache.reporting.render import render
from featurecache.runs import HeadRecord, output_errors

log = logging.getLogger(__name__)

MAX_FIGURE_PX = 1400  # wider figures (50-class confusion matrices) are scaled down


def _figure_png(path: Path) -> bytes:
    """The figure's PNG bytes, scaled down (Lanczos) to at most ``MAX_FIGURE_PX`` wide."""
    from PIL import Image

    with Image.open(path) as image:
        if image.width <= MAX_FIGURE_PX:
            return path.read_bytes()
        height = round(image.height * MAX_FIGURE_PX / image.width)
        buffer = io.BytesIO()
        image.resize((MAX_FIGURE_PX, height), Image.Resampling.LANCZOS).save(
            buffer, "PNG", optimize=True
        )
        return buffer.getvalue()


def draw_plots(collection: Collection, figures: Path) -> dict[int, Path]:
    """Each block's bar plot of test top-1 per head against the published figures,
    drawn into ``figures``; keyed by the block's index (blocks without a tested head
    have none)."""
    from featurecache.plots import accuracy_bars_png

    plots = {}
    for index, block in enumerate(collection.blocks):
        rows = [
            (
                r.name,
                r.metrics["test"]["accuracy"],
                # runs from before intervals were computed: no whisker
                *r.metrics["test"].get("accuracy_ci95", [r.metrics["test"]["accuracy"]] * 2),
            )
            for r in block.heads
            if "test" in r.metrics
        ]
        if rows:
            plots[index] = accuracy_bars_png(
                rows,
                [
                    (f"{r.model}: {r.value:g} ({r.split})", r.value)
                    for r in collection.references.get(block.dataset, [])
                ],
                figures / f"accuracy-{index}-{block.dataset}.png",
                f"{block.dataset} / {block.backbone['name']}",
            )
    return plots


@dataclass
class ReportResult:
    """What :func:`featurecache.api.report` wrote: the collected heads and the files
    (``markdown``, ``html``, ``json``, plots)."""

    collection: Collection
    files: dict[str, Path]

    def to_dict(self) -> dict[str, Any]:
        """Every number of the report, and the files (``report --json``)."""
        return {**to_json(self.collection), "files": {k: str(v) for k, v in self.files.items()}}


def write_report(collection: Collection, out: Path) -> dict[str, Path]:
    """Write ``out``.md, ``out``.html and ``out``.json (figures in ``out``_files/).

    Returns the paths written, by kind (``markdown``, ``html``, ``json``).

    Raises
    ------
    OutputError
        If the folder cannot be written (full disk, read-only, ...): one line.
    """
    with output_errors(Path(out).parent, "write the report into"):
        return _write(collection, Path(out))


def _write(collection: Collection, out: Path) -> dict[str, Path]:
    import markdown

    out.parent.mkdir(parents=True, exist_ok=True)
    files = out.parent / f"{out.name}_files"
    if files.exists():
        shutil.rmtree(files)
    files.mkdir()
    copied: dict[Path, str] = {}

    def linked(path: Path, alt: str) -> str:
        if path not in copied:
            target = path  # the plots are drawn in files/ already
            if path.parent != files:  # head figures: numbered, as names repeat across heads
                n = sum(p.parent != files for p in copied)
                target = files / f"{n:03d}-{path.name}"
                target.write_bytes(_figure_png(path))
            copied[path] = target.relative_to(out.parent).as_posix()
        return f"![{alt}]({copied[path]})"

    def embedded(path: Path, alt: str) -> str:
        linked(path, alt)  # the copy already holds the scaled-down figure
        data = base64.b64encode((out.parent / copied[path]).read_bytes()).decode()
        return f"![{alt}](data:image/png;base64,{data})"

    plots = draw_plots(collection, files)
    text = render(collection, linked, plots, out.parent)
    html_body = markdown.markdown(
        render(collection, embedded, plots, out.parent), extensions=["tables", "fenced_code"]
    )
    html = (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>featurecache results</title>"
        "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
        "padding:.2em .5em}img{max-width:100%}code{background:#f4f4f4}</style></head><body>\n"
        f"{html_body}\n</body></html>\n"
    )
    paths = {"markdown": out.with_suffix(".md"), "html": out.with_suffix(".html")}
    paths["json"] = out.with_suffix(".json")
    paths["markdown"].write_text(text)
    paths["html"].write_text(html)
    paths["json"].write_text(json.dumps(to_json(collection), indent=2))
    log.info("report: %s, %s (%d figures)", paths["markdown"], paths["html"], len(copied))
    return paths


def to_json(collection: Collection) -> dict[str, Any]:
    """Every number of the report, as read from disk (``<name>.json``): per data set x
    backbone, its heads' and its fine-tuned models' records and metrics, and which of
    them the summary names best."""
    return {
        "targets": collection.targets,
        "blocks": [
            {
                "pipeline": b.pipeline,
                "source": b.source,
                "dataset": b.dataset,
                "group": b.group,
                "backbone": b.backbone,
                "extraction": b.extraction,
                "missing": b.missing,
                "references": [r.__dict__ for r in collection.references.get(b.dataset, [])],
                "best": {"name": b.best.name, "kind": b.best.kind} if b.best else None,
                "heads": [_head_json(r) for r in b.heads],
                "finetuned": [_finetuned_json(r) for r in b.finetuned],
                "audit": {**b.audit, "page": str(b.audit["page"])} if b.audit else None,
            }
            for b in collection.blocks
        ],
    }


#: The per-split numbers a report shows (of ``metrics.json``'s).
SHOWN_METRICS = ("n_images", "accuracy", "accuracy_ci95", "balanced_accuracy", "log_loss")


def _metrics_json(run: HeadRecord) -> dict[str, dict[str, Any]]:
    return {split: {k: m[k] for k in SHOWN_METRICS if k in m} for split, m in run.metrics.items()}


def _head_json(run: HeadRecord) -> dict[str, Any]:
    """A head on cached features: its kind, folder, time, parameters search and metrics."""
    return {
        "name": run.name,
        "kind": run.info["kind"],
        "folder": str(run.folder),
        "train_seconds": run.info.get("train_seconds"),
        "search": run.info.get("search") or None,
        "metrics": _metrics_json(run),
    }


def _finetuned_json(run: HeadRecord) -> dict[str, Any]:
    """A fine-tuned model (``finetune.json``): how it was trained, its time and metrics."""
    info = run.info
    return {
        "name": run.name,
        "kind": "finetuned",
        "source": info.get("source", "images"),
        "folder": str(run.folder),
        "seconds": info.get("seconds"),
        "started_from_head": info.get("started_from_head"),
        "finetune_from": info.get("finetune_from"),
        "trainable_layers": info.get("trainable_layers"),
        "views": info.get("views"),
        "finetune": info.get("finetune"),
        "parity_max_abs_diff": info.get("parity_max_abs_diff"),
        "created": info.get("created"),
        "metrics": _metrics_json(run),
    }
