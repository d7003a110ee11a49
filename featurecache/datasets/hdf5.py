"""HDF5 data sets: one file per split, images and labels as arrays (read row by row)."""

from __future__ import annotations

import numpy as np

from featurecache.config import DatasetConfig, Hdf5Source
from featurecache.datasets.records import Record, file_stat
from featurecache.errors import DatasetError


def hdf5_records(config: DatasetConfig) -> tuple[list[Record], list[str], dict[str, object]]:
    """The records of an HDF5 data set, its class names, and its open image arrays by file.

    ``source`` of a record is ``file.h5[index]``. The arrays stay open for reading rows
    (:meth:`featurecache.datasets.Listing.close` closes them).

    Raises
    ------
    DatasetError
        If a file is missing or unreadable, a key is missing or ambiguous, images and
        labels differ in length, or the class names of two files disagree.
    """
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
        size, mtime_ns = file_stat(source.path)
        records.extend(
            Record(
                f"{source.path}[{i}]", int(label), split, f"{source.path.name}[{i}]", size, mtime_ns
            )
            for i, label in enumerate(labels)
        )
    if class_names is None:
        raise DatasetError(f"data set {config.name!r}: no [datasets.hdf5.<split>] file given")
    return records, class_names, arrays


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
