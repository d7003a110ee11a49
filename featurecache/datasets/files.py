"""Class folders and CSV manifests: the image files of a data set, without decoding them.

Split names on disk may be ``train``, ``validation`` or ``val``, and ``test``
(``training``, ``valid`` and ``testing`` are accepted too).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from featurecache.config import DatasetConfig
from featurecache.errors import DatasetError
from featurecache.images import PLUGIN_SUFFIXES, register_plugins

if TYPE_CHECKING:
    from featurecache.datasets.objects import ObjectStat

log = logging.getLogger(__name__)

#: An image file (a path, or a URL as a string), its class index and its split (``None``:
#: the data set declares none).
Entry = tuple[Path | str, int, str | None]

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "test": "test",
    "testing": "test",
}


def image_suffixes() -> set[str]:
    """File extensions Pillow can open (lower case, with the dot), with its plugins',
    and HEIC/HEIF/AVIF's even without them (such files are then skipped with the reason)."""
    from PIL import Image

    register_plugins()
    return {ext.lower() for ext in Image.registered_extensions()} | PLUGIN_SUFFIXES


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


def list_folder(root: Path) -> tuple[list[Entry], list[str]]:
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; give a class folder, a .csv or an .h5 file")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    check_split_folders(str(root), [p.name for p in subdirs])
    split_dirs = [p for p in subdirs if p.name.lower() in SPLIT_ALIASES]
    layout: list[tuple[str | None, Path]] = [(SPLIT_ALIASES[p.name.lower()], p) for p in split_dirs]
    layout = layout or [(None, root)]
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
    entries: list[Entry] = [
        (path, class_names.index(name), split)
        for name in class_names
        for path, split in per_class[name]
    ]
    return entries, class_names


def check_split_folders(root: str, names: list[str]) -> None:
    """Refuse a folder that mixes split folders (``train``...) with class folders."""
    splits = [n for n in names if n.lower() in SPLIT_ALIASES]
    if splits and len(splits) != len(names):
        others = [n for n in names if n not in splits]
        raise DatasetError(
            f"{root} mixes split folders ({', '.join(splits)}) with other folders "
            f"({', '.join(others)}); use root/<class>/* or root/<split>/<class>/*"
        )


def list_folder_url(url: str) -> tuple[list[Entry], list[str], dict[str, ObjectStat]]:
    """:func:`list_folder` of a folder at a URL (``s3://bucket/prefix``), and each image's
    stat: one recursive listing (its requests return every object's stat; no image is
    read)."""
    from featurecache.datasets.objects import list_stats

    root = url.rstrip("/")
    suffixes = image_suffixes()
    stats = list_stats(root)
    files = sorted(
        u for u in stats if u.startswith(root + "/") and Path(u).suffix.lower() in suffixes
    )
    parts = [u[len(root) + 1 :].split("/") for u in files]
    check_split_folders(url, sorted({p[0] for p in parts if len(p) > 1}))
    with_split = bool(parts) and parts[0][0].lower() in SPLIT_ALIASES
    per_class: dict[str, list[tuple[str, str | None]]] = {}
    for u, p in zip(files, parts, strict=True):
        depth = 3 if with_split else 2
        if len(p) < depth or any(x.startswith(".") for x in p):
            continue
        split = SPLIT_ALIASES[p[0].lower()] if with_split else None
        per_class.setdefault(p[depth - 2], []).append((u, split))
    if not per_class:
        raise DatasetError(
            f"{url}: no image files in class folders (root/<class>/* or root/<split>/<class>/*)"
        )
    class_names = sorted(per_class)
    entries: list[Entry] = [
        (u, class_names.index(name), split) for name in class_names for u, split in per_class[name]
    ]
    return entries, class_names, stats


def list_csv(manifest: Path | str) -> tuple[list[Entry], list[str]]:
    """The rows of a CSV manifest (``path,label[,split]``; a local file or a URL). A row's
    path is relative to the manifest's folder unless it is absolute or a URL
    (``s3://bucket/a.jpg``), which is kept as a string."""
    if isinstance(manifest, str):  # a URL
        from featurecache.datasets.objects import filesystem, remote_errors

        fs, path = filesystem(manifest)
        with remote_errors(manifest):
            text = fs.cat_file(path).decode("utf-8")
        base: Path | str = manifest.rsplit("/", 1)[0]
    else:
        text = manifest.read_text(encoding="utf-8")
        base = manifest.parent
    rows: list[tuple[Path | str, str, str | None]] = []
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
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
        rows.append((_row_path(row[0].strip(), base), row[1].strip(), split))
    if not rows:
        raise DatasetError(f"{manifest}: the manifest lists no images")
    splits_given = {split is not None for _, _, split in rows}
    if len(splits_given) > 1:
        raise DatasetError(f"{manifest}: give a split on every row or on none")
    class_names = sorted({label for _, label, _ in rows})
    return [(p, class_names.index(label), s) for p, label, s in rows], class_names


def _row_path(value: str, base: Path | str) -> Path | str:
    if "://" in value:
        return value
    if isinstance(base, str):  # a manifest at a URL: rows relative to its folder
        return f"{base}/{value.lstrip('./')}" if not value.startswith("/") else value
    path = Path(value)
    return path if path.is_absolute() else base / path


def keep_classes(
    config: DatasetConfig, entries: list[Entry], class_names: list[str]
) -> tuple[list[Entry], list[str]]:
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
