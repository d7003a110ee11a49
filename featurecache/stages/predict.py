"""Stage 3: label new images with a trained head, backbone and head rebuilt."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurecache.backbones import BackboneConfig, build_backbone, import_keras
from featurecache.datasets import image_files
from featurecache.errors import CacheError, ConfigError, ImageDecodeError
from featurecache.heads import load_head, predict_proba
from featurecache.images import decode_bytes
from featurecache.recipe import RANDOM_WEIGHTS_SEED

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """One image's top-1 label and its probability (``None`` and ``error`` if skipped)."""

    source: str
    label: str | None
    probability: float | None
    error: str | None = None


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) into image files, sorted per folder.

    Raises
    ------
    ConfigError
        If an input does not exist.
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(image_files(item))
        elif item.is_file():
            files.append(item)
        else:
            raise ConfigError(f"{str(item)!r} does not exist")
    return files


def _backbone(config: BackboneConfig, info: dict):
    """Rebuild the backbone a head was trained on; refuse other weights."""
    if config.weights == "none":
        import_keras().utils.set_random_seed(RANDOM_WEIGHTS_SEED)
    built = build_backbone(config)
    expected = info["weights"].get("sha256")
    if expected != built.weights_sha256:
        raise CacheError(
            f"the {config.name} weights now loaded ({built.weights_file}, sha256 "
            f"{built.weights_sha256}) are not those the head was trained with ({expected}); "
            "extract and train the head again"
        )
    return built


def predict(
    head_dir: str | Path, inputs: Sequence[str | Path], *, batch_size: int = 32
) -> list[Prediction]:
    """Predict the class of every image in ``inputs`` with the head in ``head_dir``.

    ``head_dir`` is a folder written by ``train-head`` (the backbone is rebuilt from
    the configuration recorded with the head) or by ``finetune`` (one whole model
    taking raw pixels). A rebuilt backbone's weights must be the ones the head was
    trained on (same SHA-256).

    Raises
    ------
    CacheError
        If the backbone's weights differ from those recorded with the head.
    ConfigError
        If ``head_dir`` is not a trained head or an input does not exist.
    """
    head, info = load_head(head_dir)
    files = expand_inputs(inputs)
    b = info["backbone"]
    config = BackboneConfig.create(
        b["name"],
        weights=b["weights"],
        input_size=b["input_size"],
        pooling=b["pooling"],
        args=b.get("args", {}),
    )
    finetuned = info["kind"] == "finetuned"  # a whole model: raw pixels in
    built = None if finetuned else _backbone(config, info)
    class_names = info["class_names"]
    results: list[Prediction] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        ok, pixels = [], []
        for path in chunk:
            try:
                pixels.append(decode_bytes(path.read_bytes(), config.input_size, source=str(path)))
                ok.append(path)
            except (ImageDecodeError, OSError) as exc:
                log.warning("skipped %s", exc)
                results.append(Prediction(str(path), None, None, str(exc)))
        if not ok:
            continue
        batch = np.stack(pixels).astype(np.float32)
        if built is not None:
            batch = np.asarray(built.model.predict_on_batch(built.preprocess(batch)))
        proba = predict_proba(head, batch, len(class_names))
        for path, row in zip(ok, proba, strict=True):
            best = int(row.argmax())
            results.append(Prediction(str(path), class_names[best], float(row[best])))
    order = {str(p): i for i, p in enumerate(files)}
    results.sort(key=lambda p: order[p.source])
    return results
