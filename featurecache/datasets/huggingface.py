"""Hugging Face data sets: a ``save_to_disk`` folder, or a name ``datasets.load_dataset`` knows.

The ``datasets`` package opens them (memory-mapped Arrow files; a hub name is downloaded
into its own cache first, which needs the internet). The image column is the one whose
feature is ``Image`` (read undecoded: ``struct<bytes, path>``), or the one ``image``
names; the label column is the ``ClassLabel`` one, or the one ``label`` names, and its
names are the class names. A ``DatasetDict``'s splits are the data set's splits
(``train``, ``validation``/``valid``, ``test``); a single ``Dataset`` is split by
:func:`~featurecache.datasets.splits.stratified_split`.

Rows without a label (``ClassLabel``'s -1) are left out. An image's bytes are the row's,
or the file its ``path`` names where the row holds none (``load_dataset`` of an image
folder). An image's source is ``<path or name>#<split>/<row>``; its stat is the split's Arrow
files' (total size, latest mtime), so a refresh of an unchanged data set reads nothing.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from featurecache.config import DatasetConfig
from featurecache.datasets.files import SPLIT_ALIASES
from featurecache.datasets.records import Record
from featurecache.datasets.splits import stratified_split
from featurecache.errors import DatasetError, DependencyError, ImageDecodeError

_SAVED = ("dataset_info.json", "state.json", "dataset_dict.json")


def open_dataset(config: DatasetConfig) -> dict[str, Any]:
    """The data set's ``datasets.Dataset`` by split name (``""``: no split declared).

    Raises
    ------
    DependencyError
        If ``datasets`` is not installed.
    DatasetError
        If the folder or name cannot be opened.
    """
    try:
        import datasets
    except ImportError as exc:
        raise DependencyError(
            'format = "huggingface" needs the datasets package: pip install '
            "'featurecache[huggingface]'"
        ) from exc
    path = Path(str(config.path))
    try:
        if path.is_dir() and any((path / name).exists() for name in _SAVED):
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(config.path))
    except Exception as exc:  # datasets raises many kinds (FileNotFoundError, DatasetNotFoundError)
        raise DatasetError(
            f"data set {config.name!r}: cannot open {str(config.path)!r} with datasets "
            f"({type(exc).__name__}: {exc}); give a save_to_disk folder or a hub name"
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        unknown = [s for s in loaded if s.lower() not in SPLIT_ALIASES]
        if unknown:
            raise DatasetError(
                f"data set {config.name!r}: split {unknown[0]!r} is not one of "
                f"{', '.join(SPLIT_ALIASES)}"
            )
        return {SPLIT_ALIASES[s.lower()]: ds for s, ds in loaded.items()}
    return {"": loaded}


def _columns(ds: Any, config: DatasetConfig) -> tuple[str, str, list[str]]:
    """The image column, the label column and the class names of one split."""
    import datasets

    features = ds.features
    image = config.image or next(
        (name for name, f in features.items() if isinstance(f, datasets.Image)), ""
    )
    label = config.label or next(
        (name for name, f in features.items() if isinstance(f, datasets.ClassLabel)), ""
    )
    if image not in features or label not in features:
        raise DatasetError(
            f"data set {config.name!r}: no {'image' if image not in features else 'label'} "
            f"column found among {', '.join(features)}; name it with image = / label = "
        )
    names = list(features[label].names) if isinstance(features[label], datasets.ClassLabel) else []
    return image, label, names


def _stat(ds: Any) -> tuple[int, int]:
    """Total size and latest mtime (ns) of a split's Arrow files (-1, -1 in memory)."""
    files = [f["filename"] for f in ds.cache_files]
    if not files:
        return -1, -1
    stats = [os.stat(f) for f in files]
    return sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats)


def hf_records(config: DatasetConfig) -> tuple[list[Record], list[str], HFRows]:
    """The records of a Hugging Face data set, its class names, and its row reader.

    Raises
    ------
    DatasetError
        As :func:`open_dataset`, or when splits disagree on class names.
    """
    splits = open_dataset(config)
    rows = HFRows(config)
    entries = []  # (source, label, split, size, mtime)
    class_names: list[str] = []
    for split, ds in splits.items():
        image, label, names = _columns(ds, config)
        if class_names and names and names != class_names:
            raise DatasetError(f"data set {config.name!r}: splits name their classes differently")
        class_names = class_names or names
        rows.add(split, ds, image)
        size, mtime = _stat(ds)
        for row, value in enumerate(ds[label]):
            if value is None or (isinstance(value, int) and value < 0):
                continue  # unlabelled (ClassLabel's -1)
            entries.append((f"{config.path}#{split or 'all'}/{row}", value, split, size, mtime))
    if not class_names:
        class_names = sorted({str(v) for _, v, _, _, _ in entries})
    labels = [v if isinstance(v, int) else class_names.index(str(v)) for _, v, _, _, _ in entries]
    locators = [source.rsplit("#", 1)[1] for source, *_ in entries]
    if "" in splits or config.resplit:
        split_of = stratified_split(locators, labels, config.split)
    else:
        split_of = [split for _, _, split, _, _ in entries]
    records = [
        Record(source, label, split, locator, size, mtime)
        for (source, _, _, size, mtime), label, split, locator in zip(
            entries, labels, split_of, locators, strict=True
        )
    ]
    return records, class_names, rows


class HFRows:
    """Image bytes by record source, from the opened splits (safe from several threads)."""

    def __init__(self, config: DatasetConfig) -> None:
        self.config = config
        self._splits: dict[str, tuple[Any, str]] = {}
        self._lock = threading.Lock()

    def add(self, split: str, ds: Any, image: str) -> None:
        import datasets

        self._splits[split or "all"] = (ds.cast_column(image, datasets.Image(decode=False)), image)

    def read(self, source: str) -> bytes:
        """The image bytes of ``<path>#<split>/<row>``.

        Raises
        ------
        ImageDecodeError
            If the row holds no embedded image bytes (only a path elsewhere).
        """
        split, _, row = source.rpartition("#")[2].partition("/")
        ds, image = self._splits[split]
        with self._lock:
            value = ds[int(row)][image]
        data = value.get("bytes") if isinstance(value, dict) else None
        if data:
            return bytes(data)
        path = value.get("path") if isinstance(value, dict) else None
        if path and os.path.isfile(path):  # load_dataset's image folders: files on disk
            with open(path, "rb") as fh:
                return fh.read()
        raise ImageDecodeError(f"{source}: the row holds no image bytes ({path or 'no path'})")
