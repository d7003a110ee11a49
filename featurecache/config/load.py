"""Loading ``pipelines/*.toml`` into a :class:`~featurecache.config.Pipeline`.

Each TOML table becomes its dataclass (which checks itself): the loader only resolves
paths, refuses keys no dataclass has, and points an error at the file and line of the
key at fault (``pipelines/p.toml:9: unknown key 'poolin' in backbones[0]; ...``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from featurecache.config.backbone import BackboneConfig
from featurecache.config.dataset import DatasetConfig, Hdf5Source
from featurecache.config.hub import PREFIX as HUB_PREFIX
from featurecache.config.model import (
    DEFAULT_OUTPUT,
    AuditConfig,
    FinetuneConfig,
    HeadConfig,
    Pipeline,
    Reference,
    cache_path,
    is_url,
)
from featurecache.errors import ConfigError

DATA_ROOT_ENV = "FEATURECACHE_DATA_ROOT"
DEFAULT_PIPELINES = Path("pipelines")
#: Top-level keys of a pipeline file; ``data_root`` is the only one that is not a field.
PIPELINE_KEYS = (
    "name",
    "data_root",
    "cache",
    "output",
    "batch_size",
    "datasets",
    "backbones",
    "heads",
    "finetune",
    "audit",
    "references",
    "description",
)


def load_pipeline(
    path: str | Path,
    *,
    data_root: str | Path | None = None,
    cache: str | Path | None = None,
    output: str | Path | None = None,
) -> Pipeline:
    """Read and check ``pipelines/<name>.toml``.

    Relative data paths are resolved against, in order: ``data_root``, the
    ``FEATURECACHE_DATA_ROOT`` environment variable, the file's own ``data_root`` key
    (relative to the file), the file's folder. ``cache`` and ``output`` override the
    file's.

    Raises
    ------
    ConfigError
        If the file is missing, is not valid TOML (the message gives the line), or has
        an unknown key, a missing key or a wrong value (the message names the key and
        its line).
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
        return _pipeline(raw, path, data_root=data_root, cache=cache, output=output)
    except ConfigError as exc:
        line = _line_of(text, exc.key, exc.where) if exc.key else None
        raise ConfigError(f"{path}:{line}: {exc}" if line else f"{path}: {exc}") from exc


def discover(paths: Sequence[str | Path]) -> list[Path]:
    """Pipeline files named by ``paths`` (files, or folders of ``*.toml``); every
    ``pipelines/*.toml`` when ``paths`` is empty.

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
        shown = ", ".join(map(str, paths or [DEFAULT_PIPELINES]))
        raise ConfigError(f"no pipeline files (*.toml) in {shown}")
    return found


def load_all(paths: Sequence[str | Path], **overrides: Any) -> list[Pipeline]:
    """:func:`load_pipeline` of every file :func:`discover` finds in ``paths``."""
    return [load_pipeline(p, **overrides) for p in discover(paths)]


def _line_of(text: str, key: str, where: str = "") -> int | None:
    """Line number of ``key = ...`` inside the table ``where`` names (e.g. ``backbones[1]``).

    ``tomllib`` reports lines only for syntax errors; for a bad value this finds the line
    by following the ``[[array]]`` headers.
    """
    section = re.match(r"(\w+)\[(\d+)\]|\[(\w+)\]", where)
    want = None
    if section:
        want = (
            (section.group(1), int(section.group(2))) if section.group(1) else (section.group(3), 0)
        )
    counts: dict[str, int] = {}
    current: tuple[str, int] | None = None
    key_line = re.compile(rf"^\s*({re.escape(key)}|\[+\s*[\w.]*\b{re.escape(key)})\b")
    first_in_section = None
    for number, line in enumerate(text.splitlines(), start=1):
        array = re.match(r"^\s*\[\[\s*([\w.]+)\s*\]\]", line)
        table = re.match(r"^\s*\[\s*(\w+)\s*\]", line)
        if array:
            name = array.group(1).split(".")[0]
            counts[name] = counts.get(name, -1) + 1
            current = (name, counts[name])
        elif table and table.group(1) not in counts:  # [finetune]; not [datasets.hdf5.x]
            current = (table.group(1), 0)
        if (array or table) and current == want and first_in_section is None:
            first_in_section = number
        if current == want and key_line.match(line):
            return number
    return first_in_section


def _check_keys(table: Any, allowed: Sequence[str], where: str) -> None:
    if not isinstance(table, dict):
        name = where.split("[")[0]
        raise ConfigError(f"{name} must be written as [[{name}]] tables", key=name)
    for key in table:
        if key not in allowed:
            raise ConfigError(
                f"unknown key {key!r} in {where}; allowed: {', '.join(allowed)}",
                key=key,
                where=where,
            )


def _build(cls: type, table: Any, where: str, **values: Any) -> Any:
    """``cls(**table)``, with unknown or missing keys and bad values named for ``where``."""
    names = [f.name for f in dataclasses.fields(cls)]
    _check_keys(table, names, where)
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for key in required:
        if key not in table and key not in values:
            raise ConfigError(f"{where} needs a {key!r} key", key=key, where=where)
    try:
        return cls(**{**table, **values})
    except ConfigError as exc:
        raise exc.within(where) from exc


def _each(
    raw: Mapping[str, Any],
    key: str,
    build: Callable[[Any, str], Any],
    *,
    required: bool = False,
) -> tuple[Any, ...]:
    """``build(table, "key[i]")`` for every ``[[key]]`` table of the file."""
    tables = raw.get(key, [])
    if required and not tables:
        raise ConfigError(f"the pipeline needs at least one [[{key}]] table", key=key)
    if not isinstance(tables, list):
        raise ConfigError(f"{key} must be written as [[{key}]] tables", key=key)
    return tuple(build(table, f"{key}[{i}]") for i, table in enumerate(tables))


def _backbone(table: Any, where: str, *, folder: Path) -> BackboneConfig:
    """A ``[[backbones]]`` table; a relative keras-hub preset folder
    (``hub:../presets/x``) is resolved against the pipeline file's folder, as
    ``data_root`` is."""
    name = table.get("name") if isinstance(table, dict) else None
    if isinstance(name, str) and name.startswith(HUB_PREFIX) and name[4:].startswith("."):
        table = {**table, "name": HUB_PREFIX + str(folder / name[4:])}
    return _build(BackboneConfig, table, where)


def _resolve_root(raw: Mapping[str, Any], file: Path, data_root: str | Path | None) -> Path:
    if data_root is not None:
        return Path(data_root).expanduser()
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV]).expanduser()
    if "data_root" in raw:
        return (file.parent / str(raw["data_root"])).expanduser()
    return file.parent


def _under(root: Path, value: Any) -> Any:
    if not isinstance(value, str):
        return value  # the dataclass names the wrong type
    if is_url(value):
        return value
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def _dataset(table: Any, where: str, *, root: Path) -> DatasetConfig:
    values: dict[str, Any] = {}
    if isinstance(table, dict) and "path" in table:
        values["path"] = _under(root, table["path"])
        given = values["path"]
        if table.get("format") == "huggingface" and isinstance(given, Path) and not given.exists():
            values["path"] = table["path"]  # a name on the Hugging Face hub
    if isinstance(table, dict) and "files" in table:
        values["files"] = _files_under(root, table["files"])
    if isinstance(table, dict) and isinstance(table.get("hdf5"), dict):
        values["hdf5"] = {
            split: _hdf5_source(source, root, where, split)
            for split, source in table["hdf5"].items()
        }
    return _build(DatasetConfig, table, where, **values)


def _files_under(root: Path, files: Any) -> Any:
    """``files`` (a list, or lists by split) with relative local paths under ``root``."""

    def under(value: Any) -> Any:
        return str(_under(root, value)) if isinstance(value, str) else value

    if isinstance(files, dict):
        return {
            split: [under(v) for v in value] if isinstance(value, list) else under(value)
            for split, value in files.items()
        }
    return [under(v) for v in files] if isinstance(files, list) else under(files)


def _hdf5_source(source: Any, root: Path, where: str, split: str) -> Hdf5Source:
    """One ``[datasets.hdf5.<split>]`` table, its path resolved under ``root``."""
    if not isinstance(source, dict):
        raise ConfigError(
            f"hdf5.{split} must be a [datasets.hdf5.{split}] table with path, images and "
            f"labels, got {source!r}",
            key="hdf5",
            where=where,
        ).within(where)
    path = {"path": _under(root, source["path"])} if "path" in source else {}
    return _build(Hdf5Source, source, f"{where}.hdf5.{split}", **path)


def _pipeline(
    raw: Mapping[str, Any],
    file: Path,
    *,
    data_root: str | Path | None,
    cache: str | Path | None,
    output: str | Path | None,
) -> Pipeline:
    _check_keys(raw, PIPELINE_KEYS, "the pipeline")
    root = _resolve_root(raw, file, data_root)
    datasets = _each(raw, "datasets", partial(_dataset, root=root), required=True)
    backbones = _each(raw, "backbones", partial(_backbone, folder=file.parent), required=True)
    heads = _each(raw, "heads", partial(_build, HeadConfig))
    references = _each(raw, "references", partial(_build, Reference))
    finetune = raw.get("finetune", {})
    if not isinstance(finetune, dict):
        raise ConfigError("finetune must be a [finetune] table", key="finetune")
    audit = raw.get("audit")
    if audit is not None and not isinstance(audit, dict):
        raise ConfigError("audit must be an [audit] table", key="audit")
    return Pipeline(
        name=str(raw.get("name", file.stem)),
        datasets=datasets,
        backbones=backbones,
        heads=heads or (HeadConfig(kind="logistic_regression"),),
        cache=cache_path(cache if cache is not None else raw.get("cache")),
        output=Path(output if output is not None else raw.get("output", DEFAULT_OUTPUT)),
        batch_size=raw.get("batch_size", 32),
        finetune=_build(FinetuneConfig, finetune, "[finetune]"),
        audit=None if audit is None else _build(AuditConfig, audit, "[audit]"),
        references=references,
        description=str(raw.get("description", "")),
        source=file,
    )
