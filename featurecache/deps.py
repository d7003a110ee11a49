"""Heavy optional dependencies, imported on first use with a one-line install hint.

TensorFlow and Keras take seconds to import, so nothing imports them at module level
(ruff's TID253 bans it): ``featurecache --help`` and reading the cache stay instant.
"""

from __future__ import annotations

from typing import Any

from featurecache.errors import DependencyError


def import_keras() -> Any:
    """Import Keras (with the TensorFlow backend), or explain how to install it.

    Raises
    ------
    DependencyError
        If Keras (or its backend) is not installed.
    """
    try:
        import keras
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DependencyError(
            "TensorFlow / Keras is not installed: pip install 'featurecache[cpu]' "
            "(or 'featurecache[gpu]' for an NVIDIA GPU)"
        ) from exc
    return keras
