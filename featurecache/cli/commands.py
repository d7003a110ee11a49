"""The commands: options in, one library call, the result printed (:mod:`.render`).

Heavy modules (TensorFlow, scikit-learn, zarr) are imported inside the commands, so
``featurecache --help`` answers at once.
"""

from __future__ import annotations

from typing import Any

import typer

from featurecache.cli import render
from featurecache.cli.main import app, guard
from featurecache.cli.options import (
    AugmentOpt,
    BatchOpt,
    CacheOpt,
    CsvOpt,
    DataRootOpt,
    DryRunOpt,
    EpochsOpt,
    GcPipelinesArg,
    HeadFolderArg,
    HeadNameOpt,
    HeadOpt,
    ImagesArg,
    JsonOpt,
    LearningRateOpt,
    MaxStepsOpt,
    OutputOpt,
    PipelineOptions,
    PipelinesArg,
    ProgressOpt,
    ReportOpt,
    ReportRunsOpt,
    SchedulerOpt,
    TargetsArg,
    UnfreezeOpt,
    WaitOpt,
    WorkersOpt,
    show_progress,
    with_pipeline_options,
)
from featurecache.errors import EXIT_OK, EXIT_PARTIAL


def _exit_code(results: list[Any]) -> int:
    """3 when some image was skipped (listed in the output), else 0."""
    return EXIT_PARTIAL if any(r.skipped for r in results) else EXIT_OK


def _cluster(scheduler: str | None, workers: int | None) -> Any:
    from featurecache.extraction import Cluster

    return Cluster.from_options(scheduler, workers)


@app.command()
def backbones(as_json: JsonOpt = False) -> None:
    """List the registered backbones: input size, feature dimension, preprocessing."""
    from featurecache.config import REGISTRY

    rows = [spec.describe() for spec in REGISTRY.values()]
    render.emit(as_json, rows, lambda: render.backbones(rows))


@app.command()
@with_pipeline_options
def extract(
    selected: PipelineOptions,
    batch_size: BatchOpt = None,
    wait: WaitOpt = True,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    progress: ProgressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run each backbone once over each data set and store the features in the cache."""
    from featurecache.extraction import extract as run_extract

    results = guard(
        lambda: run_extract(
            selected.load(batch_size=batch_size),
            progress=show_progress(progress),
            wait=wait,
            cluster=_cluster(scheduler, workers),
        )
    )
    render.emit(
        as_json, {"extract": [r.to_dict() for r in results]}, lambda: render.extracted(results)
    )
    raise typer.Exit(_exit_code(results))


@app.command("train-head")
@with_pipeline_options
def train_head(
    selected: PipelineOptions,
    head: HeadOpt = None,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train heads on cached features alone; write models, metrics.json and plots."""
    from featurecache.heads.train import train_heads

    results = guard(lambda: train_heads(selected.load(heads=head, output=output)))
    render.emit(as_json, {"heads": [r.to_dict() for r in results]}, lambda: render.heads(results))


@app.command()
@with_pipeline_options
def run(
    selected: PipelineOptions,
    head: HeadOpt = None,
    output: OutputOpt = None,
    batch_size: BatchOpt = None,
    wait: WaitOpt = True,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    progress: ProgressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the heads, extract (or hit the cache), then train every head: the whole pipeline."""
    from featurecache.workflow import run_pipeline

    result = guard(
        lambda: run_pipeline(
            selected.load(heads=head, output=output, batch_size=batch_size),
            progress=show_progress(progress),
            wait=wait,
            cluster=_cluster(scheduler, workers),
            on_extracted=None if as_json else render.extracted,
        )
    )
    payload = {k: v for k, v in result.to_dict().items() if k in ("extract", "heads")}
    render.emit(as_json, payload, lambda: render.heads(result.heads))
    raise typer.Exit(_exit_code(result.extract))


@app.command()
@with_pipeline_options
def finetune(
    selected: PipelineOptions,
    output: OutputOpt = None,
    head_name: HeadNameOpt = None,
    epochs: EpochsOpt = None,
    max_steps: MaxStepsOpt = None,
    learning_rate: LearningRateOpt = None,
    unfreeze: UnfreezeOpt = None,
    augment: AugmentOpt = None,
    progress: ProgressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune the backbone's last block under the trained dense head (after `run`).

    Checks first that the rebuilt model reproduces the head's output on cached features;
    saves a checkpoint every epoch and resumes after an interruption.
    """
    from featurecache.finetune.train import finetune as run_finetune

    changes = {
        "head": head_name,
        "epochs": epochs,
        "max_steps": max_steps,
        "learning_rate": learning_rate,
        "unfreeze": tuple(unfreeze) if unfreeze else None,
        "augment": False if augment is False else None,
    }
    results = guard(
        lambda: run_finetune(
            selected.load(heads=["dense"] if selected.data else None, output=output).with_finetune(
                **{k: v for k, v in changes.items() if v is not None}
            ),
            progress=show_progress(progress),
        )
    )
    payload = {"finetune": [r.to_dict() for r in results]}
    render.emit(as_json, payload, lambda: render.finetuned(results))


@app.command()
def refresh(
    pipelines: PipelinesArg = None,
    cache: CacheOpt = None,
    output: OutputOpt = None,
    data_root: DataRootOpt = None,
    wait: WaitOpt = True,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    progress: ProgressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """For cron: extract only new or changed images, retrain only heads whose inputs changed.

    Safe to kill at any moment and to run twice at once (see README, "Running from cron").
    """
    from featurecache.config import load_all
    from featurecache.workflow import refresh as run_refresh

    results = guard(
        lambda: run_refresh(
            load_all(pipelines or [], data_root=data_root, cache=cache, output=output),
            progress=show_progress(progress),
            wait=wait,
            cluster=_cluster(scheduler, workers),
        )
    )
    render.emit(
        as_json, {"refresh": [r.to_dict() for r in results]}, lambda: render.refreshed(results)
    )
    raise typer.Exit(_exit_code([e for r in results for e in r.extract]))


@app.command()
def gc(
    pipelines: GcPipelinesArg = None,
    cache: CacheOpt = None,
    dry_run: DryRunOpt = False,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Remove cache entries nothing references and say how many bytes that frees."""
    from featurecache.cache.admin import collect_garbage
    from featurecache.config import cache_path, load_all

    result = guard(
        lambda: collect_garbage(
            cache_path(cache),
            load_all(pipelines, cache=cache) if pipelines else [],
            dry_run=dry_run,
            wait=wait,
        )
    )
    render.emit(as_json, vars(result), lambda: render.collected(result))


@app.command()
def predict(
    head: HeadFolderArg,
    images: ImagesArg,
    csv: CsvOpt = None,
    batch_size: BatchOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Label images with a trained head: prints each image's label and probability."""
    from featurecache.predict import predict as run_predict
    from featurecache.predict import write_csv

    results = guard(lambda: run_predict(head, images, batch_size=batch_size or 32))
    if csv is not None:
        write_csv(results, csv)
    render.emit(as_json, [vars(p) for p in results], lambda: render.predictions(results))
    raise typer.Exit(EXIT_PARTIAL if any(p.error for p in results) else EXIT_OK)


@app.command()
def info(cache: CacheOpt = None, as_json: JsonOpt = False) -> None:
    """What the cache holds: data sets, backbones, images per split, size, provenance."""
    from featurecache.cache.admin import describe_cache
    from featurecache.config import cache_path

    root = cache_path(cache)
    groups = guard(lambda: describe_cache(root))
    render.emit(
        as_json, {"cache": str(root), "groups": groups}, lambda: render.cache_info(root, groups)
    )


@app.command()
def report(
    targets: TargetsArg,
    report: ReportOpt = None,
    output: ReportRunsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Markdown + HTML report of trained heads: top-1 with 95% bootstrap intervals, balanced
    accuracy, the write-ups' figures beside ours, confusion matrices, timings and provenance."""
    from featurecache.report.collect import collect
    from featurecache.report.write import to_json, write_report

    collection = guard(lambda: collect(targets, output=output))
    paths = guard(lambda: write_report(collection, report or collection.default_report(output)))
    payload = {**to_json(collection), "files": {k: str(v) for k, v in paths.items()}}
    render.emit(as_json, payload, lambda: render.report(collection, paths))
