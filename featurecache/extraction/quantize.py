"""int8 backbones: the fp32 ONNX export quantised statically, calibrated on the data set.

ONNX Runtime's static quantisation (``onnxruntime.quantization.quantize_static``, QDQ
format, int8 weights per output channel, uint8 activations, MinMax calibration) after
its shape-inference pre-processing (``quant_pre_process``), as ONNX Runtime's
"Quantize ONNX models" guide recommends for CNNs on x86 CPUs with VNNI. The result is a
QDQ ONNX model that both ONNX Runtime and OpenVINO run in int8.

Calibration reads a stratified sample of the data set's own training images
(:func:`featurecache.extraction.guard.stratified_sample`), through the backbone's
decoding and ``preprocess_input``. The calibrated model and the sample's content keys
are kept in the engine folder per (model, data set), so a refresh of the same data set
runs the same int8 model: new rows are never mixed with rows of another calibration.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from featurecache.errors import DependencyError

log = logging.getLogger(__name__)

#: Training images the int8 model is calibrated on (stratified by class).
CALIBRATION_IMAGES = 128
#: Images per calibration batch.
CALIBRATION_BATCH = 16

#: ``() -> (content keys, preprocessed float32 images (n, size, size, 3))`` of the sample.
Calibration = Callable[[], tuple[list[str], np.ndarray]]


def calibrated_path(fp32: Path, dataset: str) -> Path:
    """The int8 model of the export ``fp32`` calibrated for ``dataset``."""
    tag = hashlib.blake2b(dataset.encode(), digest_size=5).hexdigest()
    return fp32.with_name(f"{fp32.stem}-int8-{tag}.onnx")


def int8_model(fp32: Path, dataset: str, calibration: Calibration | None) -> tuple[Path, list[str]]:
    """The int8 model of ``fp32`` for ``dataset`` and its calibration keys: the one made
    before, else quantised now from ``calibration``'s images (atomically).

    Raises
    ------
    DependencyError
        If ONNX Runtime's quantisation tools (``onnx``) are not installed.
    ValueError
        If the model must be made and ``calibration`` is None or yields no image.
    """
    path = calibrated_path(fp32, dataset)
    keys_file = path.with_suffix(".json")
    if path.is_file() and keys_file.is_file():
        return path, json.loads(keys_file.read_text())["calibration_keys"]
    if calibration is None:
        raise ValueError(f"no int8 model calibrated for {dataset} yet ({path})")
    keys, images = calibration()
    if not len(images):
        raise ValueError(f"{dataset}: no training image could be read for int8 calibration")
    start = time.perf_counter()
    _quantize(fp32, path, images)
    tmp = keys_file.with_name(f".{keys_file.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps({"dataset": dataset, "calibration_keys": keys}))
    os.replace(tmp, keys_file)
    log.info(
        "int8: %s calibrated on %d training images of %s in %.1f s",
        path.name,
        len(keys),
        dataset,
        time.perf_counter() - start,
    )
    return path, keys


def _quantize(fp32: Path, out: Path, images: np.ndarray) -> None:
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise DependencyError(
            f"precision 'int8' needs ONNX Runtime's quantisation tools ({exc}): "
            "pip install 'featurecache[onnx]'"
        ) from exc
    import onnxruntime as ort

    name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self, batches: Sequence[np.ndarray]) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {name: batch}

    batches = [
        np.ascontiguousarray(images[i : i + CALIBRATION_BATCH], np.float32)
        for i in range(0, len(images), CALIBRATION_BATCH)
    ]
    with tempfile.TemporaryDirectory(dir=out.parent) as work:
        prepared, quantised = Path(work, "prepared.onnx"), Path(work, "int8.onnx")
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(
            str(prepared),
            str(quantised),
            Reader(batches),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        os.replace(quantised, out)
