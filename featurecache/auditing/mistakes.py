"""The trained heads' mistakes on the test split, and their accuracy without the leak.

Every head that ``train-head`` wrote for a (data set, backbone group) is loaded and run
on the cached test features (class probabilities averaged over the image and its flip
when the head was trained with views, as ``metrics.json`` was computed). Its mistakes
are the test images whose most probable class is not the given one, the most confident
first; the confusion pairs (given, predicted) are counted and the pairs that make up
most of the errors reported. Fine-tuned models need images, not features: they are not
audited here.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featurecache.cache import Cache, FeatureSet
from featurecache.heads import predict_proba
from featurecache.heads.files import load_model
from featurecache.runs import HEAD_JSON, HeadRecord

log = logging.getLogger(__name__)

#: Confusion pairs reported: the most frequent, up to this many.
TOP_PAIRS = 10


@dataclass(frozen=True)
class HeadAudit:
    """One head's test predictions, read back against the audit's findings.

    ``rows`` are the FeatureSet rows of the test split (int64, (n_test,)), ``predicted``
    their most probable class and ``confidence`` its probability (float32); ``mistakes``
    the positions in ``rows`` of the wrong ones, most confident first; ``pairs`` the
    most frequent ``(given, predicted, count)``; ``stale`` is set when the head was
    trained on other rows than the cache's current generation.
    """

    name: str
    kind: str
    folder: Path
    rows: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray
    mistakes: np.ndarray
    pairs: list[tuple[int, int, int]]
    stale: bool
    accuracy: dict[str, Any] = field(default_factory=dict)


def audit_heads(
    cache: Cache, features: FeatureSet, group_dir: Path, leaked: np.ndarray
) -> list[HeadAudit]:
    """Every frozen head under ``group_dir`` (``runs/<pipeline>/<dataset>/<group>``),
    run on the test rows of ``features``; ``leaked`` holds the test rows with a
    duplicate in train (FeatureSet row numbers), left out of ``accuracy["without_leak"]``."""
    if "test" not in features.splits:
        return []
    # the rows as the audit read them serve the heads without taps or views
    read = {((), features.flipped is not None): features}
    out = []
    for info_file in sorted(group_dir.glob(f"*/{HEAD_JSON}")):
        record = HeadRecord.find(info_file.parent)
        if record is None or record.kind != "frozen":
            continue
        taps = tuple(record.info.get("taps", ()))
        flipped = "flip" in record.info.get("views", ())
        if (taps, flipped) not in read:
            read[taps, flipped] = cache.read(
                features.dataset, features.group, taps=taps, flipped=flipped
            )
        out.append(_audit_head(record, read[taps, flipped], leaked))
    return out


def _audit_head(record: HeadRecord, features: FeatureSet, leaked: np.ndarray) -> HeadAudit:
    n_classes = len(features.class_names)
    head = load_model(record.model_path)
    rows = np.flatnonzero(features.split == "test")
    proba = predict_proba(head, features.X[rows], n_classes)
    if features.flipped is not None:
        proba = (proba + predict_proba(head, features.flipped[rows], n_classes)) / 2
    predicted = np.argmax(proba, axis=1)
    confidence = proba[np.arange(len(rows)), predicted].astype(np.float32)
    given = features.y[rows]
    wrong = np.flatnonzero(predicted != given)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
    pairs = Counter(zip(given[wrong].tolist(), predicted[wrong].tolist(), strict=True))
    clean = ~np.isin(rows, leaked)
    stale = record.info.get("content_hash") != features.provenance.get("content_hash")
    if stale:
        log.warning("%s was trained on other rows than the cache holds now", record.folder)
    return HeadAudit(
        name=record.name,
        kind=str(record.info.get("kind", "")),
        folder=record.folder,
        rows=rows,
        predicted=predicted,
        confidence=confidence,
        mistakes=wrong,
        pairs=[(a, b, n) for (a, b), n in pairs.most_common(TOP_PAIRS)],
        stale=stale,
        accuracy={
            "test": _top1(predicted, given),
            "without_leak": _top1(predicted[clean], given[clean]),
            "n_test": int(len(rows)),
            "n_leaked": int((~clean).sum()),
        },
    )


def _top1(predicted: np.ndarray, given: np.ndarray) -> float | None:
    return float((predicted == given).mean()) if len(given) else None
