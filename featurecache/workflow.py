"""Whole pipelines: ``featurecache run`` (extract, then train every head) and ``refresh``.

``refresh`` is the same for cron: extraction computes only what is new or changed (see
:mod:`featurecache.extraction`), and only the heads whose inputs changed are retrained:
a head is retrained when its folder lacks a model, or when the content hash it was
trained on (keys, labels and splits of the cached rows), its kind or its parameters
differ from now. ``run`` checks the heads before anything is extracted, so a typo in a
head costs seconds, not an extraction; ``refresh`` checks them only when one must be
trained, so that a refresh with nothing to do imports no scikit-learn and stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from featurecache.config import Pipeline
from featurecache.extraction import Cluster, ExtractResult, extract
from featurecache.heads import check_heads
from featurecache.heads.train import HeadResult, train_heads


@dataclass
class RunResult:
    """What one pipeline's run did: its extractions and its heads."""

    pipeline: str
    extract: list[ExtractResult]
    heads: list[HeadResult]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "extract": [r.to_dict() for r in self.extract],
            "heads": [h.to_dict() for h in self.heads],
            "n_extracted": sum(r.n_extracted for r in self.extract),
            "n_heads_trained": sum(h.trained for h in self.heads),
        }


def run_pipeline(
    pipeline: Pipeline,
    *,
    progress: bool = False,
    wait: bool = True,
    cluster: Cluster | None = None,
    only_changed: bool = False,
    on_extracted: Callable[[list[ExtractResult]], None] | None = None,
) -> RunResult:
    """Check the heads, extract (on ``cluster`` if given), then train the heads.

    With ``only_changed`` (``refresh``), heads whose inputs did not change are kept, and
    the heads are checked only if one is trained. ``on_extracted`` is called with the
    extraction results before the heads train.

    Raises
    ------
    ConfigError
        For an invalid head, before any extraction.
    FeaturecacheError
        As :func:`~featurecache.extraction.extract` and
        :func:`~featurecache.heads.train.train_heads` raise.
    """
    if not only_changed:
        check_heads(pipeline.heads)
    extracted = extract(pipeline, progress=progress, wait=wait, cluster=cluster)
    if on_extracted is not None:
        on_extracted(extracted)
    heads = train_heads(pipeline, only_changed=only_changed)
    return RunResult(pipeline.name, extracted, heads)


def refresh(
    pipelines: Sequence[Pipeline],
    *,
    progress: bool = False,
    wait: bool = True,
    cluster: Cluster | None = None,
) -> list[RunResult]:
    """Bring every pipeline up to date: new or changed images only, changed heads only."""
    return [
        run_pipeline(p, progress=progress, wait=wait, cluster=cluster, only_changed=True)
        for p in pipelines
    ]
