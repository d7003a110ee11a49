"""Pipelines from options instead of a file: ``--data``, ``--backbone``, ``--head``.

The objects are the same a pipeline file gives, so a file and a quick command line
mean exactly the same thing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from featurecache.config.backbone import BackboneConfig, default_engine
from featurecache.config.constraints import SPLITS
from featurecache.config.dataset import DatasetConfig, Hdf5Source
from featurecache.config.load import load_pipeline
from featurecache.config.model import (
    DEFAULT_OUTPUT,
    HeadConfig,
    Pipeline,
    cache_path,
    is_url,
)
from featurecache.errors import ConfigError


def dataset_from_option(values: Sequence[str], name: str | None = None) -> DatasetConfig:
    """A data set from ``--data`` values.

    ``--data PATH`` takes a class folder, a CSV manifest, an HDF5 file, WebDataset tar
    shards or Parquet files (``--data`` once per file, or a brace pattern,
    ``train-{000..009}.tar``; ``split=PATH`` to declare splits); any of them but HDF5
    may be an fsspec URL (``s3://bucket/prefix``). A folder of shards or Parquet files
    goes in a pipeline file (``format`` and ``path``);
    ``--data train=a.h5 --data test=b.h5`` gives one HDF5 file per split. HDF5 keys are
    found in the file: the one 3- or 4-d uint8 array is the images, the 1-d integer array
    of the same length the labels, ``list_classes`` the class names.

    Raises
    ------
    ConfigError
        For an unknown split name, or several paths that are not HDF5 splits.
    """
    pairs = [
        v.split("=", 1) if "=" in v and "://" not in v.split("=", 1)[0] else ["", v] for v in values
    ]
    suffixes = {v.rpartition(".")[2].lower() for _, v in pairs}
    if suffixes and suffixes <= {"tar", "parquet"}:
        return _files_dataset(pairs, name)
    paths = [Path(p).expanduser() for _, p in pairs]
    if any(p.suffix.lower() in (".h5", ".hdf5") for p in paths):
        hdf5 = {}
        for (split, _), p in zip(pairs, paths, strict=True):
            split = split or "train"
            if split not in SPLITS:
                raise ConfigError(f"--data {split}=...: split names are {', '.join(SPLITS)}")
            hdf5[split] = Hdf5Source(path=p, images="", labels="")
        return DatasetConfig(name=name or paths[0].stem, format="hdf5", hdf5=hdf5)
    if len(paths) != 1:
        raise ConfigError("give one --data folder or CSV file (several only for HDF5 splits)")
    given = pairs[0][1]
    if is_url(given):
        return DatasetConfig(
            name=name or given.rstrip("/").rsplit("/", 1)[-1] or "data", path=given
        )
    path = paths[0]
    return DatasetConfig(name=name or path.resolve().name or "data", path=path)


def _files_dataset(pairs: Sequence[Sequence[str]], name: str | None) -> DatasetConfig:
    """Tar shards or Parquet files, each ``split=PATH`` or ``PATH`` (no split declared)."""
    files: dict[str, list[str]] = {}
    for split, value in pairs:
        if split and split not in SPLITS:
            raise ConfigError(f"--data {split}=...: split names are {', '.join(SPLITS)}")
        files.setdefault(split, []).append(
            value if is_url(value) else str(Path(value).expanduser().absolute())
        )
    if "" in files and len(files) > 1:
        raise ConfigError("give a split to every --data file (train=..., test=...) or to none")
    stem = pairs[0][1].rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0].split("-", 1)[0]
    by_split = {split: tuple(paths) for split, paths in files.items()}
    return DatasetConfig(name=name or stem or "data", files=by_split)


def pipeline_from_options(
    *,
    data: Sequence[str],
    backbones: Sequence[str] = (),
    heads: Sequence[str] = (),
    weights: str = "imagenet",
    pooling: str = "avg",
    input_size: int | None = None,
    engine: str | None = None,
    dtype: str = "float32",
    cache: str | Path | None = None,
    output: str | Path | None = None,
    batch_size: int = 32,
    name: str | None = None,
    precision: str = "fp32",
    decoder: str = "pillow",
) -> Pipeline:
    """A :class:`Pipeline` from command-line options (no file).

    ``backbones`` are names (default ``mobilenet_v2``), each with the same ``weights``,
    ``pooling``, ``input_size`` (default: each backbone's own), ``engine``, ``dtype``,
    ``precision`` and ``decoder``;
    ``heads`` are head kinds (default ``logistic_regression``).

    Raises
    ------
    ConfigError
        Without ``data``, or for a bad name or value.
    """
    if not data:
        raise ConfigError("give a pipeline file, or --data PATH (see --help)")
    dataset = dataset_from_option(data, name=name)
    sized: dict[str, Any] = {} if input_size is None else {"input_size": input_size}
    configs = tuple(
        BackboneConfig(
            name=b,
            weights=weights,
            pooling=pooling,
            engine=engine or default_engine(),
            dtype=dtype,
            precision=precision,
            decoder=decoder,
            **sized,
        )
        for b in (backbones or ["mobilenet_v2"])
    )
    return Pipeline(
        name=name or dataset.name,
        datasets=(dataset,),
        backbones=configs,
        heads=tuple(HeadConfig(kind=h) for h in (heads or ["logistic_regression"])),
        cache=cache_path(cache),
        output=Path(output or DEFAULT_OUTPUT),
        batch_size=batch_size,
    )


def resolve_pipeline(
    pipeline: str | Path | None,
    *,
    data: Sequence[str] | None = None,
    backbone: Sequence[str] | None = None,
    heads: Sequence[str] | None = None,
    weights: str | None = None,
    pooling: str | None = None,
    input_size: int | None = None,
    engine: str | None = None,
    dtype: str | None = None,
    cache: str | Path | None = None,
    data_root: str | Path | None = None,
    output: str | Path | None = None,
    batch_size: int | None = None,
    precision: str | None = None,
    decoder: str | None = None,
) -> Pipeline:
    """The pipeline a command line names: the file ``pipeline`` (``engine``, ``dtype``,
    ``precision``, ``decoder`` and ``batch_size`` then override its own), or, without a
    file, ``data`` with ``backbone`` names, ``heads`` kinds and the backbone settings
    (:func:`pipeline_from_options`; ``weights`` default ``"imagenet"``, ``pooling`` ``"avg"``).

    Raises
    ------
    ConfigError
        If both a file and ``data`` / ``backbone`` / ``heads`` / ``weights`` /
        ``pooling`` / ``input_size`` are given, or the pipeline is invalid.
    """
    if pipeline is None:
        return pipeline_from_options(
            data=data or [],
            backbones=backbone or [],
            heads=heads or [],
            weights=weights or "imagenet",
            pooling=pooling or "avg",
            input_size=input_size,
            cache=cache,
            output=output,
            batch_size=batch_size or 32,
        ).with_overrides(engine=engine, dtype=dtype, precision=precision, decoder=decoder)
    if data or backbone or heads:
        raise ConfigError("give either a pipeline file or --data/--backbone/--head")
    _refuse_backbone_options(pipeline, weights=weights, pooling=pooling, input_size=input_size)
    loaded = load_pipeline(pipeline, data_root=data_root, cache=cache, output=output)
    return loaded.with_overrides(
        batch_size=batch_size, engine=engine, dtype=dtype, precision=precision, decoder=decoder
    )


def _refuse_backbone_options(pipeline: str | Path, **given: object) -> None:
    """Refuse ``--weights``, ``--pooling`` and ``--input-size`` beside a pipeline file.

    Unlike ``--engine`` and ``--dtype`` (how the same features are computed and
    stored), these choose other features: applied from the command line, the file
    would no longer say what the cache and the heads hold, and a weights file or an
    input size fits one architecture, not every backbone of the file.

    Raises
    ------
    ConfigError
        Naming the options given and where to write them instead.
    """
    named = {key: value for key, value in given.items() if value is not None}
    if not named:
        return
    options = ", ".join(f"--{key.replace('_', '-')}" for key in named)
    settings = ", ".join(f"{key} = {json.dumps(value)}" for key, value in named.items())
    raise ConfigError(
        f"{options} go with --data only; with a pipeline file, put {settings} in the "
        f"[[backbones]] tables of {pipeline}"
    )
