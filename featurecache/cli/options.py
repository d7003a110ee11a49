"""Every command-line option, declared once: a typer ``Annotated`` alias per option.

A command takes an option by annotating a parameter with its alias (``batch_size:
BatchOpt = None``); options that go together are gathered into groups in
:mod:`featurecache.cli.groups`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def _option(help: str, *decls: str, **kwargs: Any) -> Any:
    """A ``typer.Option`` with ``help`` and no default shown (the help says it)."""
    return typer.Option(*decls, help=help, show_default=False, **kwargs)


PipelineArg = Annotated[
    Path | None,
    typer.Argument(
        help="Pipeline file (pipelines/*.toml). Omit it and use --data instead.", show_default=False
    ),
]
PipelinesArg = Annotated[
    list[Path] | None,
    typer.Argument(
        help="Pipeline files or folders of them. Default: every pipelines/*.toml.",
        show_default=False,
    ),
]
DataOpt = Annotated[
    list[str] | None,
    _option(
        "Data set without a pipeline file: a class folder, a CSV manifest (path,label[,split]) "
        "or an HDF5 file; HDF5 splits as train=a.h5 --data test=b.h5.",
        "--data",
    ),
]
BackboneOpt = Annotated[
    list[str] | None,
    _option(
        "With --data: backbone name (see `featurecache backbones`); repeat for several. "
        "Default: mobilenet_v2.",
        "--backbone",
        "-b",
    ),
]
WeightsOpt = Annotated[
    str | None,
    _option(
        "With --data: 'imagenet' (the default; Keras downloads and caches them), a weights "
        "file, or 'none' (random: tests only). With a pipeline file, set it in the file."
    ),
]
PoolingOpt = Annotated[
    str | None,
    _option("With --data: global pooling, 'avg' (default) or 'max'. Not with a pipeline file."),
]
SizeOpt = Annotated[
    int | None,
    _option("With --data: input size in pixels (default: the backbone's). Not with a file."),
]
EngineOpt = Annotated[
    str | None,
    _option(
        "What runs the backbone: auto (the default, or $FEATURECACHE_ENGINE: on "
        "TensorFlow with ONNX Runtime installed, times both and keeps the faster; "
        "elsewhere keras), keras (the Keras model on KERAS_BACKEND), onnxruntime "
        "(TensorFlow backend; pip install 'featurecache[onnx]') or openvino (pip install "
        "'featurecache[openvino]'). Overrides the pipeline file's."
    ),
]
PrecisionOpt = Annotated[
    str | None,
    _option(
        "The backbone's arithmetic: fp32 (default), bf16 (OpenVINO) or int8 (calibrated on "
        "the data set's training images). Checked against fp32 before extracting; its own "
        "cache group. Overrides the pipeline file's."
    ),
]
DecoderOpt = Annotated[
    str | None,
    _option(
        "What decodes JPEGs: pillow (default) or simplejpeg (faster on photos under twice "
        "the input size; slightly different pixels, so its own cache group)."
    ),
]
DtypeOpt = Annotated[
    str | None,
    _option("Storage type of the features: float32 (default) or float16 (half the cache)."),
]
CacheOpt = Annotated[
    str | None,
    _option(
        "Cache folder, or URL (s3://bucket/prefix; credentials from the usual AWS_* "
        "variables). Default: the pipeline's 'cache', $FEATURECACHE_CACHE, or ./cache."
    ),
]
DataRootOpt = Annotated[
    Path | None,
    _option(
        "Folder that relative data paths in the pipeline file are resolved against. "
        "Default: $FEATURECACHE_DATA_ROOT, then the file's data_root."
    ),
]
HeadOpt = Annotated[
    list[str] | None,
    _option(
        "With --data: head kind (logistic_regression, linear_svm, knn, random_forest, dense, "
        "or a scikit-learn import path); repeatable. Default: logistic_regression.",
        "--head",
    ),
]
OutputOpt = Annotated[
    Path | None,
    _option("The runs folder, where heads go. Default: the pipeline's 'output' or ./runs."),
]
BatchOpt = Annotated[int | None, _option("Images per backbone batch (default 32).", min=1)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON document instead of text.")]
WaitOpt = Annotated[
    bool,
    typer.Option(
        "--wait/--no-wait",
        help="If another process is writing the same data set: wait for it (default), or "
        "exit at once with code 4.",
    ),
]
SchedulerOpt = Annotated[
    str | None,
    _option(
        "Run the backbones on an existing Dask cluster: its scheduler address, e.g. "
        "tcp://host:8786 (pip install 'featurecache[dask]'). Workers must see the data set "
        "and the cache at the same paths (or use an s3:// cache).",
        envvar="FEATURECACHE_SCHEDULER",
    ),
]
WorkersOpt = Annotated[
    int | None,
    _option("Run the backbones on a new local Dask cluster of this many worker processes.", min=1),
]
ProgressOpt = Annotated[
    bool | None,
    _option(
        "Progress bar on stderr (default: only when stderr is a terminal).",
        "--progress/--no-progress",
    ),
]


HeadNameOpt = Annotated[
    str | None,
    _option(
        "The trained dense head to start from (its name). Default: the pipeline's "
        "[finetune] head, or 'dense'.",
        "--head-name",
    ),
]
EpochsOpt = Annotated[
    int | None,
    _option("Most epochs (default 10; early stopping on validation loss may end sooner).", min=1),
]
MaxStepsOpt = Annotated[
    int | None,
    _option("Most batches per epoch, to bound a CPU run (0: the whole training split).", min=0),
]
LearningRateOpt = Annotated[
    float | None, _option("SGD learning rate (default 1e-4, momentum 0.9).")
]
UnfreezeOpt = Annotated[
    list[str] | None,
    _option("Also unfreeze layers whose names match this regular expression; repeatable."),
]
AugmentOpt = Annotated[
    bool | None,
    _option(
        "Random flip, rotation, zoom and translation while training (default on).",
        "--augment/--no-augment",
    ),
]
FromCacheOpt = Annotated[
    bool | None,
    _option(
        "Train the layers after the backbone's finetune_from and the head from the cached "
        'activation maps instead of images ([finetune] source = "cache").',
        "--from-cache/--from-images",
    ),
]
HeadFolderArg = Annotated[
    Path,
    typer.Argument(
        metavar="HEAD_FOLDER",
        help="A head folder written by train-head or finetune (holds head.json or finetune.json).",
        show_default=False,
    ),
]
ImagesArg = Annotated[
    list[Path],
    typer.Argument(help="Image files or folders (searched recursively).", show_default=False),
]
TrustPickleOpt = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Load a head saved as model.joblib (a pickle, from before heads were saved "
        "with skops). Loading a pickle runs any code it holds: only for heads you made.",
    ),
]
CsvOpt = Annotated[Path | None, _option("Also write the predictions to this CSV file.")]
GcPipelinesArg = Annotated[
    list[Path] | None,
    typer.Argument(
        help="Pipeline files or folders: groups none of them declares are removed too. "
        "Without any, only superseded generations and leftovers of killed runs go.",
        show_default=False,
    ),
]
VerifyTargetsArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="PIPELINE_OR_CACHE",
        help="Caches (folders or URLs) to check whole, or pipeline files or folders of them: "
        "their caches' groups only, recomputed by --repair as they say. Default: "
        "--cache, $FEATURECACHE_CACHE or ./cache.",
        show_default=False,
    ),
]
RepairOpt = Annotated[
    bool,
    typer.Option(
        "--repair",
        help="Recompute damaged rows from their images (as the pipeline files given say, "
        "else as each group's provenance records), point `current` at the newest clean "
        "generation, rewrite old caches with checksums.",
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Say what would be removed, remove nothing.")
]
TargetsArg = Annotated[
    list[Path],
    typer.Argument(
        help="Pipeline files, runs folders or cache folders to report on.", show_default=False
    ),
]
ReportOpt = Annotated[
    Path | None,
    _option(
        "The report's path without suffix: writes REPORT.md, REPORT.html, REPORT.json and "
        "REPORT_files/. Default: <runs>/<pipeline>/report for one pipeline, <runs>/report "
        "otherwise."
    ),
]
ReportRunsOpt = Annotated[
    Path | None,
    _option(
        "The runs folder the heads were trained into (as given to run / train-head): "
        "overrides the pipelines' own `output`; for a cache folder, where its heads are "
        "looked for (default: runs)."
    ),
]
