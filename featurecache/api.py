"""featurecache's public Python API: what every command does, as a function.

For notebooks and scripts; the ``featurecache`` command calls these functions and
nothing else, and prints their results (``--json`` prints ``result.to_dict()``)::

    import featurecache

    fs = featurecache.open_cache("cache").features("catvnoncat")   # FeatureSet
    fs.train.X, fs.train.y, fs.test.X, fs.class_names                 # numpy arrays
    ds = fs.to_xarray()                                               # xarray.Dataset

    pipeline = featurecache.load_pipeline("pipelines/catvnoncat.toml")
    featurecache.extract(pipeline)          # -> list[ExtractResult]
    featurecache.train_head(pipeline)       # -> list[HeadResult]
    featurecache.finetune(pipeline)         # -> list[FinetuneResult]

Stages take a :class:`~featurecache.config.Pipeline` (what ``load_pipeline`` builds
from a pipeline file or from the command line's ``--data`` / ``--backbone`` options), or
the path of a pipeline file. Reading features imports neither TensorFlow nor Keras.

Errors are :class:`~featurecache.errors.FeaturecacheError` subclasses with one-line
messages that say how to fix them (the CLI prints them as ``error: ...``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurecache.config import Pipeline, cache_path, load_all, resolve_pipeline
from featurecache.quiet import configure as _configure_quiet

if TYPE_CHECKING:
    from featurecache.auditing import AuditResult
    from featurecache.cache import Cache as Cache
    from featurecache.cache import FeatureSet as FeatureSet
    from featurecache.cache.admin import GcResult
    from featurecache.extraction import ExtractResult
    from featurecache.finetuning.outputs import FinetuneResult
    from featurecache.heads.train import HeadResult
    from featurecache.prediction import Prediction
    from featurecache.reporting.write import ReportResult as ReportResult
    from featurecache.workflow import RunResult, VerifyOutcome

# The public names are listed once, in featurecache.__all__ (featurecache/__init__.py).

PipelineLike = Pipeline | str | Path


def __getattr__(name: str) -> Any:  # Cache, FeatureSet, ReportResult load zarr: on first use
    if name in ("Cache", "FeatureSet"):
        from featurecache import cache

        return getattr(cache, name)
    if name == "ReportResult":  # a result type lives beside the stage that makes it
        from featurecache.reporting.write import ReportResult

        return ReportResult
    raise AttributeError(f"module 'featurecache.api' has no attribute {name!r}")


def open_cache(cache: str | Path | None = None) -> Cache:
    """The feature cache at ``cache``: a folder or an fsspec URL (``s3://bucket/prefix``).

    ``None``: ``$FEATURECACHE_CACHE``, else ``./cache`` (the commands' default). Read
    features with :meth:`Cache.features`; ``Cache.datasets()`` and
    ``Cache.backbones(dataset)`` say what is there.

    Raises
    ------
    CacheError
        If there is no cache there, or the folder is not a featurecache cache.
    """
    from featurecache.cache import Cache

    opened = Cache(cache_path(cache))
    opened.check()
    return opened


def load_pipeline(pipeline: str | Path | None = None, **options: Any) -> Pipeline:
    """A pipeline: from the file ``pipeline`` (``pipelines/<name>.toml``), or without one
    from the command line's options (``data=["photos/"], backbone=["mobilenet_v2"]``).

    Keyword options are those of the commands (``data``, ``backbone``, ``heads``,
    ``weights``, ``pooling``, ``input_size``, ``engine``, ``precision``, ``decoder``,
    ``dtype``, ``cache``, ``data_root``, ``output``, ``batch_size``); see
    :func:`featurecache.config.resolve_pipeline`.

    Raises
    ------
    ConfigError
        If the file or the options are invalid (the message names the key and the fix).
    """
    return resolve_pipeline(pipeline, **options)


def load_pipelines(paths: Sequence[str | Path], **overrides: Any) -> list[Pipeline]:
    """Every pipeline in ``paths`` (files, or folders of ``*.toml``); no paths:
    ``pipelines/``. ``overrides``: ``data_root``, ``cache``, ``output``.

    Raises
    ------
    ConfigError
        If a file is invalid or none is found.
    """
    return load_all(list(paths), **overrides)


def _pipeline(pipeline: PipelineLike) -> Pipeline:
    return pipeline if isinstance(pipeline, Pipeline) else load_pipeline(pipeline)


def _cluster(scheduler: str | None, workers: int | None) -> Any:
    from featurecache.extraction import Cluster

    return Cluster.from_options(scheduler, workers)


def extract(
    pipeline: PipelineLike,
    *,
    progress: bool = False,
    wait: bool = True,
    scheduler: str | None = None,
    workers: int | None = None,
) -> list[ExtractResult]:
    """Run each backbone once over each data set and commit the features to the cache.

    Only images whose content is not cached yet are computed. ``progress`` shows a
    progress bar; ``wait=False`` fails at once (:class:`~featurecache.errors.LockedError`)
    if another process is writing the data set; ``scheduler`` (a Dask scheduler
    address) or ``workers`` (a local Dask cluster) run it on Dask.

    Returns
    -------
    list of ExtractResult
        One per data set x backbone: the group, counts (computed, reused, skipped with
        reasons), timings. ``to_dict()`` is what ``featurecache extract --json`` prints.

    Raises
    ------
    FeaturecacheError
        ConfigError, DatasetError, CacheError, DependencyError, LockedError,
        DamagedError or Stopped (SIGTERM / SIGINT at a safe point), each in one line.
    """
    from featurecache.extraction import extract as run_extract

    return run_extract(
        _pipeline(pipeline), progress=progress, wait=wait, cluster=_cluster(scheduler, workers)
    )


def train_head(pipeline: PipelineLike) -> list[HeadResult]:
    """Train the pipeline's heads on the cached features alone (nothing is extracted).

    Writes each head's model, ``metrics.json`` and plots under the pipeline's output
    folder (``runs/<pipeline>/...``).

    Returns
    -------
    list of HeadResult
        One per data set x backbone x head: top-1 accuracy per split, the chosen
        hyper-parameters, the files written. ``to_dict()`` is ``train-head --json``.

    Raises
    ------
    CacheError
        If the features are not cached (run :func:`extract` first).
    ConfigError
        If a head is invalid.
    """
    from featurecache.heads.train import train_heads

    return train_heads(_pipeline(pipeline))


def run(
    pipeline: PipelineLike,
    *,
    progress: bool = False,
    wait: bool = True,
    scheduler: str | None = None,
    workers: int | None = None,
    on_extracted: Callable[[list[ExtractResult]], None] | None = None,
) -> RunResult:
    """The whole pipeline: check the heads, :func:`extract`, then :func:`train_head`.

    ``on_extracted`` is called with the extraction results before the heads train.
    Raises as :func:`extract` and :func:`train_head` do.
    """
    from featurecache.workflow import run_pipeline

    return run_pipeline(
        _pipeline(pipeline),
        progress=progress,
        wait=wait,
        cluster=_cluster(scheduler, workers),
        on_extracted=on_extracted,
    )


def finetune(
    pipeline: PipelineLike, *, progress: bool = False, **overrides: Any
) -> list[FinetuneResult]:
    """Put the trained dense head back on the backbone and fine-tune its last block.

    ``overrides`` change the pipeline's ``[finetune]`` table (``epochs``,
    ``learning_rate``, ``unfreeze``, ``source="cache"``...). Checks first that the
    rebuilt model reproduces the head on cached features; checkpoints every epoch and
    resumes after an interruption.

    Returns
    -------
    list of FinetuneResult
        Top-1 accuracy before and after per split, files written. ``to_dict()`` is
        ``finetune --json``.

    Raises
    ------
    CacheError
        If the features or the dense head are missing (run :func:`run` first), or the
        parity check fails.
    ConfigError
        If the head is not a dense head or ``unfreeze`` matches no layer.
    """
    from featurecache.finetuning.train import finetune as run_finetune

    chosen = _pipeline(pipeline)
    if overrides:
        chosen = chosen.with_finetune(**overrides)
    return run_finetune(chosen, progress=progress)


def refresh(
    pipelines: Sequence[PipelineLike] = (),
    *,
    progress: bool = False,
    wait: bool = True,
    scheduler: str | None = None,
    workers: int | None = None,
) -> list[RunResult]:
    """For cron: extract only new or changed images, retrain only heads whose inputs
    changed. No pipelines: every file in ``pipelines/``."""
    from featurecache.workflow import refresh as run_refresh

    loaded = [_pipeline(p) for p in pipelines] or load_pipelines([])
    return run_refresh(loaded, progress=progress, wait=wait, cluster=_cluster(scheduler, workers))


def verify(
    targets: Sequence[str] = (),
    *,
    cache: str | None = None,
    data_root: str | Path | None = None,
    repair: bool = False,
    progress: bool = False,
    wait: bool = True,
) -> VerifyOutcome:
    """Read every chunk, pointer and attribute of the caches ``targets`` name (caches,
    or pipeline files); with ``repair``, recompute damaged rows (as the pipelines say,
    else as each damaged group's provenance records).
    See :func:`featurecache.workflow.verify`."""
    from featurecache.workflow import verify as run_verify

    return run_verify(
        targets, cache=cache, data_root=data_root, repair=repair, progress=progress, wait=wait
    )


def gc(
    cache: str | Path | None = None,
    pipelines: Sequence[str | Path] = (),
    *,
    dry_run: bool = False,
    wait: bool = True,
) -> GcResult:
    """Remove superseded generations, leftovers of killed runs and, with ``pipelines``,
    every group none of them declares. Returns what was (or would be) removed."""
    from featurecache.cache.admin import collect_garbage

    loaded = load_pipelines(pipelines, cache=cache) if pipelines else []
    return collect_garbage(cache_path(cache), loaded, dry_run=dry_run, wait=wait)


def info(cache: str | Path | None = None) -> dict[str, Any]:
    """What the cache holds: ``{"cache": path, "groups": [...]}``, one summary per
    (data set, backbone) group (images per split, size, provenance).

    Raises
    ------
    CacheError
        If there is no cache at ``cache``.
    """
    from featurecache.cache.admin import describe_cache

    root = cache_path(cache)
    return {"cache": str(root), "groups": describe_cache(root)}


def predict(
    head: str | Path,
    images: Sequence[str | Path],
    *,
    batch_size: int = 32,
    trust_pickle: bool = False,
    csv: str | Path | None = None,
) -> list[Prediction]:
    """Label ``images`` (files or folders) with the trained head in the folder ``head``:
    the backbone runs on each image, the head on its features. ``csv`` also writes the
    predictions there. See :func:`featurecache.prediction.predict`."""
    from featurecache.prediction import predict as run_predict
    from featurecache.prediction import write_csv

    results = run_predict(head, images, batch_size=batch_size, trust_pickle=trust_pickle)
    if csv is not None:
        write_csv(results, csv)
    return results


def report(
    targets: Sequence[str | Path],
    *,
    report: str | Path | None = None,
    output: str | Path | None = None,
) -> ReportResult:
    """Write the Markdown + HTML report of the heads trained for ``targets`` (pipeline
    files or run folders): top-1 with 95% bootstrap intervals, the write-ups' figures
    beside ours, confusion matrices, provenance. ``report``: where (default
    ``runs/<pipeline>/report.md``).

    Raises
    ------
    ConfigError
        If a target is neither a pipeline file nor a run folder with trained heads.
    """
    from featurecache.reporting.collect import collect
    from featurecache.reporting.write import ReportResult, write_report

    collection = collect(list(targets), output=output)
    files = write_report(collection, Path(report or collection.default_report(output)))
    return ReportResult(collection, files)


def audit(pipeline: PipelineLike) -> list[AuditResult]:
    """Audit the pipeline's cached features: duplicates and the leak of test images into
    train, likely label errors (cleanlab), outliers, each trained head's test mistakes
    and its top-1 without the leaked images. Nothing is extracted; only the few images
    shown are read again, for thumbnails.

    Writes ``runs/<pipeline>/<dataset>/<group>/audit/``: ``audit.html`` (thumbnails, a
    2-D map), ``audit.json``, and a CSV per finding. Settings: the pipeline's
    ``[audit]`` table (:class:`~featurecache.config.AuditConfig`).

    Returns
    -------
    list of AuditResult
        One per data set x backbone: counts, top-1 with and without the leak, the page's
        path, seconds per phase. ``to_dict()`` is ``audit --json``.

    Raises
    ------
    CacheError
        If the features are not cached (run :func:`extract` first).
    DependencyError
        If the audit extra is missing (``pip install 'featurecache[audit]'``).
    """
    from featurecache.auditing import audit_pipeline

    return audit_pipeline(_pipeline(pipeline))


def list_backbones() -> list[dict[str, Any]]:
    """The registered backbones: name, input size, feature dimension, preprocessing."""
    from featurecache.config import REGISTRY

    return [spec.describe() for spec in REGISTRY.values()]


def set_verbose(verbose: bool) -> None:
    """Let TensorFlow's and absl's own log lines through (``True``), or keep them out
    (the default). Call before the first extraction; see :mod:`featurecache.quiet`."""
    _configure_quiet(verbose=verbose)
