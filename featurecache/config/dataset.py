"""Data set configuration: where the images are, their format, and how to split them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from featurecache.config import constraints as rules
from featurecache.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class SplitRatios:
    """Fractions for a stratified split when the data set declares none.

    ``train`` is what remains after ``validation`` and ``test``. The split is
    deterministic: within each class, images are ranked by a seeded hash of their key,
    so a given image keeps its split when others are added.
    """

    validation: float = 0.1
    test: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        rules.check(self, rules.SPLIT_RATIOS)
        if self.validation + self.test >= 1.0:
            raise ConfigError(
                f"validation + test must leave some training data, got "
                f"{self.validation} + {self.test}",
                key="validation",
            )


@dataclass(frozen=True, kw_only=True)
class Hdf5Source:
    """One split of an HDF5 data set: the file and the keys of its arrays.

    ``images`` is a uint8 array of shape ``(n, height, width, 3)`` (or ``(n, h, w)``
    grayscale); ``labels`` an integer array of shape ``(n,)``; ``classes`` optionally
    names a byte-string array of class names indexed by label. Empty ``images`` or
    ``labels`` are found in the file (``--data file.h5``).
    """

    path: Path
    images: str
    labels: str
    classes: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.path, str):
            rules.complete(self, path=Path(self.path))
        rules.check(self, rules.HDF5_SOURCE)


@dataclass(frozen=True, kw_only=True)
class DatasetConfig:
    """One data set: where it is, its format, and how to split it.

    ``format`` is ``folder``, ``csv``, ``hdf5``, ``webdataset`` (tar shards), ``parquet``
    or ``huggingface`` (a ``save_to_disk`` folder, or a name ``datasets.load_dataset``
    knows); when empty it is guessed from ``hdf5`` tables or the suffix of ``path`` or of
    the first of ``files`` (``.csv``, ``.tar``, ``.parquet``), else ``folder``.

    ``path`` is a local path or an fsspec URL (``s3://bucket/prefix/train``; folder, CSV,
    a tar shard, a Parquet file or a folder of them). ``files`` lists a WebDataset's
    shards or Parquet files instead, as paths, URLs or brace patterns
    (``s3://b/train-{000000..000127}.tar``): a list (split by ``split``), or a table of
    lists by split name (``{train = [...], test = [...]}``). ``image`` names the image
    (a WebDataset member extension such as ``jpg``, or a Parquet column; empty: found)
    and ``label`` the class (a member extension such as ``cls``, else a field of the
    ``.json`` member; a Parquet column; empty: ``cls`` or ``label``). ``classes``
    keeps only the named classes of a folder or CSV data set (empty: all); for integer
    labels (``.cls``, a Parquet integer column) it names them in order. ``resplit``
    pools the images of every split folder (or CSV split column) and splits them again
    with ``split`` (stratified), for data sets whose own split is not the one to compare
    with. ``split`` may be given as a mapping of :class:`SplitRatios`' fields.
    """

    name: str
    format: str = ""
    path: Path | str | None = None
    hdf5: Mapping[str, Hdf5Source] = field(default_factory=dict)
    files: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    image: str = ""
    label: str = ""
    split: SplitRatios = field(default_factory=SplitRatios)
    classes: tuple[str, ...] = ()
    resplit: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.path, str) and "://" not in self.path:
            rules.complete(self, path=Path(self.path))
        if isinstance(self.split, Mapping):
            rules.complete(self, split=rules.nested(SplitRatios, self.split, "split"))
        rules.complete(self, files=_files_by_split(self.files))
        if not self.format:
            rules.complete(self, format=self._guess_format())
        rules.check(self, rules.DATASET)
        rules.complete(self, classes=tuple(self.classes))
        self._check_format()

    def _guess_format(self) -> str:
        if self.hdf5:
            return "hdf5"
        first = next((p for patterns in self.files.values() for p in patterns), self.path)
        suffix = str(first or "").rsplit("/", 1)[-1].rpartition(".")[2].lower()
        return _FORMAT_OF_SUFFIX.get(suffix, "folder")

    @classmethod
    def from_description(cls, described: Mapping[str, Any]) -> DatasetConfig:
        """The configuration :meth:`describe` recorded (a generation's ``dataset``
        attribute; keys that are not fields, such as ``fingerprint``, are ignored).

        Raises
        ------
        ConfigError
            If the description is not one :meth:`describe` could have written.
        """
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in described.items() if k in names}
        if isinstance(values.get("hdf5"), Mapping):
            values["hdf5"] = {
                split: Hdf5Source(**source) for split, source in values["hdf5"].items()
            }
        return cls(**values)

    def _check_format(self) -> None:
        if self.format == "hdf5":
            if not self.hdf5:
                raise ConfigError(
                    "an hdf5 data set needs [datasets.hdf5.<split>] tables", key="format"
                )
            unknown = [s for s in self.hdf5 if s not in rules.SPLITS]
            if unknown:
                raise ConfigError(
                    f"hdf5.{unknown[0]}: split names are {', '.join(rules.SPLITS)}",
                    key=unknown[0],
                )
            if self.classes:
                raise ConfigError("classes works for folder and csv data sets", key="classes")
        elif self.files and self.format not in rules.MEMBER_FORMATS:
            raise ConfigError(
                f"files lists tar shards or Parquet files, for {' and '.join(rules.MEMBER_FORMATS)}"
                f" data sets; a {self.format} data set takes a path",
                key="files",
            )
        elif self.path is None and not self.files:
            raise ConfigError("needs a 'path' key", key="name")
        unknown = [s for s in self.files if s and s not in rules.SPLITS]
        if unknown:
            raise ConfigError(
                f"files.{unknown[0]}: split names are {', '.join(rules.SPLITS)}", key="files"
            )

    def describe(self) -> dict[str, Any]:
        """The configuration as recorded in the cache (and hashed into the listing fingerprint)."""
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
        if self.files:  # the fields below only when set, so existing caches keep theirs
            out["files"] = {split: list(p) for split, p in self.files.items()}
        if self.image:
            out["image"] = self.image
        if self.label:
            out["label"] = self.label
        if self.classes:  # only when set, so existing caches keep their fingerprint
            out["classes"] = list(self.classes)
        if self.resplit:
            out["resplit"] = True
        return out


_FORMAT_OF_SUFFIX = {"csv": "csv", "tar": "webdataset", "parquet": "parquet"}


def _files_by_split(files: Any) -> dict[str, tuple[str, ...]]:
    """``files`` as given (a list, or lists by split) -> patterns by split (``""``: the
    data set declares no split). A value that is neither is kept for :func:`check`."""
    if isinstance(files, str):
        return {"": (files,)}
    if isinstance(files, Mapping):
        if not all(
            isinstance(v, str)
            or (isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v))
            for v in files.values()
        ):
            raise ConfigError(
                "files must be a list of paths or URLs, or a table of such lists by split",
                key="files",
            )
        return {str(k): (v,) if isinstance(v, str) else tuple(v) for k, v in files.items()}
    if isinstance(files, (list, tuple)) and all(isinstance(x, str) for x in files):
        return {"": tuple(files)} if files else {}
    raise ConfigError(
        f"files must be a list of paths or URLs, or a table of such lists by split, got {files!r}",
        key="files",
    )
