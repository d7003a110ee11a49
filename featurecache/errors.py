"""One exception hierarchy for featurecache, and the exit codes the CLI maps them to.

Every error a user can cause (a wrong path, a malformed pipeline file, an unknown
backbone) is a :class:`FeaturecacheError`; its message names the thing at fault and
the fix, and the CLI prints it on one line without a traceback. Subclasses also
derive from the matching built-in so that existing ``except`` clauses keep working
(the pattern of zarr-python's ``NodeNotFoundError(BaseZarrError, FileNotFoundError)``).
"""

from __future__ import annotations

import errno

#: Exit codes of the ``featurecache`` command, documented in the README.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # typer / click's own code for a bad option
EXIT_PARTIAL = 3  # completed, but some inputs were skipped (listed in the output)
EXIT_BUSY = 4  # another process holds the data set's lock and --no-wait was given
EXIT_DAMAGED = 5  # the cache holds damaged data (`featurecache verify` found some)
EXIT_SIGINT = 130  # stopped by Ctrl-C (SIGINT) at a safe point; the shell's 128 + 2
EXIT_SIGTERM = 143  # stopped by SIGTERM (timeout, a scheduler) at a safe point; 128 + 15


class FeaturecacheError(Exception):
    """Base class of every error featurecache raises on purpose."""

    exit_code = EXIT_ERROR


class ConfigError(FeaturecacheError, ValueError):
    """A pipeline file or an option is malformed or inconsistent.

    ``key`` names the setting at fault (``"pooling"``) and ``where`` the table that
    holds it (``"backbones[0]"``), so that the pipeline loader can point at the file
    and line; both are empty when the error is not about one setting.
    """

    def __init__(self, message: str, *, key: str = "", where: str = "") -> None:
        super().__init__(message)
        self.key = key
        self.where = where

    def within(self, where: str, *, key: str = "") -> ConfigError:
        """The same error, qualified by the table (or key) that holds it.

        ``"pooling must be ..."`` becomes ``"backbones[0].pooling must be ..."``; any
        other message is prefixed with ``"backbones[0]: "``. ``key`` replaces the key
        when ``where`` is itself a key of a larger table (``split`` of a data set).
        """
        message = str(self)
        if self.key and message.startswith(self.key):
            qualified = f"{where}.{message}"
        else:
            qualified = f"{where}: {message}"
        return ConfigError(qualified, key=key or self.key, where=where)


class DatasetError(FeaturecacheError, ValueError):
    """A data set cannot be listed: missing path, wrong HDF5 key, no classes."""


class ImageDecodeError(FeaturecacheError, ValueError):
    """One image cannot be decoded; extraction skips it and records the reason."""


class UnknownBackboneError(ConfigError, KeyError):
    """A backbone name is not in the registry."""

    def __init__(self, message: str) -> None:
        super().__init__(message, key="name")

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class CacheError(FeaturecacheError, LookupError):
    """The cache is missing what was asked for, or is not a featurecache store."""


class DamagedError(CacheError):
    """Bytes in the cache are damaged: a chunk fails its checksum or decompression, or
    is missing. ``path`` is the generation, ``array`` the array's name and ``rows`` the
    ``(first, stop)`` row ranges affected; ``featurecache verify --repair`` recomputes them."""

    exit_code = EXIT_DAMAGED

    def __init__(
        self,
        message: str,
        *,
        path: str = "",
        array: str = "",
        rows: list[tuple[int, int]] | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.array = array
        self.rows = rows or []


class NoTrainedHeadError(CacheError):
    """Fine-tuning starts from a trained dense head and the run's folder holds none:
    ``featurecache train-head`` (or ``run``) with a ``kind = "dense"`` head writes it."""


class WeightsChangedError(CacheError):
    """The backbone weights loaded now are not those the cached features were extracted
    with (their SHA-256 differs): extract again before fine-tuning."""


class ParityError(CacheError):
    """The model rebuilt for fine-tuning does not reproduce what the cache holds: on a few
    training images its class probabilities differ from the cached path's by more than
    the tolerance. ``difference`` is the largest absolute difference seen, ``tolerance``
    the bound it broke (both probabilities, 0-1)."""

    def __init__(self, message: str, *, difference: float, tolerance: float) -> None:
        super().__init__(message)
        self.difference = difference
        self.tolerance = tolerance


class Stopped(KeyboardInterrupt):
    """A run stopped at a safe point on SIGTERM or SIGINT; what it finished is kept.

    A ``KeyboardInterrupt``, not a :class:`FeaturecacheError`, so that no ``except
    Exception`` swallows it; the CLI prints its one line and exits with ``exit_code``.
    ``exit_code`` is 128 + the signal's number, as a shell reports a killed process.
    """

    def __init__(self, message: str, *, signal_name: str) -> None:
        super().__init__(message)
        self.signal_name = signal_name
        self.exit_code = EXIT_SIGINT if signal_name == "SIGINT" else EXIT_SIGTERM


class DependencyError(FeaturecacheError, ImportError):
    """An optional dependency (Keras's backend, ONNX Runtime, Dask) is not installed or
    not usable as configured."""


class OutputError(FeaturecacheError):
    """Results cannot be written into the output folder (full disk, read-only, ...)."""


class UntrustedFileError(FeaturecacheError, PermissionError):
    """A head file would run code when loaded (a pickle, or a skops file holding types
    featurecache never writes); it was not loaded."""


class LockedError(FeaturecacheError, BlockingIOError):
    """Another process is writing the same data set of the cache."""

    exit_code = EXIT_BUSY


class EngineError(FeaturecacheError, RuntimeError):
    """An inference engine cannot run a backbone."""


class PrecisionError(EngineError):
    """A lower-precision backbone's features differ from fp32's beyond its guard."""


class ClusterError(FeaturecacheError, RuntimeError):
    """The Dask cluster cannot be reached or used, or a shard failed on it."""


#: errno -> (cause, fix) for OSErrors at the cache and output folders' boundary.
_OS_CAUSES = {
    errno.ENOSPC: ("no space left on the device", "free space or use a folder on a larger disk"),
    errno.EDQUOT: ("disk quota exceeded", "free space or ask for a larger quota"),
    errno.EFBIG: (
        "file too large for this process's file-size limit or the file system",
        "raise the limit (`ulimit -f unlimited`) or use another file system",
    ),
    errno.EROFS: ("read-only file system", "use a folder on a writable file system"),
    errno.EACCES: ("permission denied", "use a folder this user can write, or fix its permissions"),
    errno.EPERM: ("operation not permitted", "use a folder this user can write"),
    errno.ENOTDIR: (
        "a part of the path is a regular file, not a folder",
        "remove or rename that file, or choose another folder",
    ),
    errno.EISDIR: ("a folder is in the way of a file", "remove that folder"),
    errno.ENAMETOOLONG: ("file name too long", "use a shorter folder path"),
}


def describe_os_error(exc: OSError, doing: str, *, hint: str = "") -> str:
    """One line for an ``OSError`` met while ``doing`` (``"write the cache at 'c'"``):
    the path, the cause and the fix (``ENOSPC`` -> free space, ``EROFS`` -> a writable
    folder, ...), then ``hint``."""
    default = (exc.strerror or str(exc), "check the folder")
    cause, fix = _OS_CAUSES.get(exc.errno, default) if exc.errno is not None else default
    where = f" ({exc.filename})" if exc.filename else ""
    return f"cannot {doing}: {cause}{where}; {fix}" + (f" ({hint})" if hint else "")
