"""One image of a data set, as listed: where it is, its label and split, its file stat."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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


def file_stat(path: Path) -> tuple[int, int]:
    """``(size in bytes, modification time in ns)`` of ``path``; ``(-1, -1)`` if unreadable."""
    try:
        stat = path.stat()
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns
