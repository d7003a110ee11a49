"""Whole pipelines: ``featurecache run`` (extract, then train every head), ``refresh`` and
``verify`` (check every byte of the caches, and repair what it can).

``refresh`` is the same for cron: extraction computes only what is new or changed (see
:mod:`featurecache.extraction`), and only the heads whose inputs changed are retrained:
a head is retrained when its folder lacks a model, or when the content hash it was
trained on (keys, labels and splits of the cached rows), its kind or its parameters
differ from now. Both check the heads before anything is extracted, so a typo in a
head costs seconds, not an extraction: ``run`` every head, ``refresh`` every head kind
and the heads that were never trained with their present settings (new or edited), so
that a refresh with nothing to do imports no scikit-learn and stays fast. (A head's
taps are checked against the backbones' when the pipeline is made.) A pipeline with an
``[audit]`` table is audited again by ``refresh`` when its rows, heads or audit settings
changed (:mod:`featurecache.auditing`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from featurecache.auditing import AuditResult, audit_pipeline, check_audit
from featurecache.config import Pipeline
from featurecache.extraction import Cluster, ExtractResult, extract
from featurecache.heads import check_heads
from featurecache.heads.freshness import untried_heads
from featurecache.heads.train import HeadResult, train_heads


@dataclass
class RunResult:
    """What one pipeline's run did: its extractions and its heads."""

    pipeline: str
    extract: list[ExtractResult]
    heads: list[HeadResult]
    audit: list[AuditResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "extract": [r.to_dict() for r in self.extract],
            "heads": [h.to_dict() for h in self.heads],
            "audit": [a.to_dict() for a in self.audit],
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
    only the heads never trained with their present settings are checked (each kind is
    checked whatever). ``on_extracted`` is called with the extraction results before the
    heads train.

    Raises
    ------
    ConfigError
        For an invalid head, before any extraction.
    FeaturecacheError
        As :func:`~featurecache.extraction.extract` and
        :func:`~featurecache.heads.train.train_heads` raise.
    """
    to_check = untried_heads(pipeline) if only_changed else pipeline.heads
    if to_check:  # imports scikit-learn: not for a refresh whose heads all ran before
        check_heads(to_check)
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
    """Bring every pipeline up to date: new or changed images only, changed heads only,
    and the audit of a pipeline that declares ``[audit]`` where its inputs changed."""
    for p in pipelines:
        if p.audit is not None:  # before anything is extracted
            check_audit(p.audit)
    results = []
    for p in pipelines:
        result = run_pipeline(p, progress=progress, wait=wait, cluster=cluster, only_changed=True)
        if p.audit is not None:
            result.audit = audit_pipeline(p, only_changed=True)
        results.append(result)
    return results


@dataclass
class VerifyOutcome:
    """``featurecache verify``'s result: each cache's check and, with ``--repair``, what
    was repaired (the check after the repair is in ``repair.after``)."""

    checks: list[Any]  # VerifyResult per cache
    repairs: list[Any]  # RepairResult per cache (empty without --repair)

    @property
    def clean(self) -> bool:
        if self.repairs:
            return all(r.after.clean and not r.unrecoverable for r in self.repairs)
        return all(c.clean for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"clean": self.clean, "verify": [c.to_dict() for c in self.checks]}
        if self.repairs:
            out["repair"] = [r.to_dict() for r in self.repairs]
        return out


def verify(
    targets: Sequence[str],
    *,
    cache: str | None = None,
    data_root: Any = None,
    repair: bool = False,
    progress: bool = False,
    wait: bool = True,
) -> VerifyOutcome:
    """Check (and with ``repair``, repair) the caches ``targets`` name.

    A target is a cache (a URL, or a folder without pipeline files) or a pipeline file or
    a folder of them, which names its cache, limits the check to its groups and
    tells ``repair`` how to recompute them. ``repair`` recomputes a group no pipeline
    declares as its provenance records (:func:`featurecache.extraction.provenance.rebuild`),
    so a cache alone is enough. No target: the default cache.

    Raises
    ------
    ConfigError
        If a target is neither a cache nor a pipeline file.
    CacheError
        If a cache does not exist.
    """
    from featurecache.cache.verify import verify_cache
    from featurecache.extraction.repair import repair as run_repair

    named = _read_targets(targets, cache=cache, data_root=data_root)
    by_cache: dict[str, list[Pipeline]] = {c: [] for c in named.caches}
    for pipeline in named.pipelines:
        by_cache.setdefault(str(pipeline.cache), []).append(pipeline)
    outcome = VerifyOutcome([], [])
    for root, declared in by_cache.items():
        from featurecache.cache import recipe

        wanted = recipe.declared_groups(declared, recipe.wanted_hashes)
        accept = _accept_all if root in named.caches else partial(_accept_wanted, wanted)
        checked = verify_cache(root, accept=accept, progress=progress)
        outcome.checks.append(checked)
        if repair:
            outcome.repairs.append(
                run_repair(root, declared, checked, progress=progress, wait=wait)
            )
    return outcome


class _Targets(NamedTuple):
    """What ``verify``'s targets name: caches, and pipelines (each naming its cache)."""

    caches: list[str]
    pipelines: list[Pipeline]


def _read_targets(targets: Sequence[str], *, cache: str | None, data_root: Any) -> _Targets:
    """The caches and the pipelines ``targets`` name (no target: the default cache)."""
    from featurecache.config import cache_path, is_url, load_all

    caches: list[str] = []
    pipelines: list[Pipeline] = []
    for target in targets:
        folder = Path(target)
        if is_url(target) or (folder.is_dir() and not any(folder.glob("*.toml"))):
            caches.append(str(target))  # a cache (even one whose zarr.json is lost)
        else:
            pipelines += load_all([target], data_root=data_root, cache=cache)
    if not targets:
        caches.append(str(cache_path(cache)))
    return _Targets(caches, pipelines)


def _accept_all(dataset: str, request_hash: str) -> bool:
    return True


def _accept_wanted(wanted: set[tuple[str, str]], dataset: str, request_hash: str) -> bool:
    return (dataset, request_hash) in wanted
