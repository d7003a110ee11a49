"""Render ``featurecache report``: one Markdown file, the same as HTML, and JSON.

The Markdown links its figures (copied next to it into ``<name>_files/``), so
it reads well on GitHub; the HTML embeds them (base64), so it is one file to mail
or open offline. Both come from the same text: the HTML is the Markdown converted
by Python-Markdown. ``<name>.json`` holds every number shown, as read from each
head's ``metrics.json``.

Accuracies are top-1 fractions printed with 3 decimals; intervals are the 95%
percentile-bootstrap intervals stored in ``metrics.json``
(:func:`featurecache.metrics.accuracy_interval`); times are seconds of wall
clock on the machine that ran them.
"""

from __future__ import annotations

import base64
import json
import logging
import platform
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from featurecache import recipe
from featurecache.config import Reference
from featurecache.stages.report import Block, Collection, HeadRun

log = logging.getLogger(__name__)

SPLIT_ORDER = ("train", "validation", "test")
MAX_FIGURE_PX = 1400  # wider figures (50-class confusion matrices) are scaled down


def _figure_png(path: Path) -> bytes:
    """The figure's PNG bytes, scaled down (Lanczos) to at most ``MAX_FIGURE_PX`` wide."""
    import io

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


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _ci(m: dict[str, Any]) -> str:
    low, high = m.get("accuracy_ci95", (None, None))
    return "" if low is None else f"[{low:.3f}, {high:.3f}]"


def _secs(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.1f} s" if value < 600 else f"{value / 60:.1f} min"


def _params(run: HeadRun) -> str:
    search = run.info.get("search") or {}
    given = dict(run.info.get("params", {}))
    if search:
        chosen = ", ".join(f"{k}={v}" for k, v in search["best_params"].items())
        grid = "; ".join(
            f"{k} in {v}"
            for k, v in (search.get("grid_given") or {}).items()
            if k != "search_samples"
        )
        n = search.get("n_searched")
        sample = f", a stratified sample of {n} training images" if n else ""
        fixed = f", fixed {given}" if given else ""
        return (
            f"{chosen} (chosen by {search['cv']}-fold stratified cross-validation on train"
            f"{sample}, over {grid}: CV top-1 {search['best_cv_accuracy']:.3f}{fixed})"
        )
    return ", ".join(f"{k}={v}" for k, v in given.items()) or "defaults"


def _our_figure(run: HeadRun, ref: Reference) -> tuple[float | None, str]:
    """Our accuracy on the reference's split, else on test (said in the note)."""
    if ref.split in run.metrics:
        return run.metrics[ref.split]["accuracy"], ref.split
    if "test" in run.metrics:
        return run.metrics["test"]["accuracy"], "test"
    return None, ""


def _versus(best: HeadRun | None, ref: Reference) -> str:
    """``0.860 small CNN (+0.140)``: a published figure and our best head's difference."""
    ours, split = _our_figure(best, ref) if best else (None, "")
    notes = [] if ours is None else [f"{ours - ref.value:+.3f}"]
    if split and split != ref.split:
        notes.append(f"theirs on {ref.split}, ours on {split}")
    if not ref.comparable:
        notes.append("not like for like")
    return f"{ref.value:g} {ref.model} ({', '.join(notes)})"


def _best(block: Block) -> HeadRun | None:
    tested = [r for r in block.heads if "test" in r.metrics]
    return max(tested, key=lambda r: r.metrics["test"]["accuracy"], default=None)


class _Writer:
    """Builds the Markdown text; ``image`` decides how a figure is referenced."""

    def __init__(self, image: Callable[[Path, str], str]) -> None:
        self.lines: list[str] = []
        self.image = image

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, header: list[str], rows: list[list[str]], align: str = "") -> None:
        align = align or "l" + "r" * (len(header) - 1)
        self.add("| " + " | ".join(header) + " |")
        self.add("| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |")
        for row in rows:
            self.add("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
        self.add("")


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


def render(
    collection: Collection, image: Callable[[Path, str], str], plots: dict[int, Path]
) -> str:
    """The report as Markdown; ``plots`` are :func:`draw_plots`' figures."""
    w = _Writer(image)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    versions = recipe.versions()
    w.add(
        "# featurecache results",
        "",
        f"Generated {now} by `featurecache report {' '.join(collection.targets)}` "
        f"(featurecache {versions['featurecache']}, Keras {versions['keras']}, TensorFlow "
        f"{versions['tensorflow']}; {platform.machine()}, Python {platform.python_version()}). "
        "Every number below is read from the `metrics.json` and `head.json` that "
        "`featurecache train-head` wrote; accuracies are top-1 fractions, intervals 95% "
        "percentile-bootstrap intervals of test top-1 (2,000 resamples of the test images).",
        "",
        "## Summary",
        "",
    )
    summary = []
    for block in collection.blocks:
        best = _best(block)
        test = best.metrics["test"] if best else {}
        summary.append(
            [
                block.dataset,
                block.backbone["name"],
                best.name if best else "-",
                f"{_pct(test.get('accuracy'))} {_ci(test)}" if test else "-",
                _pct(test.get("balanced_accuracy")),
                "<br>".join(_versus(best, r) for r in collection.references.get(block.dataset, [])),
                _secs(block.extraction.get("seconds")),
                _secs(sum(r.info.get("train_seconds", 0.0) for r in block.heads)),
            ]
        )
    w.table(
        [
            "data set",
            "backbone",
            "best head",
            "test top-1 [95% CI]",
            "balanced acc.",
            "write-up figures (ours - theirs)",
            "extraction",
            "all heads",
        ],
        summary,
        "lllrrlrr",
    )
    for index, block in enumerate(collection.blocks):
        _block(w, collection, block, plots.get(index))
    return "\n".join(w.lines) + "\n"


def _block(w: _Writer, collection: Collection, block: Block, plot: Path | None) -> None:
    b = block.backbone
    w.add(
        f"## {block.dataset} x {b['name']}",
        "",
    )
    if collection.descriptions.get(block.dataset):
        w.add(collection.descriptions[block.dataset], "")
    refs = collection.references.get(block.dataset, [])
    if refs:
        w.add("Published figures (the write-up's own numbers):", "")
        w.table(
            ["source", "model", "split", "top-1", "like for like?"],
            [
                [
                    r.source,
                    r.model,
                    r.split,
                    f"{r.value:g}",
                    "yes" if r.comparable else f"no: {r.note}",
                ]
                for r in refs
            ],
            "lllrl",
        )
        notes = [r.note for r in refs if r.comparable and r.note]
        for note in notes:
            w.add(f"- {note}")
        if notes:
            w.add("")
    if not block.heads:
        w.add(f"No trained head found (missing: {', '.join(block.missing)}).", "")
        return
    if plot is not None:
        w.add(w.image(plot, f"test top-1 of {block.dataset}"), "")
    ext = block.extraction
    first = block.heads[0].info
    computed = ext.get("n_computed")
    how = (
        f"{computed} computed, {ext.get('n_images', 0) - computed} reused from the cache"
        if computed is not None
        else "computed"
    )
    w.add(
        f"- Backbone: {b['name']} ({b.get('weights')} weights), {b.get('input_size')} px input, "
        f"{b.get('pooling')} pooling, {first.get('feature_dim')}-d bottleneck features, engine "
        f"{ext.get('engine') or b.get('engine')}.",
        f"- Extraction (once, shared by every head): {ext.get('n_images')} images ({how}) in "
        f"{_secs(ext.get('seconds'))}; heads: "
        + ", ".join(f"{r.name} {_secs(r.info.get('train_seconds'))}" for r in block.heads)
        + ".",
        f"- Reproduce: `featurecache run {block.source or 'PIPELINE'}`"
        + (f" (pipeline `{block.pipeline}`)" if block.pipeline else "")
        + ".",
        f"- Provenance: cache group `{block.group}`, recipe `{first.get('recipe_hash', '')[:16]}`, "
        f"weights sha256 `{(first.get('weights', {}).get('sha256') or 'none')[:16]}`, "
        f"rows `{(first.get('content_hash') or '')[:16]}`, features extracted "
        f"{ext.get('created', '?')}.",
    )
    if block.missing:
        w.add(f"- Not trained yet: {', '.join(block.missing)}.")
    w.add("")
    for run in block.heads:
        _head(w, run)


def _head(w: _Writer, run: HeadRun) -> None:
    info = run.info
    w.add(
        f"### {run.name} ({info['kind']})",
        "",
        f"Parameters: {_params(run)}. Trained in {_secs(info.get('train_seconds'))} on "
        f"{info.get('created', '?')}; `{run.folder}`.",
        "",
    )
    rows = []
    for split in sorted(run.metrics, key=lambda s: SPLIT_ORDER.index(s)):
        m = run.metrics[split]
        rows.append(
            [
                split,
                str(m["n_images"]),
                _pct(m["accuracy"]),
                _ci(m),
                _pct(m["balanced_accuracy"]),
                f"{m['log_loss']:.3f}",
            ]
        )
    w.table(["split", "images", "top-1", "95% CI", "balanced acc.", "log loss"], rows)
    shown = "test" if "test" in run.metrics else next(iter(run.metrics))
    figures = [run.folder / f"confusion_matrix_{shown}.png", run.folder / "curves.png"]
    for path in figures:
        if path.is_file():
            w.add(w.image(path, f"{path.stem} of {run.name}"), "")


def write_report(collection: Collection, out: Path) -> dict[str, Path]:
    """Write ``out``.md, ``out``.html and ``out``.json (figures in ``out``_files/).

    Returns the paths written, by kind (``markdown``, ``html``, ``json``).
    """
    import markdown

    out = Path(out)
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
    text = render(collection, linked, plots)
    html_body = markdown.markdown(
        render(collection, embedded, plots), extensions=["tables", "fenced_code"]
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
    """Every number of the report, as read from disk (``<name>.json``)."""
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
                "heads": [
                    {
                        "name": r.name,
                        "kind": r.info["kind"],
                        "folder": str(r.folder),
                        "train_seconds": r.info.get("train_seconds"),
                        "search": r.info.get("search") or None,
                        "metrics": {
                            s: {
                                k: m[k]
                                for k in (
                                    "n_images",
                                    "accuracy",
                                    "accuracy_ci95",
                                    "balanced_accuracy",
                                    "log_loss",
                                )
                                if k in m
                            }
                            for s, m in r.metrics.items()
                        },
                    }
                    for r in b.heads
                ],
            }
            for b in collection.blocks
        ],
    }
