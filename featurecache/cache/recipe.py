"""The extraction recipe: everything that changes the numbers, hashed.

Two hashes identify cached features (the pattern of huggingface/datasets'
``fingerprint.py``: hash everything that changes the result, commit it last):

* the **request hash** covers what the user asked for and can be computed without
  importing Keras: backbone and its arguments, weights spec, input size, pooling,
  preprocessing, resize method, featurecache's recipe version, the Keras version, and
  the Keras backend (``tensorflow``, ``jax`` or ``torch``) with its version;
* the **recipe hash** adds the SHA-256 of the weights file Keras actually loaded and
  the engine that ran the backbone (``auto`` resolved).

The group name holds the recipe hash, so any change to backbone, weights, size,
pooling or backend lands in another group: features made differently are never mixed.
The backend enters the way the engines do: the engine ``keras`` (the Keras model
itself) is recorded as the backend that ran it, so features from TensorFlow, JAX and
PyTorch sit in three groups, and a cache made under one backend is never reused under
another. Under TensorFlow the request is spelled as before backends were configurable
(engine ``tensorflow``, versions ``keras`` and ``tensorflow``), so those caches keep
their groups.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featurecache.cache.layout import Cache
from featurecache.config import RANDOM_WEIGHTS_SEED, BackboneConfig, Pipeline
from featurecache.config.hub import is_hub, preset_files
from featurecache.deps import BACKENDS, backend, backend_version, package_version
from featurecache.errors import CacheError, EngineError
from featurecache.hashing import sha256_file, sha256_files
from featurecache.images import RESIZE_METHOD

log = logging.getLogger(__name__)

#: Bump when featurecache changes how it computes features for the same inputs.
RECIPE_VERSION = 1


def versions() -> dict[str, str | None]:
    """Versions of the libraries whose changes may change features or the cache, and the
    Keras backend (``"backend"``) with its version under its own name."""
    name = backend()
    return {
        "featurecache": package_version("featurecache"),
        "keras": package_version("keras"),
        "backend": name,
        name: backend_version(name),
        "numpy": package_version("numpy"),
        "pillow": package_version("pillow"),
        "zarr": package_version("zarr"),
    }


def _hash(obj: Any) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True).encode(), digest_size=16).hexdigest()


def recorded_engine(engine: str, on: str | None = None) -> str:
    """How the recipe records ``engine`` (``auto``, ``keras``, ``onnxruntime`` or
    ``openvino``: the
    configuration's words, :data:`featurecache.config.constraints.ENGINES`) on Keras
    backend ``on`` (default: the current one, :func:`featurecache.deps.backend`).

    ``keras`` is recorded as the backend that runs the model (``tensorflow``, ``jax`` or
    ``torch``: features from different backends are different recipes); ``auto`` stays
    ``auto`` under TensorFlow (resolved when run) and is the backend's name elsewhere;
    ``onnxruntime`` and ``openvino`` stay as they are.

    Raises
    ------
    EngineError
        For ``onnxruntime`` or ``openvino`` off TensorFlow (their model is the ONNX
        export, which goes through TensorFlow).
    """
    name = on or backend()
    if engine in ("onnxruntime", "openvino") and name != "tensorflow":
        raise EngineError(
            f"engine {engine!r} runs on the tensorflow backend only (the ONNX export goes "
            f"through TensorFlow), and the Keras backend is {name}: use engine 'keras' (the "
            "Keras model on the current backend), or set KERAS_BACKEND=tensorflow"
        )
    if engine == "keras" or (engine == "auto" and name != "tensorflow"):
        return name
    return engine


def requested_engine(recorded: str) -> str:
    """The configuration's word for an engine as recorded: ``keras`` for a backend's name
    (the inverse of :func:`recorded_engine` for a resolved engine)."""
    return "keras" if recorded in BACKENDS else recorded


def engine_of(attrs: dict[str, Any]) -> str:
    """The engine recorded in a generation's attributes: ``tensorflow`` for generations
    written before engines were recorded (TensorFlow ran them all)."""
    return str(attrs.get("engine", "tensorflow"))


def request(backbone: BackboneConfig, on: str | None = None) -> dict[str, Any]:
    """What the user asked for, as recorded in the cache (JSON-serialisable), on Keras
    backend ``on`` (default: the current one) at its installed version.

    Raises
    ------
    EngineError
        From :func:`recorded_engine`.
    """
    name = on or backend()
    described = backbone.describe()
    described["engine"] = recorded_engine(backbone.engine, name)
    return {
        "recipe_version": RECIPE_VERSION,
        "backbone": described,
        "resize": RESIZE_METHOD,
        "versions": {
            "keras": package_version("keras"),
            name: backend_version(name),
            # a hub: preset name maps to pinned files per keras-hub release
            **({"keras_hub": package_version("keras-hub")} if is_hub(backbone.name) else {}),
        },
    }


def request_hash(backbone: BackboneConfig, on: str | None = None) -> str:
    return _hash(request(backbone, on))


#: What engine ``auto`` accepts an existing group of: any, so that caches made with the
#: default of earlier releases (``keras``) or with a named engine are still found.
AUTO_ACCEPTS = ("auto", "keras", "onnxruntime", "openvino")


def accepted(backbone: BackboneConfig) -> list[BackboneConfig]:
    """``backbone``, and for engine ``auto`` the same backbone on each engine of
    :data:`AUTO_ACCEPTS` (``auto`` is resolved once per group, and keeps what it finds)."""
    if backbone.engine != "auto":
        return [backbone]
    return [backbone.replace(engine=engine) for engine in AUTO_ACCEPTS]


def wanted_hashes(backbone: BackboneConfig, on: str | None = None) -> set[str]:
    """Request hashes of the groups ``backbone`` accepts on Keras backend ``on``."""
    hashes = set()
    for candidate in accepted(backbone):
        try:
            hashes.add(request_hash(candidate, on))
        except EngineError:
            continue
    return hashes


def request_hashes(backbone: BackboneConfig) -> set[str]:
    """:func:`wanted_hashes` of ``backbone`` on every supported backend that can run it
    (``onnxruntime`` only on TensorFlow): the groups the backbone may have made."""
    return set().union(*(wanted_hashes(backbone, name) for name in BACKENDS))


def recipe_hash(backbone: BackboneConfig, weights_sha256: str | None, engine: str) -> str:
    """Hash of the request, the weights' SHA-256 and the engine that actually ran."""
    weights = weights_sha256 or f"random-seed-{RANDOM_WEIGHTS_SEED}"
    return _hash({"request": request(backbone), "weights_sha256": weights, "engine": engine})


def model_id(backbone: BackboneConfig, weights_sha256: str | None) -> str:
    """Identity of the backbone model itself (not the engine, precision, storage type or
    decoder): names its ONNX export."""
    engine_side = ("engine", "dtype", "precision", "decoder")
    described = {k: v for k, v in backbone.describe().items() if k not in engine_side}
    return _hash(
        {
            "backbone": described,
            "weights_sha256": weights_sha256,
            "versions": request(backbone)["versions"],
        }
    )


def group_name(backbone: BackboneConfig, recipe: str) -> str:
    """``<backbone>-<size>px-<pooling>[-f16]-<first 10 hex digits of the recipe hash>``;
    a keras-hub backbone is ``hub-<preset name or folder name>``."""
    f16 = "-f16" if backbone.dtype == "float16" else ""
    name = backbone.short_name
    return f"{name}-{backbone.input_size}px-{backbone.pooling}{f16}-{recipe[:10]}"


@dataclass(frozen=True)
class CachedGroup:
    dataset: str
    group: str
    attrs: dict[str, Any]


def find_group(cache: Cache, dataset: str, backbone: BackboneConfig) -> CachedGroup | None:
    """The newest committed group for ``dataset`` made by ``backbone`` as configured.

    A group qualifies when its request hash matches and the weights it recorded are
    still the weights Keras would load (the recorded file exists and its SHA-256 is
    unchanged). No TensorFlow import, no model build.
    """
    return _find(cache, backbone, lambda ds: ds == dataset)


def require_group(cache: Cache, dataset: str, backbone: BackboneConfig) -> CachedGroup:
    """:func:`find_group`, for the stages that read features (train-head, audit).

    Raises
    ------
    CacheError
        If there is none: names the cache, the data set, the backbone's settings and the
        command that makes the features.
    """
    found = find_group(cache, dataset, backbone)
    if found is None:
        raise CacheError(
            f"the cache {str(cache.root)!r} has no features for data set {dataset!r} with "
            f"backbone {backbone.name} ({backbone.input_size} px, {backbone.pooling} pooling, "
            f"weights {backbone.weights}); run `featurecache extract` with the same settings "
            "first"
        )
    return found


def find_any_group(cache: Cache, backbone: BackboneConfig) -> CachedGroup | None:
    """Like :func:`find_group`, over every data set: tells the recipe hash (and so
    the weights identity) of ``backbone`` without building it."""
    return _find(cache, backbone, lambda ds: True)


def _find(cache: Cache, backbone: BackboneConfig, accept) -> CachedGroup | None:
    wanted = wanted_hashes(backbone)
    matches = [
        CachedGroup(ds, group, attrs)
        for ds, group, attrs in cache.groups()
        if accept(ds) and attrs.get("request_hash") in wanted
    ]
    matches.sort(key=lambda g: g.attrs.get("created", ""), reverse=True)
    checked: dict[tuple[str, str], bool] = {}
    for match in matches:
        weights = match.attrs.get("weights", {})
        file, sha = weights.get("file"), weights.get("sha256")
        if sha is None:
            return match
        if (file, sha) not in checked:
            checked[(file, sha)] = weights_sha256(file, backbone) == sha
        if checked[(file, sha)]:
            return match
        log.info(
            "group %s/%s: weights file %s changed or is gone", match.dataset, match.group, file
        )
    return None


def weights_sha256(file: str | None, backbone: BackboneConfig) -> str | None:
    """SHA-256 of the weights recorded at ``file`` now: a weights file, or a keras-hub
    preset folder (:func:`featurecache.config.hub.preset_files`); None if gone."""
    if file and Path(file).is_file():
        return sha256_file(file)
    if file and Path(file, "config.json").is_file():
        return sha256_files(file, preset_files(file, with_weights=backbone.weights != "none"))
    return None


def declared_groups(
    pipelines: Sequence[Pipeline], hashes: Callable[[BackboneConfig], set[str]]
) -> set[tuple[str, str]]:
    """``(data set, request hash)`` of every group ``pipelines`` declare, each backbone's
    hashes given by ``hashes`` (:func:`wanted_hashes` on this backend, or
    :func:`request_hashes` on every backend)."""
    return {
        (d.name, h) for p in pipelines for d in p.datasets for b in p.backbones for h in hashes(b)
    }
