"""The commands: options in, one library call, an :class:`~featurecache.cli.main.Output`.

Each body loads what the options name, calls the public API (:mod:`featurecache.api`)
once and says what to print
(:mod:`featurecache.cli.render`); :func:`~featurecache.cli.main.command` adds the option
groups and ``--json``, guards against errors and prints. Heavy modules (Keras and its
backend, scikit-learn, zarr) are imported inside the bodies, so ``featurecache --help`` answers
at once.
"""

from __future__ import annotations

from typing import Any

from featurecache import api
from featurecache.cli import render
from featurecache.cli.groups import (
    ExtractionOptions,
    FinetuneOptions,
    PipelineOptions,
    show_progress,
)
from featurecache.cli.main import Output, command
from featurecache.cli.options import (
    BatchOpt,
    CacheOpt,
    CsvOpt,
    DataRootOpt,
    DryRunOpt,
    GcPipelinesArg,
    HeadFolderArg,
    HeadOpt,
    ImagesArg,
    OutputOpt,
    PipelinesArg,
    ProgressOpt,
    RepairOpt,
    ReportOpt,
    ReportRunsOpt,
    TargetsArg,
    TrustPickleOpt,
    VerifyTargetsArg,
    WaitOpt,
)
from featurecache.errors import EXIT_DAMAGED, EXIT_OK, EXIT_PARTIAL


def _exit_code(results: list[Any]) -> int:
    """3 when some image was skipped (listed in the output), else 0."""
    return EXIT_PARTIAL if any(r.skipped for r in results) else EXIT_OK


@command()
def backbones() -> Output:
    """List the registered backbones: input size, feature dimension, preprocessing.

    keras-hub presets are used as hub:<preset> (hub:dinov2_small, or a preset folder).
    """
    rows = api.list_backbones()
    return Output(rows, lambda: render.backbones(rows))


@command()
def extract(
    selected: PipelineOptions, how: ExtractionOptions, batch_size: BatchOpt = None
) -> Output:
    """Run each backbone once over each data set and store the features in the cache."""
    results = api.extract(selected.load(batch_size=batch_size), **how.settings())
    payload = {"extract": [r.to_dict() for r in results]}
    return Output(payload, lambda: render.extracted(results), _exit_code(results))


@command("train-head")
def train_head(selected: PipelineOptions, head: HeadOpt = None, output: OutputOpt = None) -> Output:
    """Train heads on cached features alone; write models, metrics.json and plots."""
    results = api.train_head(selected.load(heads=head, output=output))
    return Output({"heads": [r.to_dict() for r in results]}, lambda: render.heads(results))


@command()
def audit(selected: PipelineOptions, output: OutputOpt = None) -> Output:
    """Audit the cached features: duplicates and test images leaked into train, likely
    label errors, outliers, the heads' worst mistakes; writes audit.html beside the heads.

    Nothing is extracted: run `featurecache run` first. Settings: the pipeline's [audit].
    """
    results = api.audit(selected.load(output=output))
    return Output({"audit": [r.to_dict() for r in results]}, lambda: render.audited(results))


@command()
def run(
    selected: PipelineOptions,
    how: ExtractionOptions,
    head: HeadOpt = None,
    output: OutputOpt = None,
    batch_size: BatchOpt = None,
    as_json: bool = False,
) -> Output:
    """Check the heads, extract (or hit the cache), then train every head: the whole pipeline."""
    pipeline = selected.load(heads=head, output=output, batch_size=batch_size)
    extracted = None if as_json else render.extracted  # printed before the heads train
    result = api.run(pipeline, on_extracted=extracted, **how.settings())
    payload = {"extract": [r.to_dict() for r in result.extract]}
    payload["heads"] = [h.to_dict() for h in result.heads]
    return Output(payload, lambda: render.heads(result.heads), _exit_code(result.extract))


@command()
def finetune(
    selected: PipelineOptions,
    training: FinetuneOptions,
    output: OutputOpt = None,
    progress: ProgressOpt = None,
) -> Output:
    """Fine-tune the backbone's last block under the trained dense head (after `run`).

    Checks first that the rebuilt model reproduces the head's output on cached features;
    saves a checkpoint every epoch and resumes after an interruption. With --from-cache,
    trains the layers after the backbone's finetune_from from the cached activations.
    """
    pipeline = selected.load(heads=["dense"] if selected.data else None, output=output)
    results = api.finetune(training.apply(pipeline), progress=show_progress(progress))
    return Output({"finetune": [r.to_dict() for r in results]}, lambda: render.finetuned(results))


@command()
def refresh(
    how: ExtractionOptions,
    pipelines: PipelinesArg = None,
    cache: CacheOpt = None,
    output: OutputOpt = None,
    data_root: DataRootOpt = None,
) -> Output:
    """For cron: extract only new or changed images, retrain only heads whose inputs changed.

    Safe to kill at any moment and to run twice at once (see README, "Running from cron").
    """
    loaded = api.load_pipelines(pipelines or [], data_root=data_root, cache=cache, output=output)
    results = api.refresh(loaded, **how.settings())
    extracted = [e for r in results for e in r.extract]
    payload = {"refresh": [r.to_dict() for r in results]}
    return Output(payload, lambda: render.refreshed(results), _exit_code(extracted))


@command()
def gc(
    pipelines: GcPipelinesArg = None,
    cache: CacheOpt = None,
    dry_run: DryRunOpt = False,
    wait: WaitOpt = True,
) -> Output:
    """Remove cache entries nothing references and say how many bytes that frees."""
    result = api.gc(cache, pipelines or [], dry_run=dry_run, wait=wait)
    return Output(vars(result), lambda: render.collected(result))


@command()
def verify(
    targets: VerifyTargetsArg = None,
    cache: CacheOpt = None,
    data_root: DataRootOpt = None,
    repair: RepairOpt = False,
    progress: ProgressOpt = None,
    wait: WaitOpt = True,
) -> Output:
    """Read every chunk, pointer and attribute of the cache; say what is damaged (exit 5).

    With --repair, recompute the damaged rows from their source images and commit them as
    a new generation; a cache alone is enough (each group's provenance says how it was
    made). Rows whose image is gone are listed, never dropped in silence.
    """
    outcome = api.verify(
        targets or [],
        cache=cache,
        data_root=data_root,
        repair=repair,
        progress=show_progress(progress),
        wait=wait,
    )
    code = EXIT_OK if outcome.clean else EXIT_DAMAGED
    return Output(outcome.to_dict(), lambda: render.verified(outcome), code)


@command()
def predict(
    head: HeadFolderArg,
    images: ImagesArg,
    csv: CsvOpt = None,
    batch_size: BatchOpt = None,
    trust_pickle: TrustPickleOpt = False,
) -> Output:
    """Label images with a trained head: prints each image's label and probability."""
    results = api.predict(
        head, images, batch_size=batch_size or 32, trust_pickle=trust_pickle, csv=csv
    )
    code = EXIT_PARTIAL if any(p.error for p in results) else EXIT_OK
    return Output([vars(p) for p in results], lambda: render.predictions(results), code)


@command()
def info(cache: CacheOpt = None) -> Output:
    """What the cache holds: data sets, backbones, images per split, size, provenance."""
    payload = api.info(cache)
    return Output(payload, lambda: render.cache_info(payload["cache"], payload["groups"]))


@command()
def report(targets: TargetsArg, report: ReportOpt = None, output: ReportRunsOpt = None) -> Output:
    """Markdown + HTML report of trained heads: top-1 with 95% bootstrap intervals, balanced
    accuracy, the write-ups' figures beside ours, confusion matrices, timings and provenance."""
    written = api.report(targets, report=report, output=output)
    return Output(written.to_dict(), lambda: render.report(written.collection, written.files))
