"""Objects where images live: local files, or objects at fsspec URLs (``s3://``, ``gs://``).

Three operations, each shaped by what goes wrong at scale:

- :func:`expand` turns what a pipeline names (paths, URLs, brace patterns
  ``train-{000000..000127}.tar``, folders) into object URLs. Brace patterns are expanded
  by ``braceexpand`` (WebDataset's own dependency); only a named *folder* is listed.
- :func:`stat_objects` gets every object's size and version from listing requests (S3
  ``ListObjectsV2`` returns 1,000 objects with their ETags per request): of the names'
  common prefix (``train-0``) where they share one, else of their folder, or by a HEAD
  each for a few objects of a folder that may hold millions; never a GET, so a no-op
  refresh reads no image bytes.
- :func:`fetch` reads a **whole** object, checks it against the listing (size, and the
  MD5 of an S3 single-part ETag) and retries with exponential backoff (``tenacity``)
  when the connection drops or the bytes do not match: a stream cut mid-object cannot
  resume, so the object is fetched again, whole, before any of it is used.

An object's *version* is its modification time in ns for a local file, and a 63-bit
BLAKE2b of its ETag in object storage (ETags change whenever the content does; S3
``LastModified`` has one-second resolution). Together with the size it is the stat that
the cache's stat index and generations record (``sizes``, ``mtimes`` columns).

Credentials and endpoints are read by the file system packages themselves (s3fs: the
``AWS_*`` variables, ``~/.aws``; gcsfs: ``GOOGLE_APPLICATION_CREDENTIALS``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from featurecache.config import is_url
from featurecache.errors import DatasetError, DependencyError

log = logging.getLogger(__name__)

#: Objects of one folder stat'ed by a HEAD each; more are stat'ed by listing the folder
#: (1,000 a request), so that a manifest naming a few objects of a huge prefix never lists it.
HEAD_AT_MOST = 100
#: Shortest common start of the named objects' names (``train-0``) that is listed as a
#: prefix (S3 filters by prefix on the server), rather than listing their folder.
PREFIX_AT_LEAST = 4
#: Folder levels of a listed tree read a level at a time (one delimited listing per
#: folder) before each folder below is listed whole, all on threads: a data set at
#: ``root/<split>/<class>/`` is listed as one recursive listing per class, side by side,
#: rather than one listing of every object in a row (a request returns 1,000 objects).
TREE_LEVELS = 2
#: Listing and HEAD requests in flight at once.
REQUEST_THREADS = 16
#: The variables a missing-credentials error names, by URL scheme.
CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE with ~/.aws/credentials; "
    "AWS_ENDPOINT_URL for an S3-compatible server other than AWS)",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS (or gcloud's application-default login)",
    "gcs": "GOOGLE_APPLICATION_CREDENTIALS (or gcloud's application-default login)",
}


@dataclass(frozen=True)
class ObjectStat:
    """One object as a listing saw it: ``url`` (a local absolute path or a URL), ``size``
    in bytes, ``version`` (int: mtime in ns locally, 63-bit BLAKE2b of the ETag in object
    storage) and the ETag itself (``""`` for a local file)."""

    url: str
    size: int
    version: int
    etag: str = ""


class StorageError(DatasetError):
    """Storage cannot be used at all (no credentials, server unreachable): the run stops."""


def etag_version(etag: str) -> int:
    """The version number of an ETag: the first 63 bits of its BLAKE2b (an int64 >= 0)."""
    digest = hashlib.blake2b(etag.strip('"').encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@functools.lru_cache(maxsize=16)
def _filesystem(protocol: str, environment: tuple[str | None, ...]) -> Any:
    import fsspec

    del environment  # part of the cache key: a new endpoint or key gets a new client
    try:
        return fsspec.filesystem(protocol, skip_instance_cache=True)
    except ImportError as exc:
        raise DependencyError(
            f"reading {protocol}:// needs a package that is not installed ({exc}); for s3:// "
            "install 'featurecache[data]' (s3fs)"
        ) from exc


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec file system of ``url`` and the path on it (one client per scheme and
    endpoint, made once per process).

    Raises
    ------
    DependencyError
        If the scheme's package (s3fs, gcsfs) is not installed.
    """
    from fsspec.core import split_protocol

    protocol, path = split_protocol(url)
    environment = tuple(
        os.environ.get(name)
        for name in (
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_PROFILE",
            "GOOGLE_APPLICATION_CREDENTIALS",
        )
    )
    fs = _filesystem(protocol or "file", environment)
    return fs, fs._strip_protocol(url)


def _url(fs: Any, path: str) -> str:
    return fs.unstrip_protocol(path)


def expand(patterns: Iterable[str], suffixes: Sequence[str]) -> list[str]:
    """Object URLs (or absolute local paths) named by ``patterns``, in the order given.

    A pattern is a path or URL with optional brace ranges (``a-{000..009}.tar``); one
    that names a folder (no suffix from ``suffixes``, such as ``.tar``) is listed, its
    objects with those suffixes sorted by name. Duplicates are kept once.

    Raises
    ------
    DatasetError
        If a folder holds no such object, or cannot be listed (the message says why).
    """
    from braceexpand import braceexpand

    found: dict[str, None] = {}
    for pattern in patterns:
        for item in braceexpand(pattern):
            if item.lower().endswith(tuple(suffixes)):
                found.setdefault(item if is_url(item) else str(Path(item).absolute()), None)
                continue
            for url in _list_folder(item, suffixes):
                found.setdefault(url, None)
    return list(found)


def _list_folder(folder: str, suffixes: Sequence[str]) -> list[str]:
    if not is_url(folder):
        root = Path(folder)
        if not root.is_dir():
            raise DatasetError(f"{folder}: no such file or folder of {', '.join(suffixes)} files")
        listed = sorted(str(p.absolute()) for p in root.rglob("*") if p.suffix.lower() in suffixes)
    else:
        fs, path = filesystem(folder)
        with remote_errors(folder):
            fs.invalidate_cache(path)
            listed = sorted(
                _url(fs, p) for p in fs.find(path) if p.lower().endswith(tuple(suffixes))
            )
    if not listed:
        raise DatasetError(f"{folder}: holds no {' or '.join(suffixes)} files")
    return listed


def stat_objects(urls: Sequence[str]) -> dict[str, ObjectStat]:
    """The stat of each of ``urls`` that exists, from listing requests (or HEADs; see above).

    Raises
    ------
    DatasetError
        If a folder cannot be listed (no credentials, server unreachable); the message
        names the URL, the cause and, for credentials, the variables read.
    """
    stats: dict[str, ObjectStat] = {}
    by_folder: dict[str, list[str]] = {}
    for url in urls:
        by_folder.setdefault(url.rsplit("/", 1)[0], []).append(url)
    for folder, members in by_folder.items():
        if not is_url(folder):
            for url in members:
                try:
                    st = os.stat(url)
                except OSError:
                    continue
                stats[url] = ObjectStat(url, st.st_size, st.st_mtime_ns)
            continue
        common = os.path.commonprefix([u.rsplit("/", 1)[1] for u in members])
        if len(common) >= PREFIX_AT_LEAST:  # train-000000.tar...: list only those names
            stats.update(list_stats(folder, prefix=common))
        elif len(members) > HEAD_AT_MOST:
            stats.update(list_stats(folder, recursive=False))
        else:  # a few objects of a folder that may hold millions: never list it
            stats.update(_head_stats(members))
    return {url: stats[url] for url in urls if url in stats}


def _head_stats(urls: Sequence[str]) -> dict[str, ObjectStat]:
    """The stat of each of ``urls`` that exists, by one HEAD request each (on threads)."""
    from concurrent.futures import ThreadPoolExecutor

    def head(url: str) -> ObjectStat | None:
        fs, path = filesystem(url)
        with remote_errors(url):
            try:
                return _stat_of(_url(fs, path), fs.info(path, refresh=True))
            except FileNotFoundError:
                return None

    with ThreadPoolExecutor(max_workers=REQUEST_THREADS, thread_name_prefix="head") as pool:
        return {s.url: s for s in pool.map(head, urls) if s is not None}


def _stat_of(url: str, entry: dict[str, Any]) -> ObjectStat:
    etag = str(entry.get("ETag") or entry.get("etag") or entry.get("md5Hash") or "")
    version = etag_version(etag) if etag else _mtime_ns(entry)
    return ObjectStat(url, int(entry["size"]), version, etag.strip('"'))


def list_stats(folder: str, recursive: bool = True, prefix: str = "") -> dict[str, ObjectStat]:
    """Every object under the URL ``folder`` (recursively, or only its own objects; with
    ``prefix``, only those whose names start with it, where the store can filter by
    prefix, as S3 does) with its stat, from listing requests only (no object is read).
    A recursive listing reads the top :data:`TREE_LEVELS` levels of folders first and
    then lists the folders below them side by side."""
    fs, path = filesystem(folder)
    with remote_errors(folder):
        fs.invalidate_cache(path)
        if prefix:
            try:
                entries = fs.find(path, prefix=prefix, detail=True).values()
            except TypeError:  # a file system without prefix listing: the whole folder
                entries = fs.ls(path, detail=True)
        elif recursive:
            entries = _walk(fs, path)
        else:
            try:
                entries = fs.ls(path, detail=True)
            except FileNotFoundError:
                entries = []
    out = {}
    for entry in entries:
        if entry.get("type", "file") == "file":
            url = _url(fs, entry["name"])
            out[url] = _stat_of(url, entry)
    return out


def _walk(fs: Any, path: str) -> list[dict[str, Any]]:
    """Every object under ``path`` as listing entries: :data:`TREE_LEVELS` levels of
    folders a level at a time, then each folder below them whole, on threads."""
    from concurrent.futures import ThreadPoolExecutor

    def level(folder: str) -> list[dict[str, Any]]:
        try:
            return list(fs.ls(folder, detail=True, refresh=True))
        except FileNotFoundError:
            return []

    entries: list[dict[str, Any]] = []
    folders = [path]
    with ThreadPoolExecutor(max_workers=REQUEST_THREADS, thread_name_prefix="list") as pool:
        for _ in range(TREE_LEVELS):
            below: list[dict[str, Any]] = []
            for listed in pool.map(level, folders):
                for entry in listed:
                    is_folder = entry.get("type") == "directory"
                    (below if is_folder else entries).append(entry)
            folders = [entry["name"] for entry in below]
        for found in pool.map(lambda folder: fs.find(folder, detail=True), folders):
            entries.extend(found.values())
    return entries


def _mtime_ns(entry: dict[str, Any]) -> int:
    """The entry's modification time in ns; where it cannot be told, a version that
    matches nothing (so the object is read again rather than taken as unchanged)."""
    modified: Any = entry.get("LastModified") or entry.get("mtime") or entry.get("updated")
    if isinstance(modified, str):
        try:
            modified = datetime.fromisoformat(modified.replace("Z", "+00:00"))
        except ValueError:
            modified = None
    if hasattr(modified, "timestamp"):
        return int(modified.timestamp() * 1e9)
    try:
        return int(float(modified) * 1e9)
    except (TypeError, ValueError):
        return etag_version(f"unknown {uuid.uuid4()}")


@contextmanager
def remote_errors(url: str) -> Iterator[None]:
    """Turn what a remote file system raises into one line: missing credentials (naming
    the variables read), an unreachable server, or a denied request.

    Raises
    ------
    StorageError
        In place of such an error; any other passes through unchanged.
    """
    try:
        yield
    except (DatasetError, DependencyError, FileNotFoundError):
        raise
    except Exception as exc:
        message = describe_remote_error(url, exc)
        if message is None:
            raise
        raise StorageError(message) from exc


def describe_remote_error(url: str, exc: BaseException) -> str | None:
    """One line for an error of a remote file system, or None for one that is not."""
    names = error_names(exc)
    scheme = url.split("://", 1)[0]
    if "NoCredentialsError" in names or "PartialCredentialsError" in names:
        needed = CREDENTIALS.get(scheme, "the credentials its file system package reads")
        return f"{url}: no credentials to read it; set {needed}"
    if isinstance(exc, PermissionError):
        return f"{url}: access denied ({exc}); check the credentials and the bucket's policy"
    if isinstance(exc, (OSError, TimeoutError)) or names & {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ClientConnectorError",
        "ServerDisconnectedError",
    }:
        return (
            f"{url}: cannot reach the storage server ({type(exc).__name__}: {exc}); "
            "check the network and AWS_ENDPOINT_URL"
        )
    return None


def error_names(exc: BaseException) -> set[str]:
    """The class names of ``exc`` and of the exceptions it was raised from or during
    (botocore's and aiohttp's errors, told apart without importing them)."""
    return {type(e).__name__ for e in _chain(exc)}


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
