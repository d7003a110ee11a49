"""One image of a data set, as listed: where it is, its label and split, its file stat."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Record:
    """One image of a data set.

    ``source`` is the file path, or ``file.h5:key[index]`` for an array row;
    ``label`` indexes :attr:`Listing.class_names`; ``split`` is ``train``,
    ``validation`` or ``test``; ``locator`` is the relative path (or row index)
    used for the seeded split; ``size`` (bytes) and ``mtime_ns`` are the source
    file's, as ``os.stat`` gives them (-1 when it cannot be read), so that an
    unchanged file is recognised without reading it (as git's index does). For an
    image inside an object (a tar shard, a Parquet file) ``source`` is
    ``<object URL>#<member>``, the stat is the object's (``mtime_ns``: its version, see
    :mod:`featurecache.datasets.objects`) and ``key`` its content key as the stat index
    recorded it (``""`` where it is not known without reading the image).
    """

    source: str
    label: int
    split: str
    locator: str
    size: int = -1
    mtime_ns: int = -1
    key: str = ""


def file_stat(path: Path) -> tuple[int, int]:
    """``(size in bytes, modification time in ns)`` of ``path``; ``(-1, -1)`` if unreadable."""
    try:
        stat = path.stat()
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


@dataclass(frozen=True)
class RawImage:
    """One image as a data source hands it over, before decoding.

    ``key`` is the content key of ``data`` (:func:`featurecache.images.content_key`:
    BLAKE2b-128 of the bytes, hex); ``data`` is the encoded file's bytes, or an HDF5 row
    as an ndarray of shape ``(h, w, 3)`` or ``(h, w)``; ``source`` names where it came from
    (a path, ``file.h5[index]``), for messages.
    """

    key: str
    data: bytes | np.ndarray
    source: str
