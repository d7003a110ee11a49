"""The runs folder: where every trained head and fine-tuned model goes, and its records.

Layout (``output`` is ``--output`` / the pipeline's ``output``, default ``runs``)::

    <output>/<pipeline>/<dataset>/<cache group>/<head>/            a head trained on features
        model.skops | model.keras, head.json, metrics.json, *.png
    <output>/<pipeline>/<dataset>/<cache group>/finetune-<head>/   a fine-tuned model
        model.keras, finetune.json, metrics.json, history.json, comparison.*, *.png
    <output>/<pipeline>/report.{md,html,json}                      `featurecache report`

:class:`RunLayout` is the only code that builds these paths, and :class:`HeadRecord`
the only code that reads and writes ``head.json`` / ``finetune.json`` and
``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from featurecache.config import Pipeline
from featurecache.errors import ConfigError, FeaturecacheError, OutputError, describe_os_error

log = logging.getLogger(__name__)

HEAD_JSON = "head.json"
FINETUNE_JSON = "finetune.json"
METRICS_JSON = "metrics.json"
FINETUNE_PREFIX = "finetune-"
AUDIT_DIR = "audit"
AUDIT_JSON = "audit.json"
AUDIT_HTML = "audit.html"


class HeadPlace(NamedTuple):
    """Where a head folder sits in the layout."""

    output: Path
    pipeline: str
    dataset: str
    group: str
    head: str


@contextmanager
def output_errors(folder: Path, doing: str = "write results into") -> Iterator[None]:
    """Turn an ``OSError`` while writing under ``folder`` into one :class:`OutputError`
    line naming the path, the cause and the fix (:func:`describe_os_error`). An error
    about a file elsewhere (an input image) passes through unchanged.

    Raises
    ------
    OutputError
        In place of such an ``OSError`` (full disk, read-only file system, ...).
    """
    try:
        yield
    except FeaturecacheError:
        raise
    except OSError as exc:
        inside = Path(os.path.abspath(exc.filename)) if exc.filename else None
        if inside and not inside.is_relative_to(os.path.abspath(folder)):
            raise
        raise OutputError(describe_os_error(exc, f"{doing} {str(folder)!r}")) from exc


@dataclass(frozen=True)
class RunLayout:
    """The results of one pipeline: ``<output>/<pipeline>/...``."""

    output: Path
    pipeline: str

    @classmethod
    def of(cls, pipeline: Pipeline) -> RunLayout:
        return cls(Path(pipeline.output), pipeline.name)

    @property
    def root(self) -> Path:
        return self.output / self.pipeline

    def group_dir(self, dataset: str, group: str) -> Path:
        """Everything made from one cache group: its heads, fine-tuned models, audit."""
        return self.root / dataset / group

    def audit_dir(self, dataset: str, group: str) -> Path:
        """``featurecache audit``'s findings and page for one cache group."""
        return self.group_dir(dataset, group) / AUDIT_DIR

    def head_dir(self, dataset: str, group: str, head: str) -> Path:
        """A head trained on the features of one cache group."""
        return self.root / dataset / group / head

    def finetune_dir(self, dataset: str, group: str, head: str, source: str = "images") -> Path:
        """The model fine-tuned from head ``head`` of that group: ``finetune-<head>`` from
        images, ``finetune-cache-<head>`` from cached activations (both can exist)."""
        kind = "cache-" if source == "cache" else ""
        return self.root / dataset / group / f"{FINETUNE_PREFIX}{kind}{head}"

    def report(self) -> Path:
        """Default path (without suffix) of this pipeline's report."""
        return self.root / "report"

    def heads_named(self, dataset: str, head: str) -> list[HeadRecord]:
        """Every readable head called ``head`` of ``dataset``, whatever its cache group."""
        found = sorted((self.root / dataset).glob(f"*/{head}/{HEAD_JSON}"))
        return [r for path in found if (r := HeadRecord.find(path.parent))]

    @staticmethod
    def place(folder: Path) -> HeadPlace:
        """Where a head (or fine-tuned model) folder sits: the inverse of :meth:`head_dir`."""
        folder = Path(folder)
        return HeadPlace(
            output=folder.parents[3],
            pipeline=folder.parents[2].name,
            dataset=folder.parents[1].name,
            group=folder.parent.name,
            head=folder.name,
        )


@dataclass
class HeadRecord:
    """A head folder's records: ``info`` (``head.json``, or ``finetune.json`` for a
    fine-tuned model) and ``metrics`` (``metrics.json``: one object per split).

    ``kind`` is ``"frozen"`` for a head trained on cached features (``info["kind"]`` is
    then its estimator: ``logistic_regression``, ``dense``, ...) and ``"finetuned"`` for
    a whole fine-tuned model.
    """

    folder: Path
    info: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.info.get("name") or self.folder.name

    @property
    def kind(self) -> str:
        return "finetuned" if self.info.get("kind") == "finetuned" else "frozen"

    @property
    def model_path(self) -> Path:
        return self.folder / self.info["model_file"]

    @classmethod
    def read(cls, folder: str | Path) -> HeadRecord:
        """The records of a head folder written by ``train-head`` or ``finetune``.

        Raises
        ------
        ConfigError
            If ``folder`` holds neither ``head.json`` nor ``finetune.json``, or they are
            not JSON.
        """
        folder = Path(folder)
        # finetune.json first: fine-tuned folders of older versions also hold a copy of it
        # as head.json, which a later fine-tuning run no longer refreshes
        for name in (FINETUNE_JSON, HEAD_JSON):
            if (folder / name).is_file():
                try:
                    info = json.loads((folder / name).read_text())
                    metrics_file = folder / METRICS_JSON
                    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
                except (OSError, ValueError) as exc:
                    raise ConfigError(f"{folder / name}: unreadable: {exc}") from exc
                return cls(folder, info, metrics)
        raise ConfigError(
            f"{str(folder)!r} is not a trained head (no {HEAD_JSON}); give a folder written by "
            "`featurecache train-head` or `featurecache finetune`"
        )

    @classmethod
    def find(cls, folder: Path) -> HeadRecord | None:
        """Like :meth:`read`, but a folder without complete records is logged and skipped."""
        try:
            record = cls.read(folder)
        except ConfigError as exc:
            log.warning("skipping %s: %s", folder, exc)
            return None
        if not record.metrics:
            log.warning("skipping %s: no %s", folder, METRICS_JSON)
            return None
        return record

    def write(self) -> None:
        """Write ``info`` (as ``finetune.json`` for a fine-tuned model, else ``head.json``)
        and ``metrics`` into ``folder``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = FINETUNE_JSON if self.kind == "finetuned" else HEAD_JSON
        (self.folder / name).write_text(json.dumps(self.info, indent=2))
        (self.folder / METRICS_JSON).write_text(json.dumps(self.metrics, indent=2))
