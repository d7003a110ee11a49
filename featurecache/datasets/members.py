"""The images inside one object: a WebDataset tar shard, or a Parquet file of image bytes.

Both are read from a local file (a local object, or a remote one fetched whole by
:func:`featurecache.datasets.objects.fetch`):

- **WebDataset** (the format of ``webdataset``'s ``ShardWriter`` and img2dataset): a plain
  tar whose files are grouped into samples by the name before the first dot of their
  base name (``000123.jpg``, ``000123.cls``, ``000123.json``), as
  ``webdataset.tariterators.base_plus_ext`` does. A sample's image is its member with an
  image extension (``jpg`` first, or the one the data set names); its class is a ``cls``
  (or other named) member, or a field of its ``json`` member. The tar is read with
  ``tarfile`` by offsets, so one member is read without reading the shard. A tar cut
  short keeps the samples before the damage and says where it stopped.
- **Parquet**: one row per image. The image column is a Hugging Face ``Image`` struct
  (``struct<bytes: binary, path: string>``) or a plain binary column (img2dataset names it
  after the format: ``jpg``); the label column holds integers or strings. Class names
  come from the ``ClassLabel`` feature in the file's ``huggingface`` schema metadata when
  there is one.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from featurecache.config import DatasetConfig
from featurecache.errors import DatasetError, DependencyError, ImageDecodeError
from featurecache.images import content_key

#: Image member extensions of a WebDataset sample, in the order one is picked.
IMAGE_EXTENSIONS = (
    "jpg",
    "jpeg",
    "png",
    "webp",
    "bmp",
    "ppm",
    "tif",
    "tiff",
    "gif",
    "avif",
    "heic",
)
#: Image columns of a Parquet file, in the order one is picked (when ``image`` is empty).
IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp")
#: Label columns (and WebDataset label members / json fields) picked when ``label`` is empty.
LABEL_NAMES = ("cls", "label", "labels", "class")
#: File suffixes of each member format.
SUFFIXES = {"webdataset": (".tar", ".tar.gz", ".tgz"), "parquet": (".parquet", ".pq")}

Label = int | str


class DamagedObjectError(DatasetError):
    """An object that is not the tar shard or Parquet file it should be (skipped, named)."""


@dataclass(frozen=True)
class Member:
    """One image of an object: its ``name`` inside it (a WebDataset image file name such
    as ``000123.jpg``, or a Parquet row number), its content ``key`` (BLAKE2b-128 of the
    bytes) and its ``label`` (an integer class index or a class name)."""

    name: str
    key: str
    label: Label


@dataclass
class Members:
    """Every image of one object version, and what could not be used.

    ``damage`` says why the object was not read to its end (a truncated tar), ``skipped``
    names samples without an image or a label, and ``class_names`` are the names a
    Parquet file's ``ClassLabel`` metadata gives (empty: none).
    """

    members: list[Member] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    damage: str = ""
    class_names: list[str] = field(default_factory=list)


def read_members(fh: BinaryIO, url: str, config: DatasetConfig) -> Members:
    """Every image of the object open as ``fh`` (a local file; ``url`` names it in
    messages), hashed.

    Raises
    ------
    DamagedObjectError
        If the file is not a tar shard / Parquet file.
    DatasetError
        If a Parquet file has no image or label column (the message names its columns).
    """
    if config.format == "parquet":
        return _parquet_members(fh, url, config)
    return _tar_members(fh, url, config)


# WebDataset tar shards


@dataclass(frozen=True)
class TarSample:
    """One sample of a tar shard: its key and each file's ``(offset, size)`` by extension."""

    key: str
    files: dict[str, tuple[int, int]]


#: Bytes of tar's end-of-archive marker (two zero blocks of 512).
END_OF_ARCHIVE = 1024
_BASE_PLUS_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext


def tar_samples(fh: BinaryIO, url: str) -> tuple[list[TarSample], str]:
    """The samples of a plain tar shard (open as ``fh``) in file order, and its damage
    (``""`` if none).

    Only the tar headers are read. A shard cut short (or damaged) keeps the samples whose
    files all lie before the damage; a shard that ends without tar's end-of-archive
    blocks (two zero blocks) was cut short at a header.

    Raises
    ------
    DamagedObjectError
        If the file is a compressed tar (read by offsets, shards must be plain tar, as
        ``ShardWriter`` and img2dataset write them) or not a tar at all.
    """
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    end = os.fstat(fh.fileno()).st_size
    damage = ""
    fh.seek(0)
    try:
        tar = tarfile.open(fileobj=fh, mode="r:")
    except tarfile.ReadError as exc:
        fh.seek(0)
        kind = "a compressed tar" if tarfile.is_tarfile(fh) else "not a tar file"
        raise DamagedObjectError(
            f"{url}: {kind} ({exc}); WebDataset shards must be plain .tar"
        ) from exc
    while True:
        try:
            info = tar.next()
        except (tarfile.ReadError, EOFError, OSError) as exc:
            damage = f"damaged after byte {tar.offset} of {end} ({exc})"
            break
        if info is None:
            if end - tar.offset < END_OF_ARCHIVE:
                damage = f"cut short at byte {end}: no end-of-archive after the last file"
            break
        if not info.isreg():
            continue
        if info.offset_data + info.size > end:
            damage = f"cut short: {info.name} ends at byte {info.offset_data + info.size} of {end}"
            break
        match = _BASE_PLUS_EXT.match(info.name)
        if match is None or info.name.rsplit("/", 1)[-1].startswith("__"):
            continue
        samples.setdefault(match.group(1), {})[match.group(2).lower()] = (
            info.offset_data,
            info.size,
        )
    if damage and samples:  # the last sample may have lost its other files
        samples.popitem()
    return [TarSample(k, v) for k, v in samples.items()], damage


def read_range(fh: BinaryIO, offset: int, size: int) -> bytes:
    """``size`` bytes of the open file ``fh`` from ``offset`` (one ``pread``: safe from
    several threads, and unaffected by the file being unlinked meanwhile)."""
    data = os.pread(fh.fileno(), size, offset)
    if len(data) != size:
        raise ImageDecodeError(f"{fh.name}: {size} bytes at {offset} could not be read")
    return data


def image_extension(sample: TarSample, config: DatasetConfig) -> str | None:
    """The extension of the sample's image member (``config.image``, else the first of
    :data:`IMAGE_EXTENSIONS` it has)."""
    wanted = (config.image,) if config.image else IMAGE_EXTENSIONS
    return next((ext for ext in wanted if ext in sample.files), None)


def _tar_members(fh: BinaryIO, url: str, config: DatasetConfig) -> Members:
    samples, damage = tar_samples(fh, url)
    out = Members(damage=damage)
    for sample in samples:
        ext = image_extension(sample, config)
        if ext is None:
            out.skipped.append(_skip(url, sample.key, "no image file in the sample"))
            continue
        label = _tar_label(fh, sample, config)
        if label is None:
            out.skipped.append(_skip(url, f"{sample.key}.{ext}", "no label (.cls or .json)"))
            continue
        data = read_range(fh, *sample.files[ext])
        out.members.append(Member(f"{sample.key}.{ext}", content_key(data), label))
    return out


def _tar_label(fh: BinaryIO, sample: TarSample, config: DatasetConfig) -> Label | None:
    """The sample's class: a label member's text, else a field of its ``json`` member;
    None where there is none (or it is not text, or a negative number: unlabelled)."""
    names = (config.label,) if config.label else LABEL_NAMES
    for name in names:
        if name in sample.files and name != "json":
            try:
                return _label(read_range(fh, *sample.files[name]).decode("utf-8").strip())
            except UnicodeDecodeError:
                return None
    if "json" in sample.files:
        try:
            doc = json.loads(read_range(fh, *sample.files["json"]))
        except ValueError:  # UnicodeDecodeError included
            return None
        for name in names:
            if isinstance(doc, dict) and doc.get(name) not in (None, ""):
                value = doc[name]
                return _label(str(value)) if not isinstance(value, int) else _known(value)
    return None


def _label(text: str) -> Label | None:
    return _known(int(text)) if re.fullmatch(r"-?\d+", text) else text or None


def _known(label: int) -> int | None:
    """An integer class index; negative ones (``-1``: Hugging Face's unlabelled) are none."""
    return label if label >= 0 else None


def _skip(url: str, name: str, reason: str) -> dict[str, str]:
    return {"source": f"{url}#{name}", "reason": f"{url}#{name}: {reason}"}


# Parquet files


@dataclass(frozen=True)
class ParquetLayout:
    """Where a Parquet file keeps its images and labels: the columns, whether the image
    column is a Hugging Face ``Image`` struct, and the ``ClassLabel`` names (if any)."""

    image: str
    label: str
    struct: bool
    class_names: tuple[str, ...] = ()


def parquet_layout(schema: Any, url: str, config: DatasetConfig) -> ParquetLayout:
    """The image and label columns of a Parquet schema (``pyarrow.Schema``).

    Raises
    ------
    DatasetError
        If no column holds images or labels; the message lists the columns.
    """
    import pyarrow as pa

    columns = {name.lower(): name for name in schema.names}

    def pick(wanted: Sequence[str], what: str) -> str:
        found = next((columns[w.lower()] for w in wanted if w.lower() in columns), None)
        if found is None:
            key = "image" if what == "images" else "label"
            raise DatasetError(
                f"{url}: no column for the {what} (looked for {', '.join(wanted)}); its columns "
                f'are {", ".join(schema.names)}; name it with {key} = "..." in the data set'
            )
        return found

    image = pick((config.image,) if config.image else IMAGE_COLUMNS, "images")
    label = pick((config.label,) if config.label else LABEL_NAMES, "labels")
    kind = schema.field(image).type
    struct = pa.types.is_struct(kind)
    if not (struct or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        raise DatasetError(f"{url}: column {image!r} holds {kind}, not image bytes")
    names: tuple[str, ...] = ()
    metadata = (schema.metadata or {}).get(b"huggingface")
    if metadata:
        features = json.loads(metadata).get("info", {}).get("features", {})
        names = tuple(features.get(label, {}).get("names") or ())
    return ParquetLayout(image, label, struct, names)


def _pyarrow() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DependencyError(
            "Parquet data sets need pyarrow: pip install 'featurecache[data]'"
        ) from exc
    return pq


def _parquet_members(fh: BinaryIO, url: str, config: DatasetConfig) -> Members:
    handle = _parquet_file(fh, url)
    layout = parquet_layout(handle.schema_arrow, url, config)
    out = Members(class_names=list(layout.class_names))
    row = 0
    for group in range(handle.num_row_groups):
        try:
            table = handle.read_row_group(group, columns=[layout.image, layout.label])
        except Exception as exc:  # pyarrow: ArrowInvalid, OSError for damaged pages
            out.damage = f"row group {group} (from row {row}) cannot be read: {exc}"
            break
        images = table.column(layout.image).to_pylist()
        labels = table.column(layout.label).to_pylist()
        for image, label in zip(images, labels, strict=True):
            data = image.get("bytes") if layout.struct and image else image
            if not data:
                elsewhere = image.get("path") if layout.struct and image else None
                out.skipped.append(_skip(url, str(row), _no_bytes(elsewhere)))
            else:
                value = _known(label) if isinstance(label, int) else _label(str(label or ""))
                if value is None:
                    out.skipped.append(_skip(url, str(row), "no label"))
                else:
                    out.members.append(Member(str(row), content_key(data), value))
            row += 1
    return out


def _no_bytes(path: str | None) -> str:
    if path:
        return (
            f"the row names an image file ({path}) instead of holding its bytes; embed the "
            "images in the file (datasets: Dataset.embed_external_files / push_to_hub)"
        )
    return "no image bytes in the row"


def _parquet_file(fh: BinaryIO, url: str) -> Any:
    pq = _pyarrow()
    fh.seek(0)
    try:
        return pq.ParquetFile(fh)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for a bad file
        raise DamagedObjectError(f"{url}: not a readable Parquet file: {exc}") from exc


class ParquetRows:
    """Random access to a Parquet file's image bytes by row, one row group in memory at a
    time (rows are read in order, so a group is decoded once). The file is opened only to
    read a new row group, by ``opener``. Not safe from several threads: its caller holds
    a lock."""

    def __init__(self, fh: BinaryIO, url: str, config: DatasetConfig) -> None:
        handle = _parquet_file(fh, url)
        self.url = url
        self.layout = parquet_layout(handle.schema_arrow, url, config)
        meta = handle.metadata
        self.starts = []
        start = 0
        for group in range(meta.num_row_groups):
            self.starts.append(start)
            start += meta.row_group(group).num_rows
        self._group = -1
        self._images: list[Any] = []

    def read(self, row: int, opener: Callable[[], BinaryIO]) -> bytes:
        """Row ``row``'s image bytes; ``opener()`` opens the file when a new group is needed.

        Raises
        ------
        ImageDecodeError
            If the row holds no image bytes, or its row group cannot be read.
        """
        group = bisect.bisect_right(self.starts, row) - 1
        if group != self._group:
            try:
                with opener() as fh:
                    table = _parquet_file(fh, self.url).read_row_group(
                        group, columns=[self.layout.image]
                    )
            except Exception as exc:  # damaged pages: this image is skipped, named
                raise ImageDecodeError(
                    f"{self.url}#{row}: its row group cannot be read: {exc}"
                ) from exc
            self._images, self._group = table.column(self.layout.image).to_pylist(), group
        image = self._images[row - self.starts[group]]
        data = image.get("bytes") if self.layout.struct and image else image
        if not data:
            raise ImageDecodeError(f"{self.url}#{row}: no image bytes")
        return bytes(data)
