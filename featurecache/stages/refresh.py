"""``featurecache refresh``: bring caches and heads up to date, unattended.

For each pipeline: extract only what is new or changed (see
:mod:`featurecache.stages.extract`), then retrain only the heads whose inputs
changed: a head is retrained when its folder lacks a model, or when the content
hash it was trained on (keys, labels and splits of the cached rows), its kind or
its parameters differ from now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featurecache.config import Pipeline, load_pipeline
from featurecache.errors import ConfigError
from featurecache.stages.extract import ExtractResult, extract
from featurecache.stages.shards import Cluster
from featurecache.stages.train_head import HeadResult, train_heads

DEFAULT_PIPELINES = Path("pipelines")


def discover(paths: Sequence[str | Path]) -> list[Path]:
    """Pipeline files named by ``paths`` (files, or folders of ``*.toml``);
    every ``pipelines/*.toml`` when ``paths`` is empty.

    Raises
    ------
    ConfigError
        If a path does not exist or no pipeline file is found.
    """
    found: list[Path] = []
    for item in map(Path, paths or [DEFAULT_PIPELINES]):
        if item.is_dir():
            found.extend(sorted(item.glob("*.toml")))
        elif item.is_file():
            found.append(item)
        else:
            raise ConfigError(f"{str(item)!r} is neither a pipeline file nor a folder of them")
    if not found:
        raise ConfigError(
            f"no pipeline files (*.toml) in {', '.join(map(str, paths or [DEFAULT_PIPELINES]))}"
        )
    return found


@dataclass
class RefreshResult:
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


def refresh(
    pipelines: Sequence[Pipeline],
    *,
    progress: bool = False,
    wait: bool = True,
    cluster: Cluster | None = None,
) -> list[RefreshResult]:
    """Refresh every pipeline: incremental extraction (on ``cluster`` if given, see
    :mod:`featurecache.stages.shards`), then changed heads only."""
    results = []
    for pipeline in pipelines:
        extracted = extract(pipeline, progress=progress, wait=wait, cluster=cluster)
        heads = train_heads(pipeline, only_changed=True)
        results.append(RefreshResult(pipeline.name, extracted, heads))
    return results


def load_all(paths: Sequence[str | Path], **overrides: Any) -> list[Pipeline]:
    return [load_pipeline(p, **overrides) for p in discover(paths)]
