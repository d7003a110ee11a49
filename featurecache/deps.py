"""Heavy optional dependencies, imported on first use with a one-line install hint,
and the Keras backend they run on.

TensorFlow and Keras take seconds to import, so nothing imports them at module level
(ruff's TID253 bans it): ``featurecache --help`` and reading the cache stay instant.

featurecache runs on any of Keras 3's backends in :data:`BACKENDS`, chosen the Keras
way (``KERAS_BACKEND``, or ``"backend"`` in ``keras.json``). This module is the one
place that knows how they differ: what Keras has no single API for across backends
(the package that versions a backend, whether a GPU is there) is answered here, and
the stages ask it.
"""

from __future__ import annotations

import json
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from featurecache.errors import DependencyError
from featurecache.quiet import quiet_import

#: Keras backends featurecache supports -> the distributions that provide each one (the
#: first installed one versions it) and the featurecache extra that installs it.
BACKENDS: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorflow": (("tensorflow", "tensorflow-cpu", "tensorflow-macos"), "cpu"),
    "jax": (("jax",), "jax"),
    "torch": (("torch",), "torch"),
}


def package_version(*names: str) -> str | None:
    """Installed version of the first of ``names`` found (no import needed)."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def backend() -> str:
    """The Keras backend featurecache runs on: ``"tensorflow"``, ``"jax"`` or ``"torch"``.

    Once Keras is imported, ``keras.config.backend()``. Before that, what Keras will pick
    when imported, read the way ``keras/src/backend/config.py`` reads it: the
    environment variable ``KERAS_BACKEND``, else ``"backend"`` in ``keras.json`` under
    ``KERAS_HOME`` (default ``~/.keras``), else ``"tensorflow"``. So the cache's recipe
    can name the backend without importing it.
    """
    keras = sys.modules.get("keras")
    config = getattr(keras, "config", None)
    if config is not None and hasattr(config, "backend"):
        return config.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    if "KERAS_HOME" in os.environ:
        home = os.environ["KERAS_HOME"]
    else:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    try:
        config_file = json.loads(Path(os.path.expanduser(home), "keras.json").read_text())
        return config_file.get("backend") or "tensorflow"
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def backend_version(name: str | None = None) -> str | None:
    """Installed version of the package behind backend ``name`` (default: the current one)."""
    name = name or backend()
    return package_version(*BACKENDS[name][0]) if name in BACKENDS else None


def import_keras() -> Any:
    """Import Keras on the configured backend (:func:`backend`), or explain how to fix it.

    Raises
    ------
    DependencyError
        If the backend is not one featurecache supports, or Keras or the backend's
        package is not installed.
    """
    name = backend()
    if name not in BACKENDS:
        raise DependencyError(
            f"Keras backend {name!r} is not supported by featurecache; set KERAS_BACKEND "
            f"to one of {', '.join(BACKENDS)}"
        )
    try:
        with quiet_import():  # TensorFlow's import-time notices (featurecache.quiet)
            import keras
    except ImportError as exc:  # pragma: no cover - depends on the environment
        extra = BACKENDS[name][1]
        raise DependencyError(
            f"Keras with the {name} backend is not installed ({exc}): pip install "
            f"'featurecache[{extra}]'"
            + (" (or 'featurecache[gpu]' for an NVIDIA GPU)" if name == "tensorflow" else "")
        ) from exc
    return keras


def gpu_available() -> bool:
    """True when the Keras backend will run on a GPU.

    ``keras.distribution.list_devices()`` lists the GPUs when there are any (TensorFlow,
    JAX); the PyTorch backend has no ``keras.distribution``, and Keras itself places
    its tensors on CUDA when ``torch.cuda.is_available()`` (``keras/src/backend/torch/
    core.py``), so that is asked instead.
    """
    keras = import_keras()
    if keras.config.backend() == "torch":
        import torch

        return bool(torch.cuda.is_available())
    return any(device.startswith("gpu") for device in keras.distribution.list_devices())
