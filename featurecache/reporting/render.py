"""The text of ``featurecache report``, as Markdown (written out by
:mod:`featurecache.reporting.write`).

Accuracies are top-1 fractions printed with 3 decimals; intervals are the 95%
percentile-bootstrap intervals stored in ``metrics.json``
(:func:`featurecache.metrics.accuracy_interval`); times are seconds of wall
clock on the machine that ran them.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from featurecache.cache import recipe
from featurecache.config import Reference
from featurecache.reporting.collect import Block, Collection
from featurecache.runs import HeadRecord

SPLIT_ORDER = ("train", "validation", "test")


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _ci(m: dict[str, Any]) -> str:
    low, high = m.get("accuracy_ci95", (None, None))
    return "" if low is None else f"[{low:.3f}, {high:.3f}]"


def _secs(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.1f} s" if value < 600 else f"{value / 60:.1f} min"


def _params(run: HeadRecord) -> str:
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


def _our_figure(run: HeadRecord, ref: Reference) -> tuple[float | None, str]:
    """Our accuracy on the reference's split, else on test (said in the note)."""
    if ref.split in run.metrics:
        return run.metrics[ref.split]["accuracy"], ref.split
    if "test" in run.metrics:
        return run.metrics["test"]["accuracy"], "test"
    return None, ""


def _versus(best: HeadRecord | None, ref: Reference) -> str:
    """``0.860 small CNN (+0.140)``: a published figure and our best head's difference."""
    ours, split = _our_figure(best, ref) if best else (None, "")
    notes = [] if ours is None else [f"{ours - ref.value:+.3f}"]
    if split and split != ref.split:
        notes.append(f"theirs on {ref.split}, ours on {split}")
    if not ref.comparable:
        notes.append("not like for like")
    return f"{ref.value:g} {ref.model} ({', '.join(notes)})"


class _Writer:
    """Builds the Markdown text; ``image`` decides how a figure is referenced."""

    def __init__(self, image: Callable[[Path, str], str], base: Path | None = None) -> None:
        self.lines: list[str] = []
        self.image = image
        self.base = base

    def link(self, path: Path, text: str) -> str:
        """A Markdown link to ``path``, relative to the report's folder when known."""
        target = Path(os.path.relpath(path, self.base)) if self.base else path
        return f"[{text}]({target.as_posix()})"

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, header: list[str], rows: list[list[str]], align: str = "") -> None:
        align = align or "l" + "r" * (len(header) - 1)
        self.add("| " + " | ".join(header) + " |")
        self.add("| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |")
        for row in rows:
            self.add("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
        self.add("")


def render(
    collection: Collection,
    image: Callable[[Path, str], str],
    plots: dict[int, Path],
    base: Path | None = None,
) -> str:
    """The report as Markdown; ``plots`` are :func:`draw_plots`' figures; links to other
    pages (the audit's) are relative to ``base``, the report's folder."""
    w = _Writer(image, base)
    _preamble(w, collection)
    _summary(w, collection)
    for index, block in enumerate(collection.blocks):
        _block(w, collection, block, plots.get(index))
    return "\n".join(w.lines) + "\n"


def _preamble(w: _Writer, collection: Collection) -> None:
    """The title, and what produced the report with which versions."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    versions = recipe.versions()
    backend = str(versions["backend"])
    w.add(
        "# featurecache results",
        "",
        f"Generated {now} by `featurecache report {' '.join(collection.targets)}` "
        f"(featurecache {versions['featurecache']}, Keras {versions['keras']} on "
        f"{backend} {versions[backend]}; {platform.machine()}, "
        f"Python {platform.python_version()}). "
        "Every number below is read from the `metrics.json` and `head.json` that "
        "`featurecache train-head` wrote; accuracies are top-1 fractions, intervals 95% "
        "percentile-bootstrap intervals of test top-1 (2,000 resamples of the test images).",
        "",
    )


def _summary(w: _Writer, collection: Collection) -> None:
    """One row per data set x backbone: its best head, against the write-ups, and times."""
    w.add("## Summary", "")
    summary = []
    for block in collection.blocks:
        best = block.best
        test = best.metrics["test"] if best else {}
        summary.append(
            [
                block.dataset,
                block.backbone["name"],
                _label(best) if best else "-",
                f"{_pct(test.get('accuracy'))} {_ci(test)}" if test else "-",
                _without_leak(block, best),
                _pct(test.get("balanced_accuracy")),
                "<br>".join(_versus(best, r) for r in collection.references.get(block.dataset, [])),
                _secs(block.extraction.get("seconds")),
                _secs(sum(r.info.get("train_seconds", 0.0) for r in block.heads)),
                ", ".join(f"{_label(r)} {_secs(r.info.get('seconds'))}" for r in block.finetuned)
                or "-",
            ]
        )
    w.table(
        [
            "data set",
            "backbone",
            "best head",
            "test top-1 [95% CI]",
            "without leaked test images",
            "balanced acc.",
            "write-up figures (ours - theirs)",
            "extraction",
            "all heads",
            "fine-tuning",
        ],
        summary,
        "lllrrrlrrl",
    )


def _block(w: _Writer, collection: Collection, block: Block, plot: Path | None) -> None:
    b = block.backbone
    w.add(
        f"## {block.dataset} x {b['name']}",
        "",
    )
    if collection.descriptions.get(block.dataset):
        w.add(collection.descriptions[block.dataset], "")
    _references(w, collection.references.get(block.dataset, []))
    if not block.heads:
        w.add(f"No trained head found (missing: {', '.join(block.missing)}).", "")
        return
    if plot is not None:
        w.add(w.image(plot, f"test top-1 of {block.dataset}"), "")
    w.add(*_facts(block))
    if block.missing:
        w.add(f"- Not trained yet: {', '.join(block.missing)}.")
    w.add("")
    _audit(w, block)
    for run in block.heads:
        _head(w, run)
    for run in block.finetuned:
        _finetuned(w, run)


def _without_leak(block: Block, run: HeadRecord | None) -> str:
    """``run``'s test top-1 without the test images the audit found in train; ``-`` where
    there is no audit (or ``run`` is a fine-tuned model, which it does not run)."""
    found = [a for a in (block.audit or {}).get("accuracy", []) if run and a["head"] == run.name]
    if not found or run is None or run.kind != "frozen" or found[0]["without_leak"] is None:
        return "-"
    if not _audited_as_is(block, run):
        return "- (audited before this head was trained)"
    return f"{_pct(found[0]['without_leak'])} ({found[0]['n_leaked']} left out)"


def _audited_as_is(block: Block, run: HeadRecord) -> bool:
    """Whether the audit ran the head as it is now (not an earlier training of it)."""
    audited = (block.audit or {}).get("heads_audited", {})
    return audited.get(run.folder.name) == run.info.get("created")


def _audit(w: _Writer, block: Block) -> None:
    """The audit's findings and each head's top-1 with and without the leak."""
    audit = block.audit
    if not audit:
        w.add(f"Not audited yet: `featurecache audit {block.source or 'PIPELINE'}`.", "")
        return
    c = audit["counts"]
    w.add(
        "### Audit",
        "",
        f"{w.link(audit['page'], 'The audit page')} (thumbnails, a map of the embeddings): "
        f"{c['leaks']} held-out images with a duplicate in train, {c['duplicate_pairs']} duplicate "
        f"pairs in {c['duplicate_groups']} groups, {c['label_issues']} likely label errors, "
        f"{c['outliers']} outliers.",
        "",
    )
    current = {r.name: _audited_as_is(block, r) for r in block.heads}
    if audit["accuracy"]:
        w.table(
            ["head", "test top-1", "without leaked test images", "leaked test images"],
            [
                [
                    a["head"] if current.get(a["head"], True) else f"{a['head']} (retrained since)",
                    _pct(a["test"]),
                    _pct(a["without_leak"]),
                    f"{a['n_leaked']} of {a['n_test']}",
                ]
                for a in audit["accuracy"]
            ],
        )


def _label(run: HeadRecord) -> str:
    """A head's name, or how a fine-tuned model was made: ``fine-tuned from the cache``."""
    if run.kind != "finetuned":
        return run.name
    return f"fine-tuned from the {run.info.get('source', 'images')} ({run.name})"


def _parity(value: float | None) -> str:
    return "not checked" if value is None else f"{value:.1e}"


def _finetuned(w: _Writer, run: HeadRecord) -> None:
    """A fine-tuned model: how it was trained, its time, and its metrics like a head's."""
    info, ft = run.info, run.info.get("finetune", {})
    source = info.get("source", "images")
    what = (
        f"the layers after `{info.get('finetune_from')}` and the head, trained from the "
        f"cached activation maps (views: {', '.join(info.get('views', ['identity']))})"
        if source == "cache"
        else f"the last block ({info.get('trainable_layers')} layers) and the head, trained "
        "on decoded images"
    )
    w.add(
        f"### {_label(run)}",
        "",
        f"Starting from head `{info.get('started_from_head')}`: {what}; "
        f"{ft.get('optimizer', 'sgd')} at learning rate {ft.get('learning_rate')}, batch "
        f"{ft.get('batch_size')}, up to {ft.get('epochs')} epochs; parity max abs difference "
        f"{_parity(info.get('parity_max_abs_diff'))}. Took "
        f"{_secs(info.get('seconds'))} on {info.get('created', '?')}; `{run.folder}`.",
        "",
    )
    _metrics(w, run)


def _references(w: _Writer, refs: list[Reference]) -> None:
    """The published figures of a data set, as a table with the notes under it."""
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


def _facts(block: Block) -> list[str]:
    """Backbone, extraction, how to reproduce, provenance: one bullet each."""
    b = block.backbone
    ext = block.extraction
    first = block.heads[0].info
    computed = ext.get("n_computed")
    how = (
        f"{computed} computed, {ext.get('n_images', 0) - computed} reused from the cache"
        if computed is not None
        else "computed"
    )
    return [
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
    ]


def _head(w: _Writer, run: HeadRecord) -> None:
    info = run.info
    w.add(
        f"### {run.name} ({info['kind']})",
        "",
        f"Parameters: {_params(run)}. {_inputs(info)}Trained in "
        f"{_secs(info.get('train_seconds'))} on {info.get('created', '?')}; `{run.folder}`.",
        "",
    )
    _metrics(w, run)


def _inputs(info: dict) -> str:
    """What a head was trained on, when more than the final features of each image."""
    said = []
    if info.get("taps"):
        said.append(f"Inputs: the final features and the pooled taps {', '.join(info['taps'])}")
    if "flip" in info.get("views", []):
        said.append(
            "Views: trained on each image and its horizontal flip, predictions averaged over both"
        )
    return "".join(f"{s}. " for s in said)


def _metrics(w: _Writer, run: HeadRecord) -> None:
    """Per-split metrics, then the test confusion matrix and the curves."""
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
