"""Reading an object whole: fetched, checked against its listing, retried; kept locally.

A stream that breaks mid-object cannot resume, and a WebDataset shard or Parquet file is
only useful whole. :func:`fetch` reads a **whole** object, checks it against the listing
(size, and the MD5 of an S3 single-part ETag) and retries with exponential backoff
(``tenacity``) when the connection drops or the bytes do not match, before any of it is
used. :data:`FETCHED` keeps this process's local copies (:class:`FetchCache`), so that an
object read to be indexed is not downloaded again to be extracted.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from featurecache.config import is_url
from featurecache.datasets.objects import (
    ObjectStat,
    StorageError,
    describe_remote_error,
    error_names,
    filesystem,
)
from featurecache.errors import DatasetError

log = logging.getLogger(__name__)

#: Attempts to fetch one object (the first included) before it is given up.
FETCH_ATTEMPTS = 5
#: Seconds of the first wait between attempts; doubled each time, at most 16 s.
FETCH_BACKOFF = 0.5

#: Bytes of fetched objects one process keeps on local disk (least recently used first out).
FETCH_CACHE_BYTES = 4 << 30


class ObjectGoneError(DatasetError):
    """An object that was listed is not there any more (deleted between listing and reading)."""


class ObjectUnreadableError(DatasetError):
    """An object could not be read whole and unchanged after :data:`FETCH_ATTEMPTS` attempts."""


class _MismatchError(OSError):
    """The fetched bytes are not the listed object's (short read, other content)."""


def fetch(stat: ObjectStat, into: Path | None = None) -> bytes | Path:
    """The whole object ``stat`` names, checked against the listing, retried with backoff.

    With ``into`` (a file path) the object is downloaded there and the path returned;
    without, its bytes. Local files are read as they are (no retry).

    Raises
    ------
    ObjectGoneError
        If the object no longer exists (deleted since the listing; not retried).
    ObjectUnreadableError
        If it still cannot be read whole, or differs from the listing (changed since;
        size or MD5 of its ETag), after :data:`FETCH_ATTEMPTS` attempts.
    StorageError
        Without credentials, or when the server cannot be reached (after the attempts).
    """
    import tenacity

    if not is_url(stat.url):
        try:
            return Path(stat.url).read_bytes() if into is None else Path(stat.url)
        except FileNotFoundError as exc:
            raise ObjectGoneError(f"{stat.url}: gone since it was listed") from exc
    fs, path = filesystem(stat.url)
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(FETCH_ATTEMPTS),
        wait=tenacity.wait_exponential(multiplier=FETCH_BACKOFF, max=16),
        retry=tenacity.retry_if_exception(_transient),
        before_sleep=partial(_log_retry, stat.url),
        reraise=True,
    )
    try:
        return retrying(_fetch_once, fs, path, stat, into)
    except FileNotFoundError as exc:
        raise ObjectGoneError(f"{stat.url}: gone since it was listed") from exc
    except _MismatchError as exc:
        raise ObjectUnreadableError(f"{stat.url}: {exc} after {FETCH_ATTEMPTS} attempts") from exc
    except Exception as exc:
        message = describe_remote_error(stat.url, exc)
        if message is None:
            raise ObjectUnreadableError(
                f"{stat.url}: cannot be read after {FETCH_ATTEMPTS} attempts: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        raise StorageError(message) from exc


def _log_retry(url: str, state: Any) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    log.warning("%s: attempt %d failed (%s), retrying", url, state.attempt_number, error)


def _transient(exc: BaseException) -> bool:
    """Worth another attempt: anything but a missing object or missing credentials."""
    names = error_names(exc)
    return not (
        isinstance(exc, (FileNotFoundError, PermissionError, DatasetError))
        or names & {"NoCredentialsError", "PartialCredentialsError"}
    )


def _fetch_once(fs: Any, path: str, stat: ObjectStat, into: Path | None) -> bytes | Path:
    if into is None:
        data = fs.cat_file(path)
        _check(
            fs, path, stat, len(data), lambda: hashlib.md5(data, usedforsecurity=False).hexdigest()
        )
        return data
    part = into.with_name(into.name + ".part")
    fs.get_file(path, str(part))
    _check(fs, path, stat, part.stat().st_size, lambda: _md5_file(part))
    part.replace(into)
    return into


_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")


def _check(fs: Any, path: str, stat: ObjectStat, size: int, md5: Any) -> None:
    """That the bytes read are the listed object's: its size, and the MD5 a single-part
    S3 ETag is. Where the MD5 differs but the object's ETag is still the listed one, the
    ETag is not an MD5 (SSE-KMS or SSE-C encrypted objects): the bytes are accepted."""
    if size != stat.size:
        raise _MismatchError(f"read {size} bytes of the {stat.size} listed")
    if stat.url.startswith("s3://") and _MD5_ETAG.match(stat.etag) and md5() != stat.etag:
        current = str(fs.info(path, refresh=True).get("ETag", "")).strip('"')
        if current != stat.etag:
            raise _MismatchError("its bytes do not match its ETag (changed since it was listed)")


def _md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FetchCache:
    """Local copies of remote objects, fetched whole once per process (one download per
    object however many threads ask), kept up to :data:`FETCH_CACHE_BYTES` (least
    recently used first out) in a temporary folder removed when the process ends.

    Objects are handed out as open files (:meth:`open`): a copy evicted while a thread
    still reads it is unlinked, and the open file keeps working.
    """

    def __init__(self, budget: int = FETCH_CACHE_BYTES) -> None:
        self.budget = budget
        self._folder: Path | None = None
        self._files: OrderedDict[tuple[str, int], Path] = OrderedDict()
        self._locks: dict[tuple[str, int], threading.Lock] = {}
        self._lock = threading.Lock()

    def open(self, stat: ObjectStat) -> BinaryIO:
        """The object ``stat`` names, open for reading (a local object: its own file).

        Raises
        ------
        ObjectGoneError, ObjectUnreadableError, StorageError
            As :func:`~featurecache.datasets.objects.fetch`.
        """
        if not is_url(stat.url):
            try:
                return open(stat.url, "rb")  # noqa: SIM115 (the caller closes it)
            except FileNotFoundError as exc:
                raise ObjectGoneError(f"{stat.url}: gone since it was listed") from exc
        key = (stat.url, stat.version)
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in self._files and self._files[key].exists():
                    self._files.move_to_end(key)
                    return open(self._files[key], "rb")  # noqa: SIM115
            name = hashlib.blake2b(f"{stat.url}\0{stat.version}".encode(), digest_size=12)
            target = self._dir() / f"{name.hexdigest()}-{stat.url.rsplit('/', 1)[-1]}"
            fetch(stat, into=target)
            with self._lock:
                self._files[key] = target
                handle = open(target, "rb")  # noqa: SIM115 (opened before any eviction)
                self._evict()
            return handle

    def _dir(self) -> Path:
        with self._lock:
            if self._folder is None:
                self._folder = Path(tempfile.mkdtemp(prefix="featurecache-fetch-"))
                weakref.finalize(self, shutil.rmtree, self._folder, True)
            return self._folder

    def _evict(self) -> None:
        total = sum(p.stat().st_size for p in self._files.values() if p.exists())
        while len(self._files) > 1 and total > self.budget:
            _, oldest = self._files.popitem(last=False)
            total -= oldest.stat().st_size if oldest.exists() else 0
            oldest.unlink(missing_ok=True)


#: This process's fetched objects (shared by listing and reading, so that an object read
#: to be indexed is not downloaded again to be extracted).
FETCHED = FetchCache()
