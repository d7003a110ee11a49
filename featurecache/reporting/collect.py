"""Gathering trained heads for ``featurecache report``.

A report is built from what ``train-head`` wrote and nothing else: each head
folder's ``head.json`` (kind, parameters, cross-validation choice, provenance,
timings) and ``metrics.json`` (per split). The numbers in a report are therefore
the numbers on disk, and a report can be rebuilt at any time without the cache
or the backbone.

Targets are pipeline files (their declared data sets x backbones x heads, and
their ``[[references]]``), runs folders (every head under them) or cache folders
(every head under ``runs`` trained from that cache).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featurecache.cache import Cache
from featurecache.config import DEFAULT_OUTPUT, Pipeline, Reference, load_pipeline
from featurecache.deps import backend
from featurecache.errors import ConfigError
from featurecache.runs import AUDIT_DIR, AUDIT_HTML, AUDIT_JSON, HEAD_JSON, HeadRecord, RunLayout

log = logging.getLogger(__name__)


@dataclass
class Block:
    """The heads trained on one data set x backbone (one cache group)."""

    pipeline: str
    source: str | None
    dataset: str
    group: str
    backbone: dict[str, Any]
    heads: list[HeadRecord] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    finetuned: list[HeadRecord] = field(default_factory=list)
    audit: dict[str, Any] | None = None

    @property
    def extraction(self) -> dict[str, Any]:
        return self.heads[0].info.get("extraction", {}) if self.heads else {}

    @property
    def best(self) -> HeadRecord | None:
        """The head or fine-tuned model with the best test top-1 (None if none is tested)."""
        tested = [r for r in [*self.heads, *self.finetuned] if "test" in r.metrics]
        return max(tested, key=lambda r: r.metrics["test"]["accuracy"], default=None)


@dataclass
class Collection:
    """Everything a report shows, in the order given."""

    blocks: list[Block]
    references: dict[str, list[Reference]]
    descriptions: dict[str, str]
    targets: list[str]

    def default_report(self, output: str | Path | None = None) -> Path:
        """Where a report goes unless told: ``<runs>/<pipeline>/report`` for one pipeline,
        else ``<runs>/report``; ``<runs>`` is the runs folder all its heads are in, else
        ``output`` (default ``runs``)."""
        names = {b.pipeline for b in self.blocks}
        outputs = {RunLayout.place(b.heads[0].folder).output for b in self.blocks if b.heads}
        base = outputs.pop() if len(outputs) == 1 else Path(output or DEFAULT_OUTPUT)
        return RunLayout(base, names.pop()).report() if len(names) == 1 else base / "report"


def collect(targets: list[str | Path], *, output: str | Path | None = None) -> Collection:
    """Gather the heads of every target (pipeline file, runs folder or cache folder).

    ``output`` is where ``train-head`` wrote the heads when it was not the
    pipeline's own ``output`` (``run --output``); for a cache folder it is where
    its heads are looked for (default ``runs``).

    Raises
    ------
    ConfigError
        If a target does not exist, is not a pipeline, runs or cache folder, or
        holds no trained head.
    """
    out = Collection(blocks=[], references={}, descriptions={}, targets=[str(t) for t in targets])
    for target in map(Path, targets):
        if target.is_file():
            pipeline = load_pipeline(target, output=output)
            out.blocks.extend(_from_pipeline(pipeline))
            _add_pipeline_notes(out, pipeline)
        elif target.is_dir():
            runs = Path(output or DEFAULT_OUTPUT)
            runs_found = _from_folder(target, runs)
            if not runs_found:
                raise ConfigError(
                    f"no trained heads found for {str(target)!r}: run `featurecache run` or "
                    "`featurecache train-head` first (a cache folder is matched with the heads "
                    f"under --output, here {str(runs)!r})"
                )
            out.blocks.extend(_blocks(runs_found))
            for source in {r.info.get("pipeline", {}).get("source") for r in runs_found}:
                if source and Path(source).is_file():
                    _add_pipeline_notes(out, load_pipeline(source))
        else:
            raise ConfigError(
                f"{str(target)!r} does not exist; give a pipeline file, a runs folder or a cache"
            )
    if not any(b.heads for b in out.blocks):
        raise ConfigError(
            "nothing to report: no trained head was found; run `featurecache run PIPELINE` first"
        )
    return out


def _add_pipeline_notes(out: Collection, pipeline: Pipeline) -> None:
    for dataset in pipeline.datasets:
        refs = [r for r in pipeline.references if r.dataset == dataset.name]
        out.references.setdefault(dataset.name, [])
        out.references[dataset.name].extend(
            r for r in refs if r not in out.references[dataset.name]
        )
        if pipeline.description:
            out.descriptions.setdefault(dataset.name, pipeline.description)


def _same_backbone(record: HeadRecord, wanted: dict) -> bool:
    """The head was trained on the pipeline's backbone, under the current Keras backend
    (a report shows one backend's heads; engine ``tensorflow`` is the name engine
    ``keras`` had before backends were configurable; ``auto`` accepts any engine, as it
    does for the cache's groups)."""
    recorded = record.info.get("backbone")
    if recorded is None:
        return False
    if record.info.get("versions", {}).get("backend", "tensorflow") != backend():
        return False

    def engine(d: dict) -> dict:
        if wanted.get("engine") == "auto":
            return {**d, "engine": "auto"}
        return {**d, "engine": "keras" if d.get("engine") == "tensorflow" else d.get("engine")}

    return engine(recorded) == engine(wanted)


def _from_pipeline(pipeline: Pipeline) -> list[Block]:
    blocks = []
    for dataset in pipeline.datasets:
        for backbone in pipeline.backbones:
            wanted = backbone.describe()
            block = Block(
                pipeline=pipeline.name,
                source=str(pipeline.source) if pipeline.source else None,
                dataset=dataset.name,
                group="",
                backbone=wanted,
            )
            for head in pipeline.heads:
                found = [
                    record
                    for record in RunLayout.of(pipeline).heads_named(dataset.name, head.name)
                    if _same_backbone(record, wanted)
                ]
                if not found:
                    block.missing.append(head.name)
                    continue
                newest = max(found, key=lambda r: r.info.get("created", ""))
                block.heads.append(newest)
                block.group = newest.info["cache"]["group"]
            if block.group:
                folder = RunLayout.of(pipeline).group_dir(dataset.name, block.group)
                block.finetuned = _finetuned_in(folder)
                block.audit = _audit_in(folder)
            if block.missing:
                log.warning(
                    "%s: %s x %s: no trained head %s under %s (run `featurecache run %s`)",
                    pipeline.name,
                    dataset.name,
                    backbone.name,
                    ", ".join(block.missing),
                    pipeline.output,
                    pipeline.source or "PIPELINE",
                )
            blocks.append(block)
    return blocks


def _finetuned_in(folder: Path) -> list[HeadRecord]:
    """The fine-tuned models (from images or the cache: ``finetune-*``) in the runs
    folder of one cache group."""
    found = [HeadRecord.find(path) for path in sorted(folder.glob("finetune-*"))]
    return [r for r in found if r is not None and r.kind == "finetuned" and r.metrics]


def _from_folder(folder: Path, runs: Path) -> list[HeadRecord]:
    """The heads under a runs folder, or (for a cache folder) those under ``runs`` that were
    trained from it; fine-tuned models are not heads on cached features."""
    found = [
        record
        for path in sorted((runs if Cache(folder).exists() else folder).rglob(HEAD_JSON))
        if (record := HeadRecord.find(path.parent))
        and record.kind == "frozen"
        and "cache" in record.info
    ]
    if Cache(folder).exists():
        root = str(folder.resolve())
        found = [r for r in found if r.info.get("cache", {}).get("root") == root]
    return found


def _blocks(runs: list[HeadRecord]) -> list[Block]:
    blocks: dict[tuple[str, str, str], Block] = {}
    for run in runs:
        cache = run.info["cache"]
        pipeline = run.info.get("pipeline", {})
        name = pipeline.get("name") or RunLayout.place(run.folder).pipeline
        key = (name, cache["dataset"], cache["group"])
        block = blocks.setdefault(
            key,
            Block(
                pipeline=name,
                source=pipeline.get("source"),
                dataset=cache["dataset"],
                group=cache["group"],
                backbone=run.info["backbone"],
            ),
        )
        block.heads.append(run)
    for block in blocks.values():
        block.finetuned = _finetuned_in(block.heads[0].folder.parent)
        block.audit = _audit_in(block.heads[0].folder.parent)
    return list(blocks.values())


def _audit_in(folder: Path) -> dict[str, Any] | None:
    """What ``featurecache audit`` found for one cache group (its ``audit.json``'s
    ``result``, with ``page``: the path of ``audit.html``), or None if it was not audited."""
    path = folder / AUDIT_DIR / AUDIT_JSON
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("skipping the audit %s: %s", path, exc)
        return None
    return {
        **saved.get("result", {}),
        "heads_audited": (saved.get("inputs") or {}).get("heads", {}),
        "page": folder / AUDIT_DIR / AUDIT_HTML,
    }
