"""Where a cache lives: a local folder, or any fsspec URL (``memory://``, ``s3://``...).

:class:`featurecache.cache.Cache` asks a :class:`Location` for the few file-system
operations it needs (list, read, remove, measure) and for the two that differ between
a POSIX folder and an object store:

* **Publishing a generation.** Locally a generation is written as
  ``gen-N.partial`` and renamed, and the ``current`` symlink is swapped with one
  ``os.replace``. Object stores have neither rename nor symlinks: a generation is
  written in place under its final name (nothing names it yet, so no reader sees
  it) and ``current`` is a small object holding the generation's name, written
  last with one PUT, which S3 makes visible atomically (a reader sees the old
  object or the new one, never a mix).
* **The writer lock.** Locally an OS file lock in the cache's workspace (below). An
  object store has no such lock: the lock file is then kept on the writing machine
  (``$XDG_CACHE_HOME/featurecache/locks``), so it serialises the writers of one
  machine only; see the README ("Scaling out") for running several.

featurecache's own bookkeeping (staging areas, locks, ONNX exports) lives in the
cache's *workspace*, a sibling of the cache named ``.<name>.featurecache``
(:meth:`Location.workspace`), never inside the zarr hierarchy: ``zarr.open_group(cache)``
and ``xarray`` see featurecache's groups and arrays only. It is on the same file
system as the cache (commits read the staging area next to the generation they write).

Credentials and endpoints for ``s3://`` come from the usual environment
variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``AWS_ENDPOINT_URL``...), read by s3fs/botocore themselves.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from featurecache.cache.generations import partial_name
from featurecache.config import is_url
from featurecache.errors import (
    CacheError,
    DependencyError,
    FeaturecacheError,
    describe_os_error,
)

CURRENT = "current"
WORKSPACE_SUFFIX = ".featurecache"
#: Where earlier featurecache versions kept their bookkeeping: inside the cache root
#: (zarr warns about these folders); ``featurecache gc`` removes them.
LEGACY_BOOKKEEPING = (".staging", ".locks", ".engines")


def storable(text: str) -> str:
    """A path as zarr can store it (UTF-8): undecodable bytes of a non-UTF-8 file
    name become ``\\xNN`` escapes, deterministically."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


def user_cache_dir() -> Path:
    """Local folder for what must stay on this machine (locks, ONNX exports of a remote cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "featurecache"


class Location:
    """A cache root: a local folder (:class:`LocalLocation`) or a URL (:class:`UrlLocation`).

    Paths passed to and returned by the methods are plain strings: file paths for a
    local folder, paths without the scheme for a URL (as fsspec uses them).
    """

    local = True

    def __init__(self, root: str) -> None:
        self.root = root

    @staticmethod
    def parse(value: str | Path) -> Location:
        """The location named by a folder path or a URL.

        Raises
        ------
        DependencyError
            If the URL's scheme needs a package that is not installed (s3fs for s3://).
        CacheError
            If the URL cannot be parsed.
        """
        text = str(value)
        if text.startswith("file://"):
            text = text[len("file://") :]
        if not is_url(text):
            return LocalLocation(text)
        return UrlLocation(text)

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def url(self, path: str | None = None) -> str:
        """``path`` (default: the root) as the user would write it."""
        return path if path is not None else self.root

    @contextmanager
    def os_errors(self, doing: str) -> Iterator[None]:
        """Turn an ``OSError`` at the cache boundary into one line naming the path and cause.

        Raises
        ------
        CacheError
            In place of any ``OSError`` (not a directory, permission denied, read-only
            file system, no space left, file too large: :func:`describe_os_error`).
        """
        try:
            yield
        except FeaturecacheError:  # LockedError is an OSError too: already one line
            raise
        except OSError as exc:
            raise CacheError(
                describe_os_error(exc, f"{doing} the cache at {self.url()!r}")
            ) from exc

    # Implemented by the subclasses.
    def is_file(self, path: str) -> bool:
        raise NotImplementedError

    def read_bytes(self, path: str) -> bytes | None:
        raise NotImplementedError

    def subdirs(self, path: str) -> list[str]:
        raise NotImplementedError

    def entries(self, path: str) -> list[str]:
        raise NotImplementedError

    def remove(self, path: str) -> None:
        raise NotImplementedError

    def size(self, path: str) -> int:
        raise NotImplementedError

    def pointer(self, group: str) -> str | None:
        raise NotImplementedError

    def set_pointer(self, group: str, name: str) -> None:
        raise NotImplementedError

    def writing_name(self, name: str) -> str:
        raise NotImplementedError

    def publish(self, group: str, writing: str, name: str) -> None:
        raise NotImplementedError

    def lock_file(self, dataset: str) -> Path:
        raise NotImplementedError

    def engine_dir(self) -> Path:
        raise NotImplementedError

    def workspace(self) -> Location:
        """The cache's workspace: a sibling ``.<name>.featurecache`` of the root, for
        staging areas (and, for a folder, locks and ONNX exports).

        Raises
        ------
        CacheError
            If the root has no parent to hold a sibling (a bucket's root).
        """
        raise NotImplementedError


class LocalLocation(Location):
    """A folder on a POSIX file system: renames and symlink swaps are atomic."""

    local = True

    def __init__(self, root: str) -> None:
        super().__init__(str(Path(root).expanduser()))

    def join(self, *parts: str) -> str:
        return str(Path(self.root, *parts))

    def is_file(self, path: str) -> bool:
        return Path(path).is_file()

    def read_bytes(self, path: str) -> bytes | None:
        try:
            return Path(path).read_bytes()
        except OSError:
            return None

    def subdirs(self, path: str) -> list[str]:
        folder = Path(path)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.is_symlink())

    def entries(self, path: str) -> list[str]:
        folder = Path(path)
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def remove(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def size(self, path: str) -> int:
        target = Path(path)
        if target.is_file():
            return target.stat().st_size
        return sum(
            p.stat().st_size for p in target.rglob("*") if p.is_file() and not p.is_symlink()
        )

    def pointer(self, group: str) -> str | None:
        link = Path(group, CURRENT)
        return os.readlink(link) if link.is_symlink() else None

    def set_pointer(self, group: str, name: str) -> None:
        tmp = Path(group, f".{CURRENT}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(name)
        os.replace(tmp, Path(group, CURRENT))

    def writing_name(self, name: str) -> str:
        return partial_name(name)

    def publish(self, group: str, writing: str, name: str) -> None:
        os.replace(Path(group, writing), Path(group, name))

    def workspace(self) -> Location:
        root = Path(self.root).resolve()
        return LocalLocation(str(root.parent / f".{root.name}{WORKSPACE_SUFFIX}"))

    def lock_file(self, dataset: str) -> Path:
        return Path(self.workspace().root, "locks", f"{dataset}.lock")

    def engine_dir(self) -> Path:
        return Path(self.workspace().root, "engines")


class UrlLocation(Location):
    """A prefix on an fsspec file system (an object store, or ``memory://`` in tests).

    Only whole objects are written (zarr's chunks and metadata, the ``current``
    pointer), never renamed.
    """

    local = False

    def __init__(self, url: str) -> None:
        import fsspec

        try:
            self.fs, root = fsspec.url_to_fs(url)
        except ImportError as exc:
            scheme = url.split("://", 1)[0]
            raise DependencyError(
                f"a {scheme}:// cache needs a package that is not installed ({exc}); "
                "for s3:// install 'featurecache[dask]' (s3fs)"
            ) from exc
        except ValueError as exc:
            raise CacheError(f"cannot open the cache URL {url!r}: {exc}") from exc
        self.scheme = url.split("://", 1)[0]
        super().__init__(root.rstrip("/") or "/")

    def url(self, path: str | None = None) -> str:
        path = self.root if path is None else path
        return (
            f"{self.scheme}://{path.lstrip('/')}"
            if self.scheme != "memory"
            else (f"memory://{path}")
        )

    def is_file(self, path: str) -> bool:
        self.fs.invalidate_cache(path)
        return self.fs.isfile(path)

    def read_bytes(self, path: str) -> bytes | None:
        try:
            return self.fs.cat_file(path)
        except (FileNotFoundError, OSError):
            return None

    def _ls(self, path: str) -> list[dict[str, Any]]:
        self.fs.invalidate_cache(path)
        try:
            return self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []

    def subdirs(self, path: str) -> list[str]:
        return sorted(
            e["name"].rstrip("/").rsplit("/", 1)[-1]
            for e in self._ls(path)
            if e["type"] == "directory"
        )

    def entries(self, path: str) -> list[str]:
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in self._ls(path))

    def remove(self, path: str) -> None:
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    def size(self, path: str) -> int:
        self.fs.invalidate_cache(path)
        try:
            return int(self.fs.du(path, total=True))
        except FileNotFoundError:
            return 0

    def pointer(self, group: str) -> str | None:
        raw = self.read_bytes(f"{group}/{CURRENT}")
        return raw.decode().strip() if raw else None

    def set_pointer(self, group: str, name: str) -> None:
        self.fs.pipe_file(f"{group}/{CURRENT}", name.encode())

    def writing_name(self, name: str) -> str:
        return name  # invisible until `current` names it; objects cannot be renamed

    def publish(self, group: str, writing: str, name: str) -> None:
        if writing != name:
            raise CacheError(f"internal error: cannot rename {writing} in an object store")

    def _local_dir(self, kind: str) -> Path:
        digest = hashlib.blake2b(self.url().encode(), digest_size=8).hexdigest()
        return user_cache_dir() / kind / digest

    def workspace(self) -> Location:
        parent, _, name = self.root.rstrip("/").rpartition("/")
        if not name or not (parent or self.root.startswith("/")):  # s3://bucket alone
            raise CacheError(
                f"the cache {self.url()!r} is at the root of its bucket; put it under a "
                "prefix (s3://bucket/features) so its workspace can sit beside it"
            )
        return UrlLocation(self.url(f"{parent}/.{name}{WORKSPACE_SUFFIX}"))

    def lock_file(self, dataset: str) -> Path:
        return self._local_dir("locks") / f"{dataset}.lock"

    def engine_dir(self) -> Path:
        return self._local_dir("engines")
