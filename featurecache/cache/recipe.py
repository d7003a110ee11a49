"""The extraction recipe: everything that changes the numbers, hashed.

Two hashes identify cached features (the pattern of huggingface/datasets'
``fingerprint.py``: hash everything that changes the result, commit it last):

* the **request hash** covers what the user asked for and can be computed without
  TensorFlow: backbone and its arguments, weights spec, input size, pooling,
  preprocessing, resize method, featurecache's recipe version and the Keras /
  TensorFlow versions;
* the **recipe hash** adds the SHA-256 of the weights file Keras actually loaded and
  the engine that ran the backbone (``auto`` resolved).

The group name holds the recipe hash, so any change to backbone, weights, size or
pooling lands in another group: features made differently are never mixed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from featurecache.cache.layout import Cache
from featurecache.config import RANDOM_WEIGHTS_SEED, BackboneConfig
from featurecache.config.backbone import sha256_file
from featurecache.images import RESIZE_METHOD

log = logging.getLogger(__name__)

#: Bump when featurecache changes how it computes features for the same inputs.
RECIPE_VERSION = 1


def package_version(*names: str) -> str | None:
    """Installed version of the first of ``names`` found (no import needed)."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def versions() -> dict[str, str | None]:
    """Versions of the libraries whose changes may change features or the cache."""
    return {
        "featurecache": package_version("featurecache"),
        "keras": package_version("keras"),
        "tensorflow": package_version("tensorflow", "tensorflow-cpu", "tensorflow-macos"),
        "numpy": package_version("numpy"),
        "pillow": package_version("pillow"),
        "zarr": package_version("zarr"),
    }


def _hash(obj: Any) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True).encode(), digest_size=16).hexdigest()


def request(backbone: BackboneConfig) -> dict[str, Any]:
    """What the user asked for, as recorded in the cache (JSON-serialisable)."""
    v = versions()
    return {
        "recipe_version": RECIPE_VERSION,
        "backbone": backbone.describe(),
        "resize": RESIZE_METHOD,
        "versions": {"keras": v["keras"], "tensorflow": v["tensorflow"]},
    }


def request_hash(backbone: BackboneConfig) -> str:
    return _hash(request(backbone))


def recipe_hash(backbone: BackboneConfig, weights_sha256: str | None, engine: str) -> str:
    """Hash of the request, the weights' SHA-256 and the engine that actually ran."""
    weights = weights_sha256 or f"random-seed-{RANDOM_WEIGHTS_SEED}"
    return _hash({"request": request(backbone), "weights_sha256": weights, "engine": engine})


def model_id(backbone: BackboneConfig, weights_sha256: str | None) -> str:
    """Identity of the backbone model itself (not the engine): names its ONNX export."""
    described = {k: v for k, v in backbone.describe().items() if k not in ("engine", "dtype")}
    return _hash(
        {
            "backbone": described,
            "weights_sha256": weights_sha256,
            "versions": request(backbone)["versions"],
        }
    )


def group_name(backbone: BackboneConfig, recipe: str) -> str:
    """``<backbone>-<size>px-<pooling>[-f16]-<first 10 hex digits of the recipe hash>``."""
    f16 = "-f16" if backbone.dtype == "float16" else ""
    return f"{backbone.name}-{backbone.input_size}px-{backbone.pooling}{f16}-{recipe[:10]}"


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


def find_any_group(cache: Cache, backbone: BackboneConfig) -> CachedGroup | None:
    """Like :func:`find_group`, over every data set: tells the recipe hash (and so
    the weights identity) of ``backbone`` without building it."""
    return _find(cache, backbone, lambda ds: True)


def _find(cache: Cache, backbone: BackboneConfig, accept) -> CachedGroup | None:
    wanted = request_hash(backbone)
    matches = [
        CachedGroup(ds, group, attrs)
        for ds, group, attrs in cache.groups()
        if accept(ds) and attrs.get("request_hash") == wanted
    ]
    matches.sort(key=lambda g: g.attrs.get("created", ""), reverse=True)
    checked: dict[tuple[str, str], bool] = {}
    for match in matches:
        weights = match.attrs.get("weights", {})
        file, sha = weights.get("file"), weights.get("sha256")
        if sha is None:
            return match
        if (file, sha) not in checked:
            checked[(file, sha)] = bool(file and Path(file).is_file() and sha256_file(file) == sha)
        if checked[(file, sha)]:
            return match
        log.info(
            "group %s/%s: weights file %s changed or is gone", match.dataset, match.group, file
        )
    return None
