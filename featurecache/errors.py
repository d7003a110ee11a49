"""One exception hierarchy for featurecache, and the exit codes the CLI maps them to.

Every error a user can cause (a wrong path, a malformed pipeline file, an unknown
backbone) is a :class:`FeaturecacheError`; its message names the thing at fault and
the fix, and the CLI prints it on one line without a traceback. Subclasses also
derive from the matching built-in so that existing ``except`` clauses keep working
(the pattern of zarr-python's ``NodeNotFoundError(BaseZarrError, FileNotFoundError)``).
"""

from __future__ import annotations

#: Exit codes of the ``featurecache`` command, documented in the README.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # typer / click's own code for a bad option
EXIT_PARTIAL = 3  # completed, but some inputs were skipped (listed in the output)
EXIT_BUSY = 4  # another process holds the data set's lock and --no-wait was given


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


class DependencyError(FeaturecacheError, ImportError):
    """An optional dependency (Keras's backend, ONNX Runtime, Dask) is not installed or
    not usable as configured."""


class LockedError(FeaturecacheError, BlockingIOError):
    """Another process is writing the same data set of the cache."""

    exit_code = EXIT_BUSY


class EngineError(FeaturecacheError, RuntimeError):
    """An inference engine cannot run a backbone."""


class ClusterError(FeaturecacheError, RuntimeError):
    """The Dask cluster cannot be reached or used, or a shard failed on it."""
