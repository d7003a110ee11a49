"""Listing data sets: class folders, CSV manifests and HDF5 arrays.

Listing only looks at names, sizes and modification times (no image is decoded),
so it is cheap enough to run before every extraction to decide whether the cache
already holds the answer. Decoding happens later, in :mod:`featurecache.images`,
through :meth:`Listing.read`.

Split names on disk may be ``train``, ``validation`` or ``val``, and ``test``
(``training``, ``valid`` and ``testing`` are accepted too). A data set that declares
no split is split by :func:`stratified_split`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featurecache.config import DatasetConfig, Hdf5Source, SplitRatios
from featurecache.errors import DatasetError, ImageDecodeError
from featurecache.images import array_to_rgb, content_key, decode_bytes

log = logging.getLogger(__name__)

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "test": "test",
    "testing": "test",
}


@dataclass(frozen=True)
class Record:
    """One image of a data set.

    ``source`` is the file path, or ``file.h5:key[index]`` for an array row;
    ``label`` indexes :attr:`Listing.class_names`; ``split`` is ``train``,
    ``validation`` or ``test``; ``locator`` is the relative path (or row index)
    used for the seeded split; ``size`` (bytes) and ``mtime_ns`` are the source
    file's, as ``os.stat`` gives them (-1 when it cannot be read), so that an
    unchanged file is recognised without reading it (as git's index does).
    """

    source: str
    label: int
    split: str
    locator: str
    size: int = -1
    mtime_ns: int = -1


@dataclass
class Listing:
    """A listed data set: records, class names and a fingerprint of its inputs.

    The fingerprint is a BLAKE2b hash of every record's source, size and
    modification time (nanoseconds), label and split, and of the data set
    configuration: it changes when any input file changes, without reading them.
    """

    name: str
    class_names: list[str]
    records: list[Record]
    fingerprint: str
    config: DatasetConfig
    _arrays: dict[str, object] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def split_counts(self) -> dict[str, int]:
        return dict(Counter(r.split for r in self.records))

    def read(self, record: Record, size: int) -> tuple[str, np.ndarray]:
        """Read and decode one record.

        Returns
        -------
        key : str
            The image's content key (:func:`featurecache.images.content_key`).
        pixels : ndarray of shape (size, size, 3), dtype uint8
            RGB pixels resized to ``size`` x ``size``.

        Raises
        ------
        ImageDecodeError
            If the file cannot be read or decoded; the message names the file.
        """
        key, pixels = self.read_sizes(record, (size,))
        return key, pixels[size]

    def read_sizes(self, record: Record, sizes: Sequence[int]) -> tuple[str, dict[int, np.ndarray]]:
        """Like :meth:`read` for several sizes: the file is read and hashed once, then
        decoded once per size (so each size's pixels equal a single-size read's)."""
        raw = self._load(record)
        decode = array_to_rgb if isinstance(raw, np.ndarray) else decode_bytes
        return content_key(raw), {s: decode(raw, s, source=record.source) for s in sizes}

    def content_key(self, record: Record) -> str | None:
        """The record's content key without decoding; ``None`` if it cannot be read."""
        try:
            return content_key(self._load(record))
        except ImageDecodeError:
            return None

    def _load(self, record: Record) -> np.ndarray | bytes:
        """The record's raw content: an HDF5 row, or a file's bytes."""
        if self.config.format == "hdf5":
            path, index = record.source.rsplit("[", 1)
            with self._lock:  # h5py serialises access anyway; keep it explicit
                return self._arrays[path][int(index.rstrip("]"))]  # type: ignore[index]
        try:
            return Path(record.source).read_bytes()
        except OSError as exc:
            raise ImageDecodeError(f"{record.source}: cannot read file: {exc.strerror}") from exc

    def close(self) -> None:
        for handle in {id(h): h for h in self._arrays.values()}.values():
            parent = getattr(handle, "file", None)
            if parent is not None:
                parent.close()
        self._arrays.clear()


def list_dataset(config: DatasetConfig) -> Listing:
    """List a data set without decoding any image.

    Raises
    ------
    DatasetError
        If the path does not exist, an HDF5 key is missing, a class folder is
        empty, or there are fewer than two classes; the message says how to fix it.
    """
    if config.format == "hdf5":
        return _list_hdf5(config)
    if config.path is None or not config.path.exists():
        raise DatasetError(
            f"data set {config.name!r}: path {str(config.path)!r} does not exist "
            "(relative paths are resolved against --data-root / FEATURECACHE_DATA_ROOT)"
        )
    if config.format == "csv":
        entries, class_names = _list_csv(config.path)
    else:
        entries, class_names = _list_folder(config.path)
    if config.classes:
        entries, class_names = _keep_classes(config, entries, class_names)
    if config.resplit:
        entries = [(path, label, None) for path, label, _ in entries]
    _check_classes(config.name, class_names, [label for _, label, _ in entries])
    records = _assign_splits(entries, config.path, config.split)
    return Listing(
        name=config.name,
        class_names=class_names,
        records=records,
        fingerprint=_fingerprint(config, records, class_names),
        config=config,
    )


def image_suffixes() -> set[str]:
    """File extensions Pillow can open (lower case, with the dot)."""
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def image_files(folder: Path, suffixes: set[str] | None = None) -> list[Path]:
    """Image files under ``folder``, recursively and sorted; hidden files and other
    extensions are skipped. Dangling links are kept, so that reading them reports them."""
    suffixes = image_suffixes() if suffixes is None else suffixes
    files = []
    for path in sorted(folder.rglob("*")):
        if path.name.startswith(".") or not (path.is_file() or path.is_symlink()):
            continue
        if path.suffix.lower() in suffixes:
            files.append(path)
        else:
            log.debug("ignoring %s: not an image file extension", path)
    return files


def _list_folder(root: Path) -> tuple[list[tuple[Path, int, str | None]], list[str]]:
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; give a class folder, a .csv or an .h5 file")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_dirs = [p for p in subdirs if p.name.lower() in SPLIT_ALIASES]
    if split_dirs and len(split_dirs) != len(subdirs):
        others = [p.name for p in subdirs if p not in split_dirs]
        raise DatasetError(
            f"{root} mixes split folders ({', '.join(p.name for p in split_dirs)}) with "
            f"other folders ({', '.join(others)}); use root/<class>/* or root/<split>/<class>/*"
        )
    layout = [(SPLIT_ALIASES[p.name.lower()], p) for p in split_dirs] or [(None, root)]
    suffixes = image_suffixes()
    per_class: dict[str, list[tuple[Path, str | None]]] = {}
    for split, folder in layout:
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            if class_dir.name.startswith("."):
                continue
            bucket = per_class.setdefault(class_dir.name, [])
            bucket.extend((f, split) for f in image_files(class_dir, suffixes))
    empty = [name for name, files in per_class.items() if not files]
    if empty:
        raise DatasetError(
            f"{root}: class folder(s) {', '.join(empty)} hold no image files; "
            "add images or remove the folder(s)"
        )
    class_names = sorted(per_class)
    entries = [
        (path, class_names.index(name), split)
        for name in class_names
        for path, split in per_class[name]
    ]
    return entries, class_names


def _list_csv(manifest: Path) -> tuple[list[tuple[Path, int, str | None]], list[str]]:
    rows: list[tuple[Path, str, str | None]] = []
    with open(manifest, newline="", encoding="utf-8") as fh:
        for number, row in enumerate(csv.reader(fh), start=1):
            if not row or row[0].startswith("#"):
                continue
            if number == 1 and row[0].strip().lower() == "path":
                continue  # header
            if len(row) not in (2, 3):
                raise DatasetError(
                    f"{manifest}:{number}: expected 'path,label[,split]', got {len(row)} fields"
                )
            split = None
            if len(row) == 3 and row[2].strip():
                split = SPLIT_ALIASES.get(row[2].strip().lower())
                if split is None:
                    raise DatasetError(
                        f"{manifest}:{number}: unknown split {row[2]!r}; use train, "
                        "validation (or val) or test"
                    )
            path = Path(row[0].strip())
            rows.append(
                (path if path.is_absolute() else manifest.parent / path, row[1].strip(), split)
            )
    if not rows:
        raise DatasetError(f"{manifest}: the manifest lists no images")
    splits_given = {split is not None for _, _, split in rows}
    if len(splits_given) > 1:
        raise DatasetError(f"{manifest}: give a split on every row or on none")
    class_names = sorted({label for _, label, _ in rows})
    return [(p, class_names.index(label), s) for p, label, s in rows], class_names


def _keep_classes(
    config: DatasetConfig, entries: list[tuple[Path, int, str | None]], class_names: list[str]
) -> tuple[list[tuple[Path, int, str | None]], list[str]]:
    """Only the images of ``config.classes``, relabelled in that order."""
    missing = [c for c in config.classes if c not in class_names]
    if missing:
        raise DatasetError(
            f"data set {config.name!r}: no class {', '.join(map(repr, missing))} in "
            f"{config.path}; its classes are {', '.join(class_names)}"
        )
    index = {class_names.index(c): i for i, c in enumerate(config.classes)}
    kept = [(path, index[label], split) for path, label, split in entries if label in index]
    return kept, list(config.classes)


def _check_classes(name: str, class_names: Sequence[str], labels: Sequence[int]) -> None:
    if len(class_names) < 2:
        found = f"only {class_names[0]!r}" if class_names else "none"
        raise DatasetError(
            f"data set {name!r} needs at least two classes to train a classifier, found {found}"
        )
    if not labels:
        raise DatasetError(f"data set {name!r} has no images")


def stratified_split(
    locators: Sequence[str], labels: Sequence[int], ratios: SplitRatios
) -> list[str]:
    """Assign ``train`` / ``validation`` / ``test`` per image, stratified by class.

    Within each class, images are ranked by BLAKE2b of ``f"{seed}:{locator}"``;
    the first ``round(n * test)`` go to test, the next ``round(n * validation)``
    to validation, the rest to train. Counts per class are exact (as with
    scikit-learn's ``train_test_split(stratify=...)``), the result depends only on
    the seed and the locators (never on listing order), and adding images moves
    few existing ones across splits. A class with fewer than 3 images keeps its
    first image in train.
    """
    splits = ["train"] * len(locators)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    for indices in by_class.values():
        ranked = sorted(
            indices,
            key=lambda i: hashlib.blake2b(
                f"{ratios.seed}:{locators[i]}".encode("utf-8", "surrogateescape")
            ).digest(),
        )
        n = len(ranked)
        n_test = min(round(n * ratios.test), n - 1)
        n_val = min(round(n * ratios.validation), n - 1 - n_test)
        for i in ranked[:n_test]:
            splits[i] = "test"
        for i in ranked[n_test : n_test + n_val]:
            splits[i] = "validation"
    return splits


def _assign_splits(
    entries: list[tuple[Path, int, str | None]], root: Path, ratios: SplitRatios
) -> list[Record]:
    base = root if root.is_dir() else root.parent
    locators = [_relative(path, base) for path, _, _ in entries]
    if entries and entries[0][2] is None:
        splits = stratified_split(locators, [label for _, label, _ in entries], ratios)
    else:
        splits = [split or "train" for _, _, split in entries]
    return [
        Record(str(path), label, split, loc, *_stat(path))
        for (path, label, _), split, loc in zip(entries, splits, locators, strict=True)
    ]


def _stat(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def _fingerprint(
    config: DatasetConfig, records: Sequence[Record], class_names: Sequence[str]
) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(config.describe(), sort_keys=True).encode())
    digest.update(json.dumps(list(class_names)).encode())
    for record in records:
        digest.update(
            f"{record.source}\0{record.size}:{record.mtime_ns}\0{record.label}\0{record.split}\n".encode(
                "utf-8", "surrogateescape"
            )
        )
    return digest.hexdigest()


# --------------------------------------------------------------------------- HDF5


def _list_hdf5(config: DatasetConfig) -> Listing:
    import h5py

    records: list[Record] = []
    arrays: dict[str, object] = {}
    class_names: list[str] | None = None
    for split, source in config.hdf5.items():
        if not source.path.is_file():
            raise DatasetError(
                f"data set {config.name!r}: HDF5 file {str(source.path)!r} does not exist"
            )
        try:
            handle = h5py.File(source.path, "r")
        except OSError as exc:
            raise DatasetError(f"{source.path}: not a readable HDF5 file: {exc}") from exc
        source = _resolve_hdf5_keys(handle, source)
        images, labels = handle[source.images], np.asarray(handle[source.labels]).reshape(-1)
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"{source.path}: {source.images!r} has {images.shape[0]} images but "
                f"{source.labels!r} has {labels.shape[0]} labels"
            )
        names = _hdf5_class_names(handle, source, labels)
        if class_names is not None and names != class_names and source.classes:
            raise DatasetError(f"{source.path}: class names {names} differ from {class_names}")
        if class_names is None or len(names) > len(class_names):
            class_names = names
        arrays[str(source.path)] = images
        size, mtime_ns = _stat(source.path)
        records.extend(
            Record(
                f"{source.path}[{i}]", int(label), split, f"{source.path.name}[{i}]", size, mtime_ns
            )
            for i, label in enumerate(labels)
        )
    if class_names is None:
        raise DatasetError(f"data set {config.name!r}: no [datasets.hdf5.<split>] file given")
    _check_classes(config.name, class_names, [r.label for r in records])
    return Listing(
        name=config.name,
        class_names=class_names,
        records=records,
        fingerprint=_fingerprint(config, records, class_names),
        config=config,
        _arrays=arrays,
    )


def _resolve_hdf5_keys(handle, source: Hdf5Source) -> Hdf5Source:
    """Check the configured keys exist; find them when none were given."""
    import h5py

    datasets = {k: v for k, v in handle.items() if isinstance(v, h5py.Dataset)}
    images, labels, classes = source.images, source.labels, source.classes
    if not images:
        candidates = [k for k, v in datasets.items() if v.ndim in (3, 4) and v.dtype.kind in "ui"]
        if len(candidates) != 1:
            raise DatasetError(
                f"{source.path}: cannot tell which array holds the images "
                f"({candidates or 'none'}); "
                "name it in a pipeline file ([datasets.hdf5.<split>] images = ...)"
            )
        images = candidates[0]
    if not labels:
        n = datasets[images].shape[0]
        candidates = [
            k
            for k, v in datasets.items()
            if v.dtype.kind in "ui" and v.shape in ((n,), (1, n), (n, 1)) and k != images
        ]
        if len(candidates) != 1:
            raise DatasetError(
                f"{source.path}: cannot tell which array holds the labels "
                f"({candidates or 'none'}); "
                "name it in a pipeline file ([datasets.hdf5.<split>] labels = ...)"
            )
        labels = candidates[0]
        if classes is None and "list_classes" in datasets:
            classes = "list_classes"
    for role, key in (("images", images), ("labels", labels), ("classes", classes)):
        if key is not None and key not in datasets:
            raise DatasetError(
                f"{source.path}: no array {key!r} for {role}; the file holds "
                f"{', '.join(sorted(datasets)) or 'no arrays'}"
            )
    return Hdf5Source(path=source.path, images=images, labels=labels, classes=classes)


def _hdf5_class_names(handle, source: Hdf5Source, labels: np.ndarray) -> list[str]:
    if labels.size and (labels.min() < 0 or labels.dtype.kind not in "ui"):
        raise DatasetError(f"{source.path}: labels in {source.labels!r} must be integers >= 0")
    n_classes = int(labels.max()) + 1 if labels.size else 0
    if source.classes:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in handle[source.classes][()]]
        if len(names) < n_classes:
            raise DatasetError(
                f"{source.path}: {source.classes!r} names {len(names)} classes but labels go to "
                f"{n_classes - 1}"
            )
        return names
    return [str(i) for i in range(n_classes)]
