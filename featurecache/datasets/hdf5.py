"""HDF5 data sets: one file per split, images and labels as arrays.

Rows are read in slabs aligned with the file's chunks (:class:`RowReader`): a
gzip-compressed, chunked array (what h5py writes whenever compression is on, with
chunks it picks itself) costs one decompression per chunk, not one per row.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from featurecache.config import DatasetConfig, Hdf5Source
from featurecache.datasets.records import Record, file_stat
from featurecache.errors import DatasetError

#: Largest slab a :class:`RowReader` holds in memory (bytes); a chunk taller than this
#: is read in slabs of fewer rows, which HDF5's own chunk cache (:data:`CHUNK_CACHE`)
#: then serves without decompressing the chunk again.
SLAB_BYTES = 64 * 2**20
#: HDF5's chunk cache per open file (``h5py.File(rdcc_nbytes=...)``; h5py's default is 1 MiB).
CHUNK_CACHE = 64 * 2**20
#: Slabs kept per array: decoding threads work on neighbouring rows, at most two slabs apart.
SLABS_KEPT = 2


class RowReader:
    """One HDF5 image array, read row by row through slabs aligned with its chunks.

    ``reader[i]`` is row ``i`` (an ndarray, the array's dtype). The slab holding it,
    ``chunks[0]`` rows starting at a multiple of ``chunks[0]`` (capped at
    :data:`SLAB_BYTES`), is read in one call and kept while its rows are used (the last
    :data:`SLABS_KEPT` slabs), so each compressed chunk is decompressed once per pass,
    not once per row. A contiguous array is read one row per call. Thread-safe: h5py
    serialises its calls anyway, and the lock also guards the slab cache.
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self.file = dataset.file
        row_bytes = max(1, int(np.prod(dataset.shape[1:])) * dataset.dtype.itemsize)
        chunk_rows = dataset.chunks[0] if dataset.chunks else 1
        self.slab = max(1, min(chunk_rows, SLAB_BYTES // row_bytes))
        self._slabs: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __getitem__(self, index: int) -> np.ndarray:
        if self.slab == 1:
            with self._lock:
                return self.dataset[index]
        start = index - index % self.slab
        with self._lock:
            rows = self._slabs.get(start)
            if rows is None:
                rows = self.dataset[start : start + self.slab]
                self._slabs[start] = rows
                while len(self._slabs) > SLABS_KEPT:
                    self._slabs.popitem(last=False)
            else:
                self._slabs.move_to_end(start)
        return rows[index - start].copy()


def hdf5_records(config: DatasetConfig) -> tuple[list[Record], list[str], dict[str, RowReader]]:
    """The records of an HDF5 data set, its class names, and its image arrays by file.

    ``source`` of a record is ``file.h5[index]``. The arrays stay open for reading rows
    through a :class:`RowReader` each (:meth:`featurecache.datasets.Listing.close`
    closes them).

    Raises
    ------
    DatasetError
        If a file is missing or unreadable, a key is missing or ambiguous, images and
        labels differ in length, or the class names of two files disagree.
    """
    import h5py

    records: list[Record] = []
    arrays: dict[str, RowReader] = {}
    class_names: list[str] | None = None
    for split, source in config.hdf5.items():
        if not source.path.is_file():
            raise DatasetError(
                f"data set {config.name!r}: HDF5 file {str(source.path)!r} does not exist"
            )
        try:
            handle = h5py.File(source.path, "r", rdcc_nbytes=CHUNK_CACHE)
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
        arrays[str(source.path)] = RowReader(images)
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
