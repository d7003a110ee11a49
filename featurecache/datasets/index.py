"""The stat index: which images each object version holds, so an unchanged object is never read.

A WebDataset shard or a Parquet file holds many images. Listing them needs the object's
bytes; the stat index records, per object URL, the stat it had when it was read (size
and version: :class:`~featurecache.datasets.objects.ObjectStat`) and what it held (each
image's name, content key and label, the samples skipped, the damage found). The next
listing stats the objects (listing requests only) and takes the members of every
object whose stat is unchanged from the index, as DVC's stat cache does for files: a
no-op refresh reads no object at all. A changed object is read again; an object that is
gone drops out of the listing, so its rows leave the cache at the next commit.

The index is one gzip'd JSON file per data set, in the cache's workspace (written by
:mod:`featurecache.extraction`, which knows where that is), at a local path or an fsspec
URL. Its entries are facts about immutable object versions, so a lost write costs a
re-read, never a wrong row; it is rewritten whole (local: a rename; object store: one PUT).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from featurecache.config import is_url
from featurecache.datasets.members import Member, Members
from featurecache.datasets.objects import ObjectStat, filesystem

log = logging.getLogger(__name__)

#: Bumped when an entry's meaning changes; entries of another version are read again.
INDEX_VERSION = 1


class ObjectIndex:
    """Members of object versions, by URL; persisted at ``path`` (None: this process only)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self._entries: dict[str, dict] | None = None  # read on first use
        self._dirty = False
        self._forgotten: set[str] = set()

    @property
    def entries(self) -> dict[str, dict]:
        """Object URL -> entry, read from ``path`` on first use (data sets of single-image
        files never touch the index)."""
        if self._entries is None:
            self._entries = self._read() if self.path is not None else {}
        return self._entries

    def get(self, stat: ObjectStat, reader: str) -> Members | None:
        """What the object held when it had ``stat``, read the way ``reader`` names (its
        format and image/label choices); None if it was not read at that stat."""
        entry = self.entries.get(stat.url)
        if entry is None or (entry["size"], entry["version"], entry["reader"]) != (
            stat.size,
            stat.version,
            reader,
        ):
            return None
        return Members(
            members=[Member(*m) for m in entry["members"]],
            skipped=entry["skipped"],
            damage=entry["damage"],
            class_names=entry["class_names"],
        )

    def put(self, stat: ObjectStat, reader: str, members: Members) -> None:
        """Record what ``stat``'s object holds (replacing an older version's entry)."""
        self._forgotten.discard(stat.url)
        self.entries[stat.url] = {
            "size": stat.size,
            "version": stat.version,
            "reader": reader,
            "members": [[m.name, m.key, m.label] for m in members.members],
            "skipped": members.skipped,
            "damage": members.damage,
            "class_names": members.class_names,
        }
        self._dirty = True

    def forget(self, urls: Iterable[str]) -> None:
        """Drop the entries of objects that are gone."""
        for url in urls:
            if self.entries.pop(url, None) is not None:
                self._dirty = True
                self._forgotten.add(url)

    def save(self) -> None:
        """Write the index if it changed (merged with entries another process saved since)."""
        if self.path is None or not self._dirty:
            return
        merged = {**self._read(), **self.entries}
        for url in self._forgotten - set(self.entries):
            merged.pop(url, None)
        data = gzip.compress(
            json.dumps({"version": INDEX_VERSION, "objects": merged}).encode(), mtime=0
        )
        if is_url(self.path):
            fs, path = filesystem(self.path)
            fs.pipe_file(path, data)
        else:
            target = Path(self.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        self._entries, self._dirty, self._forgotten = merged, False, set()

    def _read(self) -> dict[str, dict]:
        assert self.path is not None
        try:
            if is_url(self.path):
                fs, path = filesystem(self.path)
                raw = fs.cat_file(path)
            else:
                raw = Path(self.path).read_bytes()
            doc = json.loads(gzip.decompress(raw))
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except (OSError, ValueError, EOFError) as exc:
            log.warning(
                "the stat index %s cannot be read (%s); objects are read again", self.path, exc
            )
            return {}
        if doc.get("version") != INDEX_VERSION:
            return {}
        return dict(doc.get("objects", {}))


def describe_reader(fmt: str, image: str, label: str) -> str:
    """The key under which an object's members are valid: how they were read."""
    return json.dumps([fmt, image, label])
