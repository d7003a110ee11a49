"""The ``featurecache`` command: a thin typer layer over the stages.

Each command parses options, builds a :class:`~featurecache.config.Pipeline`,
calls one library function and prints the result (a table, or JSON with
``--json``). Heavy modules (TensorFlow, scikit-learn, zarr) are imported inside
the commands, so ``featurecache --help`` answers at once.

Exit codes: 0 success; 1 error (one line on stderr, no traceback); 2 bad usage;
3 completed, but some images were skipped (listed in the output).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from featurecache.errors import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, FeaturecacheError

app = typer.Typer(
    name="featurecache",
    help=(
        "Run each frozen ImageNet backbone once per image, cache the bottleneck features in "
        "zarr, and train heads on them in seconds."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
log = logging.getLogger("featurecache")
T = TypeVar("T")

# ----------------------------------------------------------------- shared options

PipelineArg = Annotated[
    Path | None,
    typer.Argument(
        help="Pipeline file (pipelines/*.toml). Omit it and use --data instead.", show_default=False
    ),
]
DataOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--data",
        help="Data set without a pipeline file: a class folder, a CSV "
        "manifest (path,label[,split]) or an HDF5 file; HDF5 splits as "
        "train=a.h5 --data test=b.h5.",
        show_default=False,
    ),
]
BackboneOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--backbone",
        "-b",
        help="Backbone name (see `featurecache backbones`); "
        "repeat for several. Default: mobilenet_v2.",
        show_default=False,
    ),
]
HeadOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--head",
        help="Head kind: logistic_regression, linear_svm, knn, "
        "random_forest, dense, or a scikit-learn import path; repeatable. "
        "Default: logistic_regression.",
        show_default=False,
    ),
]
WeightsOpt = Annotated[
    str,
    typer.Option(
        help="With --data: 'imagenet' (Keras downloads and caches them), a "
        "weights file, or 'none' (random: tests only)."
    ),
]
PoolingOpt = Annotated[str, typer.Option(help="With --data: global pooling, 'avg' or 'max'.")]
SizeOpt = Annotated[
    int | None,
    typer.Option(
        help="With --data: input size in pixels (default: the backbone's).", show_default=False
    ),
]
CacheOpt = Annotated[
    str | None,
    typer.Option(
        help="Cache folder, or URL (s3://bucket/prefix; credentials from the usual AWS_* "
        "variables). Default: the pipeline's 'cache', $FEATURECACHE_CACHE, or ./cache.",
        show_default=False,
    ),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        help="Where trained heads go. Default: the pipeline's 'output' or ./runs.",
        show_default=False,
    ),
]
DataRootOpt = Annotated[
    Path | None,
    typer.Option(
        help="Folder that relative data paths in the pipeline file are "
        "resolved against. Default: $FEATURECACHE_DATA_ROOT, then the "
        "file's data_root.",
        show_default=False,
    ),
]
BatchOpt = Annotated[
    int | None,
    typer.Option(min=1, help="Images per backbone batch (default 32).", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON document instead of text.")]
EngineOpt = Annotated[
    str | None,
    typer.Option(
        help="What runs the backbone: tensorflow (default), onnxruntime "
        "(pip install 'featurecache[onnx]'), or auto (times both, keeps "
        "the faster). Overrides the pipeline file's.",
        show_default=False,
    ),
]
WaitOpt = Annotated[
    bool,
    typer.Option(
        "--wait/--no-wait",
        help="If another process is writing the same data "
        "set: wait for it (default), or exit at once with code 4.",
    ),
]
SchedulerOpt = Annotated[
    str | None,
    typer.Option(
        envvar="FEATURECACHE_SCHEDULER",
        help="Run the backbones on an existing Dask cluster: its scheduler address, "
        "e.g. tcp://host:8786 (pip install 'featurecache[dask]'). Workers must see the "
        "data set and the cache at the same paths (or use an s3:// cache).",
        show_default=False,
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Run the backbones on a new local Dask cluster of this many worker processes.",
        show_default=False,
    ),
]
ProgressOpt = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        help="Progress bar on stderr (default: only when stderr is a terminal).",
        show_default=False,
    ),
]


# ----------------------------------------------------------------- plumbing


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Log errors only.")] = False,
    log_file: Annotated[
        Path | None,
        typer.Option(help="Also append detailed logs to this file.", show_default=False),
    ] = None,
) -> None:
    """featurecache: bottleneck features cached once, heads trained many times."""
    level = logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.setLevel(level)
    root = logging.getLogger("featurecache")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if log_file else level)
    if log_file:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(
            logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s")
        )
        file_handler.setLevel(logging.INFO)
        root.addHandler(file_handler)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter out


def _guard(call: Callable[[], T]) -> T:
    """Run ``call``; turn featurecache errors into one line and an exit code."""
    try:
        return call()
    except FeaturecacheError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: nothing half-written was committed", err=True)
        raise typer.Exit(130) from None


def _emit(as_json: bool, payload: Any, text: Callable[[], None]) -> None:
    if as_json:
        typer.echo(json.dumps(payload, indent=2, default=str))
    else:
        text()


def _progress(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


def _pipeline(
    pipeline: Path | None,
    *,
    data,
    backbone,
    head=None,
    weights="imagenet",
    pooling="avg",
    input_size=None,
    cache=None,
    output=None,
    data_root=None,
    batch_size=None,
    engine=None,
):
    from dataclasses import replace

    from featurecache.config import load_pipeline, pipeline_from_options

    if pipeline is not None:
        if data or backbone or head:
            raise FeaturecacheError("give either a pipeline file or --data/--backbone/--head")
        loaded = load_pipeline(pipeline, data_root=data_root, cache=cache, output=output)
        if batch_size:
            loaded = replace(loaded, batch_size=batch_size)
        if engine:
            from featurecache.backbones import BackboneConfig

            backbones = tuple(
                BackboneConfig.create(
                    b.name,
                    weights=b.weights,
                    input_size=b.input_size,
                    pooling=b.pooling,
                    args=b.args,
                    engine=engine,
                    dtype=b.dtype,
                )
                for b in loaded.backbones
            )
            loaded = replace(loaded, backbones=backbones)
        return loaded
    return pipeline_from_options(
        engine=engine or "tensorflow",
        data=data or [],
        backbones=backbone or [],
        heads=head or [],
        weights=weights,
        pooling=pooling,
        input_size=input_size,
        cache=cache,
        output=output,
        batch_size=batch_size or 32,
    )


# ----------------------------------------------------------------- commands


@app.command()
def backbones(as_json: JsonOpt = False) -> None:
    """List the registered backbones: input size, feature dimension, preprocessing."""
    from featurecache.backbones import REGISTRY

    rows = [
        {
            "name": s.name,
            "keras_name": s.keras_name,
            "input_size": s.input_size,
            "feature_dim": s.feature_dim,
            "preprocess_input": f"keras.applications.{s.module}",
            "embedded_preprocessing": s.embedded_preprocessing,
            "last_block": list(s.last_block),
        }
        for s in REGISTRY.values()
    ]

    def text() -> None:
        typer.echo(f"{'name':<22}{'keras class':<20}{'size':>5}{'dim':>6}  preprocess_input")
        for r in rows:
            note = " (raw 0-255 in; rescaled inside)" if r["embedded_preprocessing"] else ""
            typer.echo(
                f"{r['name']:<22}{r['keras_name']:<20}{r['input_size']:>5}"
                f"{r['feature_dim']:>6}  {r['preprocess_input']}{note}"
            )

    _emit(as_json, rows, text)


def _print_extract(results) -> None:
    for r in results:
        if r.weights == "none":
            log.warning(
                "%s has RANDOM weights (weights=none): these features are for tests only",
                r.backbone,
            )
        splits = ", ".join(f"{k} {v}" for k, v in sorted(r.split_counts.items()))
        if r.cache_hit:
            typer.echo(
                f"cache hit: {r.dataset} x {r.backbone}: {r.n_images} images ({splits}) "
                f"already in {r.group}; nothing computed"
            )
        else:
            speed = f", {r.images_per_second:.1f} images/s" if r.images_per_second else ""
            resumed = f" + {r.n_resumed} resumed" if r.n_resumed else ""
            typer.echo(
                f"extracted {r.dataset} x {r.backbone}: {r.n_extracted} computed{resumed}, "
                f"{r.n_reused} reused ({r.n_new} new, {r.n_changed} changed, {r.n_removed} "
                f"removed) -> {r.n_images} images ({splits}) in {r.seconds:.1f} s{speed}, "
                f"engine {r.engine}; {r.group}"
            )
        for s in r.skipped:
            typer.echo(f"  skipped {s['reason']}")


def _print_heads(results) -> None:
    for r in results:
        acc = ", ".join(f"{k} {v:.3f}" for k, v in r.accuracy.items())
        how = f"({r.seconds:.1f} s)" if r.trained else "(inputs unchanged: kept)"
        typer.echo(f"head {r.head} on {r.dataset} x {r.backbone}: top-1 {acc} {how} -> {r.folder}")


def _cluster(scheduler: str | None, workers: int | None):
    """The Dask cluster asked for, or None to run locally."""
    if scheduler is None and workers is None:
        return None
    if scheduler is not None and workers is not None:
        raise FeaturecacheError(
            "give either --scheduler (an existing Dask cluster) or --workers (a new local one)"
        )
    from featurecache.stages.shards import Cluster

    return Cluster(scheduler=scheduler, workers=workers)


def _partial(results) -> int:
    return EXIT_PARTIAL if any(r.skipped for r in results) else EXIT_OK


@app.command()
def extract(
    pipeline: PipelineArg = None,
    data: DataOpt = None,
    backbone: BackboneOpt = None,
    weights: WeightsOpt = "imagenet",
    pooling: PoolingOpt = "avg",
    input_size: SizeOpt = None,
    cache: CacheOpt = None,
    data_root: DataRootOpt = None,
    batch_size: BatchOpt = None,
    engine: EngineOpt = None,
    wait: WaitOpt = True,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    progress: ProgressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run each backbone once over each data set and store the features in the cache."""

    def call():
        from featurecache.stages.extract import extract as run_extract

        p = _pipeline(
            pipeline,
            data=data,
            backbone=backbone,
            weights=weights,
            pooling=pooling,
            input_size=input_size,
            cache=cache,
            data_root=data_root,
            batch_size=batch_size,
            engine=engine,
        )
        cluster = _cluster(scheduler, workers)
        return run_extract(p, progress=_progress(progress), wait=wait, cluster=cluster)

    results = _guard(call)
    _emit(as_json, {"extract": [r.to_dict() for r in results]}, lambda: _print_extract(results))
    raise typer.Exit(_partial(results))


@app.command("train-head")
def train_head(
    pipeline: PipelineArg = None,
    data: DataOpt = None,
    backbone: BackboneOpt = None,
    head: HeadOpt = None,
    weights: WeightsOpt = "imagenet",
    pooling: PoolingOpt = "avg",
    input_size: SizeOpt = None,
    cache: CacheOpt = None,
    output: OutputOpt = None,
    data_root: DataRootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train heads on cached features alone; write models, metrics.json and plots."""

    def call():
        from featurecache.stages.train_head import train_heads

        p = _pipeline(
            pipeline,
            data=data,
            backbone=backbone,
            head=head,
            weights=weights,
            pooling=pooling,
            input_size=input_size,
            cache=cache,
            output=output,
            data_root=data_root,
        )
        return train_heads(p)

    results = _guard(call)
    _emit(as_json, {"heads": [r.to_dict() for r in results]}, lambda: _print_heads(results))


@app.command()
def run(
    pipeline: PipelineArg = None,
    data: DataOpt = None,
    backbone: BackboneOpt = None,
    head: HeadOpt = None,
    weights: WeightsOpt = "imagenet",
    pooling: PoolingOpt = "avg",
    input_size: SizeOpt = None,
    cache: CacheOpt = None,
    output: OutputOpt = None,
    data_root: DataRootOpt = None,
    batch_size: BatchOpt = None,
    engine: EngineOpt = None,
    wait: WaitOpt = True,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    progress: ProgressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Extract (or hit the cache), then train every head: the whole pipeline."""

    def call():
        from featurecache.stages.extract import extract as run_extract
        from featurecache.stages.train_head import train_heads

        p = _pipeline(
            pipeline,
            data=data,
            backbone=backbone,
            head=head,
            weights=weights,
            pooling=pooling,
            input_size=input_size,
            cache=cache,
            output=output,
            data_root=data_root,
            batch_size=batch_size,
            engine=engine,
        )
        cluster = _cluster(scheduler, workers)
        extracted = run_extract(p, progress=_progress(progress), wait=wait, cluster=cluster)
        if not as_json:
            _print_extract(extracted)
        return extracted, train_heads(p)

    extracted, heads = _guard(call)
    _emit(
        as_json,
        {"extract": [r.to_dict() for r in extracted], "heads": [r.to_dict() for r in heads]},
        lambda: _print_heads(heads),
    )
    raise typer.Exit(_partial(extracted))


@app.command()
def finetune(
    pipeline: PipelineArg = None,
    data: DataOpt = None,
    backbone: BackboneOpt = None,
    weights: WeightsOpt = "imagenet",
    pooling: PoolingOpt = "avg",
    input_size: SizeOpt = None,
    cache: CacheOpt = None,
    output: OutputOpt = None,
    data_root: DataRootOpt = None,
    head_name: Annotated[
        str | None,
        typer.Option(
            "--head-name",
            help="The trained dense head "
            "to start from (its folder name). Default: the pipeline's, or "
            "'dense'.",
            show_default=False,
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Most epochs (default 10; early stopping on validation loss may end sooner).",
            show_default=False,
        ),
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Most batches per epoch, to bound a CPU run (0: the whole training split).",
            show_default=False,
        ),
    ] = None,
    learning_rate: Annotated[
        float | None,
        typer.Option(help="SGD learning rate (default 1e-4, momentum 0.9).", show_default=False),
    ] = None,
    unfreeze: Annotated[
        list[str] | None,
        typer.Option(
            help="Also unfreeze layers whose names match this regular expression; repeatable.",
            show_default=False,
        ),
    ] = None,
    augment: Annotated[
        bool | None,
        typer.Option(
            "--augment/--no-augment",
            help="Random flip, rotation, zoom and translation while training (default on).",
            show_default=False,
        ),
    ] = None,
    progress: ProgressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune the backbone's last block under the trained dense head (after `run`).

    Checks first that the rebuilt model reproduces the head's output on cached features;
    saves a checkpoint every epoch and resumes after an interruption.
    """

    def call():
        from dataclasses import replace

        from featurecache.config import Augmentation
        from featurecache.stages.finetune import finetune as run_finetune

        p = _pipeline(
            pipeline,
            data=data,
            backbone=backbone,
            head=["dense"] if data else None,
            weights=weights,
            pooling=pooling,
            input_size=input_size,
            cache=cache,
            output=output,
            data_root=data_root,
        )
        changes: dict[str, Any] = {}
        for key, value in (
            ("head", head_name),
            ("epochs", epochs),
            ("max_steps", max_steps),
            ("learning_rate", learning_rate),
        ):
            if value is not None:
                changes[key] = value
        if unfreeze:
            changes["unfreeze"] = tuple(unfreeze)
        if augment is False:
            changes["augment"] = Augmentation(flip="", rotation=0.0, zoom=0.0, translation=0.0)
        p = replace(p, finetune=replace(p.finetune, **changes))
        return run_finetune(p, progress=_progress(progress))

    results = _guard(call)

    def text() -> None:
        for r in results:
            typer.echo(
                f"fine-tuned {r.dataset} x {r.backbone} on the {r.device}: parity check "
                f"passed (max abs diff {r.parity_max_abs_diff:.1e}), "
                f"{r.trainable_layers} layers trained, {r.epochs_run} epochs of "
                f"{r.steps_per_epoch} steps ({r.seconds:.0f} s) -> {r.folder}"
            )
            if not r.improved:
                typer.echo(
                    f"  validation loss never beat the start ({r.best_val_loss:.4f} vs "
                    f"{r.start_val_loss:.4f}): kept the starting weights"
                )
            typer.echo(f"  {'split':<12}{'frozen head':>12}{'fine-tuned':>12}")
            for split, acc in r.finetuned_accuracy.items():
                before = r.frozen_accuracy.get(split)
                shown = f"{before:.3f}" if before is not None else "-"
                typer.echo(f"  {split:<12}{shown:>12}{acc:>12.3f}")

    _emit(as_json, {"finetune": [r.to_dict() for r in results]}, text)


@app.command()
def refresh(
    pipelines: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Pipeline files or folders of them. Default: every pipelines/*.toml.",
            show_default=False,
        ),
    ] = None,
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

    def call():
        from featurecache.stages.refresh import load_all
        from featurecache.stages.refresh import refresh as run_refresh

        loaded = load_all(pipelines or [], data_root=data_root, cache=cache, output=output)
        cluster = _cluster(scheduler, workers)
        return run_refresh(loaded, progress=_progress(progress), wait=wait, cluster=cluster)

    results = _guard(call)

    def text() -> None:
        for r in results:
            typer.echo(f"pipeline {r.pipeline}:")
            _print_extract(r.extract)
            _print_heads(r.heads)

    _emit(as_json, {"refresh": [r.to_dict() for r in results]}, text)
    raise typer.Exit(_partial([e for r in results for e in r.extract]))


@app.command()
def gc(
    pipelines: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Pipeline files or folders: groups none of them declares are removed too. "
            "Without any, only superseded generations and leftovers of killed runs go.",
            show_default=False,
        ),
    ] = None,
    cache: CacheOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be removed, remove nothing.")
    ] = False,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Remove cache entries nothing references and say how many bytes that frees."""

    def call():
        from featurecache.config import cache_path
        from featurecache.stages.gc import collect
        from featurecache.stages.refresh import load_all

        loaded = load_all(pipelines, cache=cache) if pipelines else []
        return collect(cache_path(cache), loaded, dry_run=dry_run, wait=wait)

    result = _guard(call)

    def text() -> None:
        verb = "would remove" if result.dry_run else "removed"
        for path in result.removed:
            typer.echo(f"{verb} {path}")
        typer.echo(
            f"{verb} {len(result.removed)} entries, {result.freed_bytes / 1e6:.2f} MB "
            f"({result.freed_bytes} bytes)"
        )

    _emit(as_json, vars(result), text)


@app.command()
def predict(
    head: Annotated[
        Path,
        typer.Argument(
            help="A head folder written by train-head (holds head.json).", show_default=False
        ),
    ],
    images: Annotated[
        list[Path],
        typer.Argument(help="Image files or folders (searched recursively).", show_default=False),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Also write the predictions to this CSV file.",
            show_default=False,
        ),
    ] = None,
    batch_size: BatchOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Label images with a trained head: prints each image's label and probability."""

    def call():
        from featurecache.stages.predict import predict as run_predict

        return run_predict(head, images, batch_size=batch_size or 32)

    results = _guard(call)
    if output is not None:
        import csv

        with open(output, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label", "probability", "error"])
            for p in results:
                writer.writerow(
                    [
                        p.source,
                        p.label or "",
                        "" if p.probability is None else f"{p.probability:.6f}",
                        p.error or "",
                    ]
                )

    def text() -> None:
        for p in results:
            if p.error:
                typer.echo(f"{p.source}\tSKIPPED\t{p.error}")
            else:
                typer.echo(f"{p.source}\t{p.label}\t{p.probability:.4f}")

    _emit(as_json, [vars(p) for p in results], text)
    raise typer.Exit(EXIT_PARTIAL if any(p.error for p in results) else EXIT_OK)


@app.command()
def info(cache: CacheOpt = None, as_json: JsonOpt = False) -> None:
    """What the cache holds: data sets, backbones, images per split, size, provenance."""

    def call():
        from featurecache.config import cache_path
        from featurecache.stages.info import describe_cache

        root = cache_path(cache)
        return root, describe_cache(root)

    root, groups = _guard(call)

    def text() -> None:
        if not groups:
            typer.echo(f"{root}: empty cache")
        for g in groups:
            splits = ", ".join(f"{k} {v}" for k, v in sorted(g["split_counts"].items()))
            prov = g["provenance"]
            sha = prov["weights"]["sha256"] or "none (random weights)"
            typer.echo(f"{g['dataset']}/{g['group']} ({prov.get('generation', '')})")
            typer.echo(
                f"  backbone   {g['backbone']} ({g['input_size']} px, {g['pooling']} "
                f"pooling, {prov['preprocessing']})"
            )
            typer.echo(f"  weights    {g['weights']} sha256 {sha[:16]}")
            typer.echo(
                f"  images     {g['n_images']} ({splits}); features {g['feature_dim']}-d float32"
            )
            typer.echo(f"  on disk    {g['bytes'] / 1e6:.2f} MB; created {g['created']}")
            v = prov["versions"]
            typer.echo(
                f"  versions   featurecache {v['featurecache']}, keras {v['keras']}, "
                f"tensorflow {v['tensorflow']}"
            )
            if g["skipped"]:
                typer.echo(f"  skipped    {len(g['skipped'])} image(s):")
                for s in g["skipped"]:
                    typer.echo(f"    {s['reason']}")

    _emit(as_json, {"cache": str(root), "groups": groups}, text)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app() or EXIT_ERROR)


@app.command()
def report(
    targets: Annotated[
        list[Path],
        typer.Argument(
            help="Pipeline files, runs folders or cache folders to report on.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Report path without suffix: writes OUT.md, OUT.html, OUT.json and OUT_files/. "
            "Default: runs/<pipeline>/report for one pipeline, runs/report otherwise.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            help="Where train-head wrote the heads (as given to run / train-head): overrides "
            "the pipelines' own `output`; for a cache folder, where its heads are looked for "
            "(default: runs).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Markdown + HTML report of trained heads: top-1 with 95% bootstrap intervals, balanced
    accuracy, the write-ups' figures beside ours, confusion matrices, timings and provenance."""

    def call():
        from featurecache.config import DEFAULT_OUTPUT
        from featurecache.report import to_json, write_report
        from featurecache.stages.report import collect

        collection = collect(targets, output=output)
        target = out
        if target is None:
            names = {b.pipeline for b in collection.blocks}
            roots = {Path(b.heads[0].folder).parents[3] for b in collection.blocks if b.heads}
            base = roots.pop() if len(roots) == 1 else output or Path(DEFAULT_OUTPUT)
            target = base / names.pop() / "report" if len(names) == 1 else base / "report"
        return collection, write_report(collection, target), to_json

    collection, paths, to_json = _guard(call)
    missing = [(b.dataset, h) for b in collection.blocks for h in b.missing]

    def text() -> None:
        for block in collection.blocks:
            for run in block.heads:
                test = run.metrics.get("test", {})
                shown = f"test top-1 {test['accuracy']:.3f}" if test else ""
                if "accuracy_ci95" in test:
                    shown += " [{:.3f}, {:.3f}]".format(*test["accuracy_ci95"])
                typer.echo(
                    f"{block.dataset:<18} {block.backbone['name']:<14} {run.name:<22} {shown}"
                )
        for dataset, head in missing:
            typer.echo(f"warning: {dataset}: head {head!r} is not trained yet", err=True)
        typer.echo(f"wrote {paths['markdown']} and {paths['html']}")

    _emit(as_json, {**to_json(collection), "files": {k: str(v) for k, v in paths.items()}}, text)
