"""What an audit found in one (data set, backbone group), as plain records.

:func:`collect_findings` turns the arrays of the searches (duplicates, label issues,
outliers, head predictions) into the JSON-ready dict that ``audit.json``, the CSVs and
the HTML page are written from; each image is named by its content key, source, split
and class name (never by a row number, which means nothing outside one read).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from featurecache.auditing.duplicates import Duplicates
from featurecache.auditing.labels import LabelIssues
from featurecache.auditing.mistakes import HeadAudit
from featurecache.cache import FeatureSet


@dataclass(frozen=True)
class Searches:
    """The raw results of one audit's searches (see :mod:`featurecache.auditing.run`)."""

    duplicates: Duplicates
    labels: LabelIssues | None
    outliers: np.ndarray  # rows, most outlying first
    outlier_scores: np.ndarray  # float32 (n_images,)
    heads: list[HeadAudit]


class _Images:
    def __init__(self, features: FeatureSet) -> None:
        self.f = features

    def __call__(self, row: int, **extra: Any) -> dict[str, Any]:
        f = self.f
        return {
            "key": str(f.keys[row]),
            "source": str(f.sources[row]),
            "split": str(f.split[row]),
            "label": f.class_names[int(f.y[row])],
            **extra,
        }


def collect_findings(features: FeatureSet, searches: Searches, settings: dict) -> dict[str, Any]:
    """The findings as a dict of lists of image records (``key``, ``source``, ``split``,
    ``label`` and what the finding adds)."""
    image = _Images(features)
    names = features.class_names
    dup = searches.duplicates
    out: dict[str, Any] = {
        "duplicates": {
            "n_pairs": len(dup.pairs),
            "n_exact_pairs": sum(p.exact for p in dup.pairs),
            "pairs": [
                {
                    "a": image(p.a),
                    "b": image(p.b),
                    "similarity": round(p.similarity, 4),
                    "exact": p.exact,
                }
                for p in dup.pairs
            ],
            "groups": [[image(r) for r in group] for group in dup.groups],
        },
        "leaks": [
            {
                **image(leak.row),
                "train": image(leak.train_row),
                "similarity": round(leak.similarity, 4),
                "exact": leak.exact,
            }
            for leak in dup.leaks
        ],
        "outliers": [
            image(int(r), score=round(float(searches.outlier_scores[r]), 4))
            for r in searches.outliers
        ],
        "heads": [_head(h, features, image) for h in searches.heads],
    }
    labels = searches.labels
    if labels is None:
        out["label_issues"] = {
            "skipped": "it needs at least 2 classes of at least 2 images each",
            "issues": [],
        }
    else:
        out["label_issues"] = {
            "folds": labels.folds,
            "out_of_sample_top1": round(labels.top1(features.y), 4),
            "n_flagged": len(labels.flagged),
            "issues": [
                image(
                    int(r),
                    suggested=names[int(labels.suggested[r])],
                    quality=round(float(labels.quality[r]), 4),
                )
                for r in labels.flagged
            ],
        }
    out["settings"] = settings
    return out


def _head(h: HeadAudit, features: FeatureSet, image: _Images) -> dict[str, Any]:
    names = features.class_names
    return {
        "head": h.name,
        "kind": h.kind,
        "folder": str(h.folder),
        "stale": h.stale,
        "accuracy": h.accuracy,
        "n_mistakes": len(h.mistakes),
        "confusions": [
            {"given": names[a], "predicted": names[b], "count": n} for a, b, n in h.pairs
        ],
        "mistakes": [
            image(
                int(h.rows[i]),
                predicted=names[int(h.predicted[i])],
                confidence=round(float(h.confidence[i]), 4),
            )
            for i in h.mistakes
        ],
    }
