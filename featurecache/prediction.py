"""Stage 3: label new images with a trained head (backbone rebuilt) or a fine-tuned model."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from featurecache.backbones import BuiltBackbone, build_backbone
from featurecache.config import BackboneConfig
from featurecache.datasets import image_files
from featurecache.errors import CacheError, ConfigError, ImageDecodeError
from featurecache.heads import predict_proba
from featurecache.heads.files import load_model
from featurecache.images import decode_bytes
from featurecache.runs import HeadRecord, output_errors

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


def _backbone(config: BackboneConfig, info: dict) -> BuiltBackbone:
    """Rebuild the backbone a head was trained on; refuse other weights."""
    built = build_backbone(config)
    expected = info["weights"].get("sha256")
    if expected != built.weights_sha256:
        raise CacheError(
            f"the {config.name} weights now loaded ({built.weights_file}, sha256 "
            f"{built.weights_sha256}) are not those the head was trained with ({expected}); "
            "extract and train the head again"
        )
    return built


def _views(info: dict) -> list[str]:
    return list(info.get("views", ["identity"]))


def head_inputs(built: BuiltBackbone, pixels: np.ndarray, info: dict, view: str) -> np.ndarray:
    """What a frozen head takes for RGB ``pixels`` ``(b, size, size, 3)`` 0-255: the
    pooled features of the ``view`` (``identity`` or ``flip``), followed by the pooled
    taps the head was trained on (``info["taps"]``), ``(b, feature_dim)`` float32."""
    images = pixels if view == "identity" else pixels[:, :, ::-1, :]
    # a copy: keras's preprocess_input changes a float32 array in place
    values = built.outputs_model.predict_on_batch(built.preprocess(np.array(images, np.float32)))
    values = values if isinstance(values, list | tuple) else [values]
    by_name = dict(zip(built.config.outputs, values, strict=True))
    names = ["features", *(f"pooled.{tap}" for tap in info.get("taps", []))]
    return np.concatenate([np.asarray(by_name[n]) for n in names], axis=1).astype(np.float32)


def predict(
    head_dir: str | Path,
    inputs: Sequence[str | Path],
    *,
    batch_size: int = 32,
    trust_pickle: bool = False,
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
    UntrustedFileError
        If the head file would run code when loaded: a pickle (``model.joblib``, from
        before skops) without ``trust_pickle``, or a skops file with foreign types.
    """
    record = HeadRecord.read(head_dir)
    head = load_model(record.model_path, trust_pickle=trust_pickle)
    files = expand_inputs(inputs)
    config = BackboneConfig.from_description(record.info["backbone"])
    # a fine-tuned model is whole: raw pixels in
    built = None if record.kind == "finetuned" else _backbone(config, record.info)
    class_names = record.info["class_names"]
    results: list[Prediction] = []
    for start in range(0, len(files), batch_size):
        decoded = _decode(files[start : start + batch_size], config.input_size, config.decoder)
        results.extend(decoded.skipped)
        if not decoded.paths:
            continue
        batch = np.stack(decoded.pixels).astype(np.float32)
        proba = _probabilities(head, built, batch, record.info, len(class_names))
        for path, row in zip(decoded.paths, proba, strict=True):
            best = int(row.argmax())
            results.append(Prediction(str(path), class_names[best], float(row[best])))
    order = {str(p): i for i, p in enumerate(files)}
    results.sort(key=lambda p: order[p.source])
    return results


class _Decoded(NamedTuple):
    """A chunk of files decoded: the paths read, their pixels, and a result per skipped file."""

    paths: list[Path]
    pixels: list[np.ndarray]
    skipped: list[Prediction]


def _decode(chunk: Sequence[Path], size: int, decoder: str) -> _Decoded:
    """Decode ``chunk`` to RGB ``(size, size, 3)`` pixels (JPEGs by ``decoder``, the
    backbone's); a file that cannot be read or decoded is logged and skipped with its error."""
    decoded = _Decoded([], [], [])
    for path in chunk:
        try:
            data = path.read_bytes()
            decoded.pixels.append(decode_bytes(data, size, source=str(path), decoder=decoder))
            decoded.paths.append(path)
        except (ImageDecodeError, OSError) as exc:
            log.warning("skipped %s", exc)
            decoded.skipped.append(Prediction(str(path), None, None, str(exc)))
    return decoded


def _probabilities(
    head: Any, built: BuiltBackbone | None, batch: np.ndarray, info: dict, n_classes: int
) -> np.ndarray:
    """``(b, n_classes)`` probabilities of ``batch``: a fine-tuned model's (``built`` is
    None) on the pixels, or a frozen head's averaged over the views it was trained on."""
    if built is None:
        return predict_proba(head, batch, n_classes)
    views = [head_inputs(built, batch, info, view) for view in _views(info)]
    return np.mean([predict_proba(head, x, n_classes) for x in views], axis=0)


def write_csv(predictions: Sequence[Prediction], path: str | Path) -> None:
    """Write ``path,label,probability,error`` rows, one per image (probability to 6 places)."""
    import csv

    with output_errors(Path(path).parent, "write predictions into"):
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label", "probability", "error"])
            for p in predictions:
                probability = "" if p.probability is None else f"{p.probability:.6f}"
                writer.writerow([p.source, p.label or "", probability, p.error or ""])
