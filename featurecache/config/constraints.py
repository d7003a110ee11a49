"""What each configuration value may be: one declarative table per dataclass.

The pattern is scikit-learn's ``_parameter_constraints`` (``sklearn/utils/_param_validation.py``):
each table maps a field name to the list of things its value may be (a type, ``None``,
an :class:`Interval`, :class:`Options`, ...), and :func:`check` raises one
:class:`~featurecache.errors.ConfigError` that names the field, what it must be and what
it got, e.g. ``batch_size must be an integer >= 1, got 0``. The dataclasses of
:mod:`featurecache.config.model` call :func:`check` on creation, so a configuration is
checked the same way whether it comes from a pipeline file, from options or from Python.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any, TypeAlias

from featurecache.errors import ConfigError

#: A constraint table: each field's name -> what it may be (types, :class:`Interval`,
#: :class:`Options`, ``None``...); :func:`check` accepts a value one of them accepts.
Table: TypeAlias = Mapping[str, Sequence[Any]]

SPLITS = ("train", "validation", "test")
FORMATS = ("folder", "hdf5", "csv", "webdataset", "parquet", "huggingface")
#: Formats whose objects (tar shards, Parquet files) each hold many images.
MEMBER_FORMATS = ("webdataset", "parquet")
POOLINGS = ("avg", "max", "auto")  # auto: the family's own (keras-hub backbones)
ENGINES = ("auto", "keras", "onnxruntime", "openvino")
#: Arithmetic of the backbone: fp32 (the default), bf16 (OpenVINO) or int8 (a calibrated
#: QDQ model on ONNX Runtime or OpenVINO). Lower precision is opt-in, never chosen by ``auto``.
PRECISIONS = ("fp32", "bf16", "int8")
#: The engines that run each precision; the first is what ``auto`` becomes.
PRECISION_ENGINES = {"bf16": ("openvino",), "int8": ("onnxruntime", "openvino")}
#: JPEG decoders: ``pillow`` (every format) or ``simplejpeg`` (JPEGs by simplejpeg,
#: everything else by Pillow; :func:`featurecache.images.decode_bytes`).
DECODERS = ("pillow", "simplejpeg")
#: Older spellings of an engine, mapped once, when a configuration is made: ``tensorflow``
#: was ``keras``'s name before Keras backends were configurable.
ENGINE_ALIASES = {"tensorflow": "keras"}
DTYPES = ("float32", "float16")
FLIPS = ("", "horizontal", "vertical", "horizontal_and_vertical")
VIEWS = ("identity", "flip")
SOURCES = ("images", "cache")
OPTIMIZERS = ("sgd", "adam")
#: How ``featurecache audit`` draws its 2-D map of the embeddings (auto: UMAP where
#: umap-learn is installed, else scikit-learn's t-SNE).
MAPS = ("auto", "umap", "tsne", "none")


@dataclass(frozen=True)
class Interval:
    """A number of type ``kind`` (``Integral`` or ``Real``, never a bool) between bounds.

    ``closed`` says which bounds are included: ``"both"``, ``"left"``, ``"right"`` or
    ``"neither"``; ``None`` is an open end. ``what`` names the kind of value in messages.
    """

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"
    what: str = ""

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, self.kind):
            return False
        return self._within(value)

    def _within(self, value: Any) -> bool:
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        above = self.low is None or (value >= self.low if left else value > self.low)
        below = self.high is None or (value <= self.high if right else value < self.high)
        return above and below

    def __str__(self) -> str:
        what = self.what or ("an integer" if self.kind is Integral else "a number")
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        if self.high is None:
            return f"{what} {'>=' if left == '[' else '>'} {self.low}"
        return f"{what} in {left}{self.low}, {self.high}{right}"


@dataclass(frozen=True)
class Options:
    """One of the given values."""

    values: tuple[Any, ...]

    def accepts(self, value: Any) -> bool:
        return value in self.values

    def __str__(self) -> str:
        return f"one of {self.values}"


@dataclass(frozen=True)
class Strings:
    """A sequence of strings (a TOML array of strings)."""

    what: str = "a list of strings"

    def accepts(self, value: Any) -> bool:
        return (
            isinstance(value, Sequence)
            and not isinstance(value, str)
            and all(isinstance(v, str) for v in value)
        )

    def __str__(self) -> str:
        return self.what


@dataclass(frozen=True)
class URL:
    """An fsspec URL (``s3://bucket/prefix``), kept as a string."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and "://" in value

    def __str__(self) -> str:
        return "a path or a URL (s3://bucket/prefix)"


@dataclass(frozen=True)
class Grid:
    """A mapping of parameter names to non-empty sequences of candidate values."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, Mapping) and all(
            isinstance(v, Sequence) and not isinstance(v, str) and len(v) > 0
            for v in value.values()
        )

    def __str__(self) -> str:
        return (
            "a table mapping parameter names to non-empty lists of values, "
            "e.g. search = {C = [0.01, 0.1, 1.0]}"
        )


_TYPE_WORDS = {
    str: "a string",
    bool: "true or false",
    Integral: "an integer",
    Real: "a number",
    Mapping: "a table",
    Path: "a path",
}


def _accepts(allowed: Any, value: Any) -> bool:
    if allowed is None:
        return value is None
    if isinstance(allowed, type):
        return isinstance(value, allowed)
    return allowed.accepts(value)


def _describe(allowed: Any) -> str:
    if allowed is None:
        return "None"
    if isinstance(allowed, type):
        return _TYPE_WORDS.get(allowed, f"a {allowed.__name__}")
    return str(allowed)


def nested(cls: type, table: Mapping[str, Any], key: str) -> Any:
    """``cls(**table)`` for a table given under ``key`` (a data set's ``split``); an
    unknown key or a bad value is named with ``key``.

    Raises
    ------
    ConfigError
        With ``key`` as its key, so the loader points at the line of ``key = {...}``.
    """
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in table if k not in allowed]
    if unknown:
        message = f"unknown key {unknown[0]!r} in {key}; allowed: {', '.join(allowed)}"
        raise ConfigError(message, key=key)
    try:
        return cls(**table)
    except ConfigError as exc:
        raise exc.within(key, key=key) from exc


def complete(obj: Any, **values: Any) -> None:
    """Set fields of a frozen dataclass in its ``__post_init__`` (normalised values)."""
    for name, value in values.items():
        object.__setattr__(obj, name, value)


def check(obj: Any, table: Table) -> None:
    """Check every field of ``obj`` that ``table`` names.

    Raises
    ------
    ConfigError
        For the first field whose value none of its constraints accepts; ``key`` is
        the field's name.
    """
    for key, allowed in table.items():
        value = getattr(obj, key)
        if not any(_accepts(a, value) for a in allowed):
            wanted = " or ".join(_describe(a) for a in allowed)
            raise ConfigError(f"{key} must be {wanted}, got {value!r}", key=key)


_FRACTION = Interval(Real, 0, 1, closed="left", what="a fraction")

SPLIT_RATIOS: Table = {"validation": [_FRACTION], "test": [_FRACTION], "seed": [Integral]}
HDF5_SOURCE: Table = {"path": [Path], "images": [str], "labels": [str], "classes": [str, None]}
DATASET: Table = {
    "name": [str],
    "format": [Options(FORMATS)],
    "path": [Path, URL(), None],
    "hdf5": [Mapping],
    "files": [Mapping],
    "image": [str],
    "label": [str],
    "classes": [Strings("a list of class names")],
    "resplit": [bool],
}
BACKBONE: Table = {
    "name": [str],
    "weights": [str],
    "input_size": [Interval(Integral, 32, None, what="an integer number of pixels")],
    "pooling": [Options(POOLINGS)],
    "args": [Mapping],
    "engine": [Options(ENGINES)],
    "dtype": [Options(DTYPES)],
    "finetune_from": [None, bool, str],
    "taps": [Strings("a list of layer names")],
    "views": [Strings(f"a list of views from {VIEWS}")],
    "precision": [Options(PRECISIONS)],
    "decoder": [Options(DECODERS)],
    "guard_median": [Interval(Real, -1, 1, what="a cosine similarity")],
    "guard_min": [Interval(Real, -1, 1, what="a cosine similarity")],
}
HEAD: Table = {
    "name": [str],
    "kind": [str],
    "params": [Mapping],
    "search": [Grid()],
    "cv": [Interval(Integral, 2, None)],
    "search_samples": [Interval(Integral, 0, None)],
    "taps": [Strings("a list of layer names")],
    "views": [bool],
}
REFERENCE: Table = {
    "dataset": [str],
    "source": [str],
    "model": [str],
    "value": [Interval(Real, 0, 1, what="a top-1 accuracy")],
    "split": [Options(SPLITS)],
    "comparable": [bool],
    "note": [str],
}
AUGMENTATION: Table = {
    "flip": [Options(FLIPS)],
    "rotation": [Interval(Real, 0, 1, what="a fraction of a full turn")],
    "zoom": [Interval(Real, 0, 1, closed="left", what="a fraction of the image side")],
    "translation": [Interval(Real, 0, 1, closed="left", what="a fraction of the image side")],
}
FINETUNE: Table = {
    "head": [str],
    "epochs": [Interval(Integral, 1, None)],
    "max_steps": [Interval(Integral, 0, None)],
    "batch_size": [Interval(Integral, 1, None)],
    "learning_rate": [Interval(Real, 0, None, closed="neither")],
    "momentum": [Interval(Real, 0, 1)],
    "patience": [Interval(Integral, 0, None)],
    "unfreeze": [Strings("a list of regular expressions")],
    "seed": [Integral],
    "source": [Options(SOURCES)],
    "optimizer": [Options(OPTIMIZERS)],
}
AUDIT: Table = {
    "threshold": [Interval(Real, 0, 1, closed="neither", what="a cosine similarity")],
    "neighbours": [Interval(Integral, 2, 100)],
    "cv": [Interval(Integral, 2, 20)],
    "exact_at_most": [Interval(Integral, 1, None)],
    "map": [Options(MAPS)],
    "map_points": [Interval(Integral, 10, None)],
    "thumbnails": [Interval(Integral, 0, 1000)],
    "outliers": [Interval(Real, 0, 0.5, closed="neither", what="a fraction of the images")],
    "seed": [Integral],
}
PIPELINE: Table = {
    "name": [str],
    "batch_size": [Interval(Integral, 1, None)],
    "description": [str],
}
