"""An audit's files: ``audit.json``, a CSV per finding, ``map.png``, ``thumbs/`` and
``audit.html``, written into a fresh folder that then replaces ``audit/`` whole, so a
reader (or a killed cron run) never sees half of one audit and half of the next."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from featurecache.auditing.findings import Searches
from featurecache.auditing.maps import choose_method, draw_map
from featurecache.auditing.page import render_page
from featurecache.auditing.thumbs import Thumbnails
from featurecache.cache import FeatureSet
from featurecache.config import AuditConfig, DatasetConfig
from featurecache.runs import AUDIT_HTML, AUDIT_JSON

log = logging.getLogger(__name__)

MAP_PNG = "map.png"
#: The CSV of each finding, and the list of records it holds.
CSVS = {
    "leaks.csv": ("leaks",),
    "duplicates.csv": ("duplicates", "pairs"),
    "label_issues.csv": ("label_issues", "issues"),
    "outliers.csv": ("outliers",),
}


def write_audit(
    folder: Path,
    features: FeatureSet,
    searches: Searches,
    findings: dict[str, Any],
    config: AuditConfig,
    dataset: DatasetConfig | None,
    clock: Any,
) -> Path:
    """Write the audit of ``features`` into ``folder``, reusing the thumbnails of the
    audit it replaces; the HTML page's path."""
    with _replacing(folder) as work:
        findings["map"] = _map(work, features, searches, config)
        clock.lap("map")
        thumbs = Thumbnails(dataset, work / "thumbs", previous=folder / "thumbs")
        try:
            _add_thumbnails(findings, thumbs, config.thumbnails)
        finally:
            thumbs.close()
        clock.lap("thumbnails")
        findings["summary"] = _summary(features, findings)
        findings["seconds"] = clock.seconds
        result = findings.pop("result")
        result.seconds = clock.seconds
        saved = {"result": result.to_dict(), **findings}
        (work / AUDIT_JSON).write_text(json.dumps(saved, indent=1))
        for name, path in CSVS.items():
            _write_csv(work / name, _dig(findings, path))
        _write_csv(
            work / "mistakes.csv",
            [{"head": h["head"], **m} for h in findings["heads"] for m in h["mistakes"]],
        )
        (work / AUDIT_HTML).write_text(render_page(findings))
    log.info("audit written to %s", folder)
    return folder / AUDIT_HTML


@contextmanager
def _replacing(folder: Path) -> Iterator[Path]:
    """A fresh folder (one per process) to write an audit into; on success it replaces
    ``folder`` (:func:`_swap`), on failure or Ctrl-C it is removed and the last whole
    audit stays."""
    work = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _swap(work, folder)


def _swap(work: Path, folder: Path) -> None:
    """``work`` becomes ``folder`` by renames only: the old audit is moved aside first
    and removed last, so ``folder`` is always one whole audit (or, for an instant
    between two renames, absent; never half of one)."""
    old = folder.with_name(f"{folder.name}.old-{os.getpid()}")
    if folder.exists():
        folder.rename(old)
    work.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _map(work: Path, features: FeatureSet, searches: Searches, config: AuditConfig) -> str | None:
    if config.map == "none" or len(features) < 10:
        return None
    marks = {
        "leak": searches.duplicates.leaked_rows("test"),
        "label_issue": np.asarray([] if searches.labels is None else searches.labels.flagged),
        "outlier": searches.outliers,
    }
    method = choose_method(config.map)
    draw_map(
        features.X,
        features.y,
        features.class_names,
        marks,
        work / MAP_PNG,
        method=method,
        points=config.map_points,
        seed=config.seed,
    )
    return MAP_PNG


def _add_thumbnails(findings: dict[str, Any], thumbs: Thumbnails, most: int) -> None:
    """A ``thumb`` (path, or null and ``missing``) on the first ``most`` images of each
    finding that the page shows."""
    shown: list[dict[str, Any]] = []
    for leak in findings["leaks"][:most]:
        shown += [leak, leak["train"]]
    for group in findings["duplicates"]["groups"][:most]:
        shown += group[:6]
    shown += findings["label_issues"]["issues"][:most]
    shown += findings["outliers"][:most]
    for head in findings["heads"]:
        shown += head["mistakes"][:most]
    for image in shown:
        made = thumbs.of(image["key"], image["source"])
        image["thumb"] = made.path
        if made.missing:
            image["missing"] = made.missing


def _summary(features: FeatureSet, findings: dict[str, Any]) -> dict[str, Any]:
    return {
        "dataset": features.dataset,
        "backbone": features.backbone,
        "group": features.group,
        "generation": features.generation,
        "n_images": len(features),
        "splits": {s: int((features.split == s).sum()) for s in features.splits},
        "class_names": features.class_names,
        "leaks": len(findings["leaks"]),
        "duplicate_pairs": findings["duplicates"]["n_pairs"],
        "duplicate_groups": len(findings["duplicates"]["groups"]),
        "label_issues": len(findings["label_issues"]["issues"]),
        "outliers": len(findings["outliers"]),
    }


def _dig(findings: dict[str, Any], path: tuple[str, ...]) -> list[dict[str, Any]]:
    value: Any = findings
    for key in path:
        value = value[key]
    return value


def _write_csv(path: Path, records: list[dict[str, Any]]) -> None:
    rows = [_flat(r) for r in records]
    columns = list(dict.fromkeys(c for row in rows for c in row)) or ["key"]
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _flat(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}_"))
        elif key != "thumb":
            out[prefix + key] = value
    return out
