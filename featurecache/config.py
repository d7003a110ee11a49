"""Pipeline configuration: frozen dataclasses and the ``pipelines/*.toml`` loader.

A pipeline declares data sets x backbones x heads. The same objects are built from
CLI options (``--data``, ``--backbone``, ``--head``) by :func:`pipeline_from_options`,
so a file and a quick command line mean exactly the same thing.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featurecache.backbones import BackboneConfig
from featurecache.errors import ConfigError, FeaturecacheError
from featurecache.storage import is_url

DATA_ROOT_ENV = "FEATURECACHE_DATA_ROOT"
CACHE_ENV = "FEATURECACHE_CACHE"
DEFAULT_CACHE = "cache"
DEFAULT_OUTPUT = "runs"
FORMATS = ("folder", "hdf5", "csv")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True, kw_only=True)
class SplitRatios:
    """Fractions for a stratified split when the data set declares none.

    ``train`` is what remains after ``validation`` and ``test``. The split is
    deterministic: within each class, images are ranked by a seeded hash of their
    key, so a given image keeps its split when others are added.
    """

    validation: float = 0.1
    test: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("validation", "test"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"split.{name} must be a fraction in [0, 1), got {value!r}")
        if self.validation + self.test >= 1.0:
            raise ConfigError(
                f"split.validation + split.test must leave some training data, "
                f"got {self.validation} + {self.test}"
            )


@dataclass(frozen=True, kw_only=True)
class Hdf5Source:
    """One split of an HDF5 data set: the file and the keys of its arrays.

    ``images`` is a uint8 array of shape ``(n, height, width, 3)`` (or ``(n, h, w)``
    grayscale); ``labels`` is an integer array of shape ``(n,)``; ``classes``
    optionally names a byte-string array of class names indexed by label.
    """

    path: Path
    images: str
    labels: str
    classes: str | None = None


@dataclass(frozen=True, kw_only=True)
class DatasetConfig:
    """One data set: where it is, its format, and how to split it.

    ``classes`` keeps only the named classes of a folder or CSV data set (empty:
    all). ``resplit`` pools the images of every split folder (or CSV split column)
    and splits them again with ``split`` (stratified), for data sets whose own
    split is not the one to compare with.
    """

    name: str
    format: str
    path: Path | None = None
    hdf5: Mapping[str, Hdf5Source] = field(default_factory=dict)
    split: SplitRatios = field(default_factory=SplitRatios)
    classes: tuple[str, ...] = ()
    resplit: bool = False

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "format": self.format}
        if self.path is not None:
            out["path"] = str(self.path)
        if self.hdf5:
            out["hdf5"] = {
                split: {
                    "path": str(s.path),
                    "images": s.images,
                    "labels": s.labels,
                    "classes": s.classes,
                }
                for split, s in self.hdf5.items()
            }
        out["split"] = {
            "validation": self.split.validation,
            "test": self.split.test,
            "seed": self.split.seed,
        }
        if self.classes:  # only when set, so existing caches keep their fingerprint
            out["classes"] = list(self.classes)
        if self.resplit:
            out["resplit"] = True
        return out


@dataclass(frozen=True, kw_only=True)
class HeadConfig:
    """A head: a name for its output folder, a kind, and its parameters.

    ``kind`` is ``dense`` (the Keras dense head), a registered scikit-learn name
    (``logistic_regression``, ``linear_svm``, ``knn``, ``random_forest``) or the
    import path of any scikit-learn classifier (``sklearn.ensemble.ExtraTreesClassifier``).

    ``search`` maps parameter names to candidate values (``{C = [0.01, 0.1, 1]}``):
    the head is then tuned by a grid search with ``cv``-fold stratified
    cross-validation on the training split only (top-1 accuracy), and refitted on
    the whole training split with the best values. ``search_samples`` (0: all)
    bounds the images the search uses (a stratified sample of the training split),
    for large data sets; the refit still uses all of them.
    """

    name: str
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)
    search: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    cv: int = 5
    search_samples: int = 0


@dataclass(frozen=True, kw_only=True)
class Reference:
    """A published figure to compare with, shown beside ours by ``featurecache report``.

    ``value`` is a top-1 accuracy (fraction) on ``split`` of data set ``dataset``;
    ``model`` says what produced it; ``comparable`` is false when the data or the
    backbone differ from ours, and ``note`` then says how.
    """

    dataset: str
    source: str
    model: str
    value: float
    split: str = "test"
    comparable: bool = True
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class Augmentation:
    """Random augmentation applied while fine-tuning (Keras preprocessing layers).

    ``flip``: ``"horizontal"``, ``"vertical"``, ``"horizontal_and_vertical"`` or ``""``;
    ``rotation``: fraction of a full turn (0.05 = +/- 18 degrees); ``zoom`` and
    ``translation``: fraction of the image side. All 0 / ``""`` disables it.
    """

    flip: str = "horizontal"
    rotation: float = 0.05
    zoom: float = 0.1
    translation: float = 0.1


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """How ``featurecache finetune`` trains (the Keras blog recipe by default).

    ``head`` names the trained dense head to start from; ``unfreeze`` adds layer-name
    patterns (regular expressions) to the backbone's registered last block;
    ``max_steps`` bounds the batches per epoch (0: the whole training split).
    """

    head: str = "dense"
    epochs: int = 10
    max_steps: int = 0
    batch_size: int = 32
    learning_rate: float = 1e-4
    momentum: float = 0.9
    patience: int = 3
    unfreeze: tuple[str, ...] = ()
    augment: Augmentation = field(default_factory=Augmentation)
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class Pipeline:
    """Data sets x backbones x heads, and where results go."""

    name: str
    datasets: tuple[DatasetConfig, ...]
    backbones: tuple[BackboneConfig, ...]
    heads: tuple[HeadConfig, ...]
    cache: Path | str  # a folder, or a URL such as s3://bucket/prefix
    output: Path
    batch_size: int = 32
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    references: tuple[Reference, ...] = ()
    description: str = ""
    source: Path | None = None


# --------------------------------------------------------------------------- loading


def load_pipeline(
    path: str | Path,
    *,
    data_root: str | Path | None = None,
    cache: str | Path | None = None,
    output: str | Path | None = None,
) -> Pipeline:
    """Read and validate ``pipelines/<name>.toml``.

    Relative data paths are resolved against, in order: ``data_root``, the
    ``FEATURECACHE_DATA_ROOT`` environment variable, the file's own ``data_root``
    key (relative to the file), the file's folder.

    Raises
    ------
    ConfigError
        If the file is missing, is not valid TOML (the message gives the line), or
        has an unknown key, a missing key or a wrong value (the message names the
        key and its line).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pipeline file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return _parse(raw, path, data_root=data_root, cache=cache, output=output)
    except ConfigError as exc:
        key = getattr(exc, "key", None)
        line = _line_of(text, key, getattr(exc, "where", "")) if key else None
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(f"{where}: {exc}") from exc


def _line_of(text: str, key: str, where: str = "") -> int | None:
    """Line number of ``key = ...`` inside the table ``where`` names (e.g. ``backbones[1]``).

    ``tomllib`` reports lines only for syntax errors; for a bad value this finds
    the line by following the ``[[array]]`` headers.
    """
    section = re.match(r"(\w+)\[(\d+)\]", where)
    want = (section.group(1), int(section.group(2))) if section else None
    counts: dict[str, int] = {}
    current: tuple[str, int] | None = None
    key_line = re.compile(rf"^\s*({re.escape(key)}|\[+\s*[\w.]*\b{re.escape(key)})\b")
    first_in_section = None
    for number, line in enumerate(text.splitlines(), start=1):
        array = re.match(r"^\s*\[\[\s*([\w.]+)\s*\]\]", line)
        if array:
            name = array.group(1).split(".")[0]
            counts[name] = counts.get(name, -1) + 1
            current = (name, counts[name])
            if current == want and first_in_section is None:
                first_in_section = number
        if current == want and key_line.match(line):
            return number
    return first_in_section


def _fail(message: str, key: str, where: str = "") -> ConfigError:
    err = ConfigError(message)
    err.key = key  # type: ignore[attr-defined]
    err.where = where  # type: ignore[attr-defined]
    return err


def _check_keys(table: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise _fail(
                f"unknown key {key!r} in {where}; allowed: {', '.join(allowed)}", key, where
            )


def _require(table: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in table:
        raise _fail(f"{where} needs a {key!r} key", key, where)
    value = table[key]
    if not isinstance(value, kind):
        raise _fail(f"{where}.{key} must be a {kind.__name__}, got {value!r}", key, where)
    return value


def _resolve_root(raw: Mapping[str, Any], file: Path, data_root: str | Path | None) -> Path:
    if data_root is not None:
        return Path(data_root).expanduser()
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV]).expanduser()
    if "data_root" in raw:
        return (file.parent / str(raw["data_root"])).expanduser()
    return file.parent


def _parse(
    raw: Mapping[str, Any],
    file: Path,
    *,
    data_root: str | Path | None,
    cache: str | Path | None,
    output: str | Path | None,
) -> Pipeline:
    _check_keys(
        raw,
        (
            "name",
            "data_root",
            "cache",
            "output",
            "batch_size",
            "datasets",
            "backbones",
            "heads",
            "finetune",
            "references",
            "description",
        ),
        "the pipeline",
    )
    root = _resolve_root(raw, file, data_root)
    datasets = tuple(
        _parse_dataset(t, root, f"datasets[{i}]") for i, t in enumerate(_tables(raw, "datasets"))
    )
    backbones = tuple(
        _parse_backbone(t, f"backbones[{i}]") for i, t in enumerate(_tables(raw, "backbones"))
    )
    heads = tuple(_parse_head(t, f"heads[{i}]") for i, t in enumerate(raw.get("heads", [])))
    batch_size = raw.get("batch_size", 32)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise _fail(f"batch_size must be an integer >= 1, got {batch_size!r}", "batch_size")
    return Pipeline(
        name=str(raw.get("name", file.stem)),
        datasets=datasets,
        backbones=backbones,
        heads=heads or (HeadConfig(name="logistic_regression", kind="logistic_regression"),),
        cache=cache_path(cache if cache is not None else raw.get("cache")),
        output=Path(output if output is not None else raw.get("output", DEFAULT_OUTPUT)),
        batch_size=batch_size,
        finetune=_parse_finetune(raw.get("finetune", {})),
        references=tuple(
            _parse_reference(t, {d.name for d in datasets}, f"references[{i}]")
            for i, t in enumerate(raw.get("references", []))
        ),
        description=str(raw.get("description", "")),
        source=file,
    )


_FINETUNE_TYPES = {
    "head": str,
    "epochs": int,
    "max_steps": int,
    "batch_size": int,
    "learning_rate": (int, float),
    "momentum": (int, float),
    "patience": int,
    "unfreeze": list,
    "augment": (bool, dict),
    "seed": int,
}


def _parse_finetune(table: Mapping[str, Any]) -> FinetuneConfig:
    if not isinstance(table, dict):
        raise _fail("finetune must be a [finetune] table", "finetune")
    _check_keys(table, tuple(_FINETUNE_TYPES), "[finetune]")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if not isinstance(value, _FINETUNE_TYPES[key]) or (
            isinstance(value, bool) and key != "augment"
        ):
            raise _fail(f"[finetune].{key} has the wrong type: {value!r}", key)
        values[key] = value
    augment = values.pop("augment", True)
    if augment is False:
        augmentation = Augmentation(flip="", rotation=0.0, zoom=0.0, translation=0.0)
    elif isinstance(augment, dict):
        _check_keys(augment, ("flip", "rotation", "zoom", "translation"), "[finetune].augment")
        augmentation = Augmentation(**augment)
    else:
        augmentation = Augmentation()
    if "unfreeze" in values:
        values["unfreeze"] = tuple(str(p) for p in values["unfreeze"])
    for key in ("epochs", "batch_size"):
        if values.get(key, 1) < 1:
            raise _fail(f"[finetune].{key} must be >= 1", key)
    return FinetuneConfig(augment=augmentation, **values)


def cache_path(value: str | Path | None) -> Path | str:
    """The cache: ``value``, else ``$FEATURECACHE_CACHE``, else ``./cache``.

    A folder becomes a :class:`~pathlib.Path`; a URL (``s3://bucket/prefix``,
    ``memory://name``) stays a string (see :mod:`featurecache.storage`).
    """
    if value is None:
        value = os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    if is_url(value):
        return str(value)
    return Path(value).expanduser()


def _tables(raw: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    tables = raw.get(key)
    if not tables:
        raise _fail(f"the pipeline needs at least one [[{key}]] table", key)
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise _fail(f"{key} must be written as [[{key}]] tables", key)
    return tables


def _parse_dataset(table: Mapping[str, Any], root: Path, where: str) -> DatasetConfig:
    _check_keys(table, ("name", "format", "path", "hdf5", "split", "classes", "resplit"), where)
    name = _require(table, "name", str, where)
    fmt = table.get("format")
    hdf5: dict[str, Hdf5Source] = {}
    if "hdf5" in table:
        fmt = fmt or "hdf5"
        for split, src in dict(table["hdf5"]).items():
            if split not in SPLITS:
                raise _fail(
                    f"{where}.hdf5.{split}: split names are {', '.join(SPLITS)}", split, where
                )
            swhere = f"{where}.hdf5.{split}"
            _check_keys(src, ("path", "images", "labels", "classes"), swhere)
            hdf5[split] = Hdf5Source(
                path=_under(root, _require(src, "path", str, swhere)),
                images=_require(src, "images", str, swhere),
                labels=_require(src, "labels", str, swhere),
                classes=src.get("classes"),
            )
    path = _under(root, _require(table, "path", str, where)) if "path" in table else None
    if fmt is None and path is not None:
        fmt = "csv" if path.suffix.lower() == ".csv" else "folder"
    if fmt not in FORMATS:
        raise _fail(
            f"{where}.format must be one of {', '.join(FORMATS)}, got {fmt!r}", "format", where
        )
    if fmt == "hdf5" and not hdf5:
        raise _fail(
            f"{where}: an hdf5 data set needs [datasets.hdf5.<split>] tables", "format", where
        )
    if fmt != "hdf5" and path is None:
        raise _fail(f"{where} needs a 'path' key", "name", where)
    split_table = dict(table.get("split", {}))
    _check_keys(split_table, ("validation", "test", "seed"), f"{where}.split")
    try:
        split = SplitRatios(**split_table)
    except ConfigError as exc:
        raise _fail(f"{where}.{exc}", "split", where) from exc
    classes = table.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise _fail(f"{where}.classes must be a list of class names", "classes", where)
    if classes and fmt == "hdf5":
        raise _fail(f"{where}.classes works for folder and csv data sets", "classes", where)
    resplit = table.get("resplit", False)
    if not isinstance(resplit, bool):
        raise _fail(f"{where}.resplit must be true or false", "resplit", where)
    return DatasetConfig(
        name=name,
        format=fmt,
        path=path,
        hdf5=hdf5,
        split=split,
        classes=tuple(classes),
        resplit=resplit,
    )


def _under(root: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def _parse_backbone(table: Mapping[str, Any], where: str) -> BackboneConfig:
    _check_keys(
        table, ("name", "weights", "input_size", "pooling", "args", "engine", "dtype"), where
    )
    try:
        return BackboneConfig.create(
            _require(table, "name", str, where),
            weights=str(table.get("weights", "imagenet")),
            input_size=table.get("input_size"),
            pooling=str(table.get("pooling", "avg")),
            args=dict(table.get("args", {})),
            engine=str(table.get("engine", "tensorflow")),
            dtype=str(table.get("dtype", "float32")),
        )
    except FeaturecacheError as exc:
        fields = ("pooling", "input_size", "weights", "engine", "dtype")
        key = next((k for k in fields if str(exc).startswith(k)), "name")
        raise _fail(f"{where}: {exc}", key, where) from exc


def _parse_head(table: Mapping[str, Any], where: str) -> HeadConfig:
    if not isinstance(table, dict):
        raise _fail("heads must be written as [[heads]] tables", "heads")
    _check_keys(table, ("name", "kind", "params", "search", "cv", "search_samples"), where)
    kind = _require(table, "kind", str, where)
    params = table.get("params", {})
    if not isinstance(params, dict):
        raise _fail(f"{where}.params must be a table, got {params!r}", "params", where)
    search = table.get("search", {})
    if not isinstance(search, dict) or not all(isinstance(v, list) and v for v in search.values()):
        raise _fail(
            f"{where}.search must map parameter names to non-empty lists of values, "
            f"e.g. search = {{C = [0.01, 0.1, 1.0]}}; got {search!r}",
            "search",
            where,
        )
    cv = table.get("cv", 5)
    if not isinstance(cv, int) or isinstance(cv, bool) or cv < 2:
        raise _fail(f"{where}.cv must be an integer >= 2 (folds), got {cv!r}", "cv", where)
    samples = table.get("search_samples", 0)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
        raise _fail(
            f"{where}.search_samples must be an integer >= 0 (0: all), got {samples!r}",
            "search_samples",
            where,
        )
    return HeadConfig(
        name=str(table.get("name", kind)),
        kind=kind,
        params=params,
        search={k: tuple(v) for k, v in search.items()},
        cv=cv,
        search_samples=samples,
    )


_REFERENCE_TYPES = {
    "dataset": str,
    "source": str,
    "model": str,
    "value": (int, float),
    "split": str,
    "comparable": bool,
    "note": str,
}


def _parse_reference(table: Mapping[str, Any], datasets: set[str], where: str) -> Reference:
    if not isinstance(table, dict):
        raise _fail("references must be written as [[references]] tables", "references")
    _check_keys(table, tuple(_REFERENCE_TYPES), where)
    for key in ("dataset", "source", "model", "value"):
        _require(table, key, _REFERENCE_TYPES[key], where)  # type: ignore[arg-type]
    for key, value in table.items():
        kind = _REFERENCE_TYPES[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and key != "comparable"):
            raise _fail(f"{where}.{key} has the wrong type: {value!r}", key, where)
    if table["dataset"] not in datasets:
        raise _fail(
            f"{where}.dataset {table['dataset']!r} is not a data set of this pipeline "
            f"({', '.join(sorted(datasets))})",
            "dataset",
            where,
        )
    if not 0.0 <= table["value"] <= 1.0:
        raise _fail(f"{where}.value is a top-1 accuracy in [0, 1]", "value", where)
    if table.get("split", "test") not in SPLITS:
        raise _fail(f"{where}.split must be one of {', '.join(SPLITS)}", "split", where)
    return Reference(**{**table, "value": float(table["value"])})


# --------------------------------------------------------------------------- options


def dataset_from_option(values: Sequence[str], name: str | None = None) -> DatasetConfig:
    """Build a data set from ``--data`` values.

    ``--data PATH`` takes a class folder, a CSV manifest or an HDF5 file;
    ``--data train=a.h5 --data test=b.h5`` gives one HDF5 file per split. HDF5 keys
    are found automatically: the one 3- or 4-d uint8 array is the images, the 1-d
    integer array of the same length the labels, ``list_classes`` the class names.
    """
    pairs = [v.split("=", 1) if "=" in v else ["", v] for v in values]
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
    path = paths[0]
    fmt = "csv" if path.suffix.lower() == ".csv" else "folder"
    return DatasetConfig(name=name or path.resolve().name or "data", format=fmt, path=path)


def pipeline_from_options(
    *,
    data: Sequence[str],
    backbones: Sequence[str],
    heads: Sequence[str],
    weights: str = "imagenet",
    pooling: str = "avg",
    input_size: int | None = None,
    cache: str | Path | None = None,
    output: str | Path | None = None,
    batch_size: int = 32,
    name: str | None = None,
    engine: str = "tensorflow",
) -> Pipeline:
    """Build a :class:`Pipeline` from command-line options (no file)."""
    if not data:
        raise ConfigError("give a pipeline file, or --data PATH (see --help)")
    dataset = dataset_from_option(data, name=name)
    configs = tuple(
        BackboneConfig.create(
            b, weights=weights, pooling=pooling, input_size=input_size, engine=engine
        )
        for b in (backbones or ["mobilenet_v2"])
    )
    head_configs = tuple(HeadConfig(name=h, kind=h) for h in (heads or ["logistic_regression"]))
    return Pipeline(
        name=name or dataset.name,
        datasets=(dataset,),
        backbones=configs,
        heads=head_configs,
        cache=cache_path(cache),
        output=Path(output or DEFAULT_OUTPUT),
        batch_size=batch_size,
    )
