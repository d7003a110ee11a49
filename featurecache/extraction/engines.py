"""Inference engines for the frozen backbone: Keras on its backend, ONNX Runtime, OpenVINO.

The engines are named as the configuration names them: ``auto``, ``keras``,
``onnxruntime`` and ``openvino`` (:data:`featurecache.config.constraints.ENGINES`; older
spellings are mapped there). ``keras`` runs the Keras model itself on the current Keras
backend (TensorFlow, JAX or PyTorch), and is recorded under the backend's name
(:func:`featurecache.cache.recipe.recorded_engine`). ``onnxruntime`` and ``openvino`` run
the ONNX export of the very same Keras model (:mod:`featurecache.extraction.onnx`; on the
TensorFlow backend only); on a CPU ONNX Runtime is often several times faster
(MobileNetV2: 2-4x on the team's 2-core machine, ``benchmarks/engines.py``), and both
agree with TensorFlow's features to about 1e-5 at fp32. ``auto``, the default
(:func:`featurecache.config.backbone.default_engine`), times a few batches on each
available engine at fp32 and keeps the fastest, and says which (on another backend, or
without ONNX Runtime, it is ``keras``).

A backbone's ``precision`` picks the arithmetic: ``bf16`` on OpenVINO
(:mod:`~featurecache.extraction.openvino`, its precision hint always set and recorded),
``int8`` on a QDQ model calibrated on the data set
(:mod:`~featurecache.extraction.quantize`) run by ONNX Runtime or OpenVINO. A lower
precision is checked against fp32 before it extracts (:mod:`~featurecache.extraction.guard`).

The engine and precision are part of the extraction recipe: features from different
engines go to different cache groups. ``featurecache[cpu]`` installs ONNX Runtime,
``featurecache[openvino]`` OpenVINO.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featurecache.backbones import BuiltBackbone
from featurecache.cache.recipe import recorded_engine
from featurecache.extraction.onnx import (
    Runner,
    exported,
    model_stem,
    onnx_available,
    onnx_runner,
    ort_runner,
)
from featurecache.extraction.openvino import openvino_available, openvino_runner
from featurecache.extraction.quantize import Calibration, int8_model

log = logging.getLogger(__name__)

#: How much faster than ONNX Runtime another engine must be on ``auto``'s trial batches
#: to be chosen over it. The trials are a few batches of the backbone alone; on the team's
#: 2-core machine OpenVINO fp32 ran MobileNetV2 at 0.92x ONNX Runtime's rate alone and
#: 0.90x end to end (``benchmarks/precision.py``), yet won a two-batch race by noise.
AUTO_MARGIN = 1.25

__all__ = ["Extractor", "Runner", "keras_runner", "open_extractor", "select"]


@dataclass(frozen=True)
class Extractor:
    """A built backbone and the engine that runs it (``auto`` already resolved).

    ``settings``: what the engine was set to, recorded with the generation (OpenVINO's
    precision hint, an int8 model's calibration keys, the guard's figures).
    """

    built: BuiltBackbone
    engine: str
    runner: Runner
    settings: dict[str, Any] = field(default_factory=dict)

    def preprocess(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 RGB ``(size, size, 3)`` -> the backbone's input for the image, float32
        ``(size, size, 3)`` (``preprocess_input`` works pixel by pixel, so one image at a
        time gives the same numbers as a batch). Runs on the decoding threads."""
        return np.asarray(self.built.preprocess(pixels[None].astype(np.float32)), np.float32)[0]

    def outputs(
        self, pixels: np.ndarray, inputs: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """uint8 RGB ``(batch, size, size, 3)`` -> every stored array of the batch, float32,
        by name (``BackboneConfig.stored``): ``features`` ``(batch, feature_dim)``, the
        pooled taps, the activation map, and each again for the flipped view
        (``<name>.flip``), which is computed as a batch of its own, so the identity view's
        numbers do not depend on whether flips are stored. ``inputs``: the same images
        through :meth:`preprocess` already, float32 ``(batch, size, size, 3)``, used for
        the identity view."""
        config = self.built.config
        arrays: dict[str, np.ndarray] = {}
        for view in config.views:
            if view == "identity" and inputs is not None:
                batch = inputs
            else:
                images = pixels if view == "identity" else pixels[:, :, ::-1, :]
                batch = self.built.preprocess(np.asarray(images, dtype=np.float32))
            values = self.runner(batch)
            for name, value in zip(config.outputs, values, strict=True):
                key = name if view == "identity" else f"{name}.{view}"
                arrays[key] = np.asarray(value, dtype=np.float32)
        return arrays


def keras_runner(built: BuiltBackbone) -> Runner:
    """Preprocessed float32 ``(b, size, size, 3)`` -> the outputs of ``built.outputs_model``."""
    model = built.outputs_model

    def run(batch: np.ndarray) -> list[np.ndarray]:
        values = model.predict_on_batch(batch)
        return [np.asarray(v) for v in values] if isinstance(values, list | tuple) else [values]

    return run


def open_extractor(
    built: BuiltBackbone,
    requested: str,
    folder: Path,
    model_id: str,
    batch_size: int = 32,
    *,
    dataset: str = "",
    calibration: Calibration | None = None,
) -> Extractor:
    """The :class:`Extractor` of ``built`` on the engine ``requested`` (``auto`` resolved by
    :func:`select`) at ``built.config.precision``; ONNX exports are kept in ``folder``,
    named by ``model_id``. An int8 model is calibrated for ``dataset`` from
    ``calibration`` the first time (:func:`featurecache.extraction.quantize.int8_model`).
    The engine has run one batch already (Keras traces its function, ONNX Runtime
    allocates), so a run's images/s measure the steady state.

    Raises
    ------
    DependencyError, EngineError
        As :func:`select`.
    ValueError
        For int8 without a calibrated model and without ``calibration``.
    """
    settings: dict[str, Any] = {"precision": built.config.precision}
    runner: Runner
    if built.config.precision == "fp32":
        engine, runner = select(built, requested, folder, model_id, batch_size)
    else:
        engine = recorded_engine(requested)
        path = exported(built, folder, model_id)
        if built.config.precision == "int8":
            path, keys = int8_model(path, dataset, calibration)
            settings["calibration_keys"] = keys
        if engine == "openvino":
            runner = openvino_runner(path, built.config.precision)
        else:
            runner = ort_runner(path)
    settings.update(getattr(runner, "settings", {}))  # OpenVINO's hints, as compiled
    size = built.config.input_size
    runner(built.preprocess(np.zeros((batch_size, size, size, 3), np.float32)))
    return Extractor(built=built, engine=engine, runner=runner, settings=settings)


def select(
    built: BuiltBackbone,
    requested: str,
    folder: Path,
    model_id: str,
    batch_size: int = 32,
    trials: int = 2,
) -> tuple[str, Runner]:
    """Resolve ``requested`` (``auto``, ``keras``, ``onnxruntime`` or ``openvino``) at fp32
    to ``(engine as recorded, runner)``.

    ``keras`` runs the Keras model and is recorded under the backend's name. ``auto``
    runs ``trials`` batches of random pixels through each available engine (after one
    warm-up batch) and keeps the fastest (ONNX Runtime unless another is
    :data:`AUTO_MARGIN` times faster), and writes its choice beside the export
    (``<model>.auto``) so that the next run of the same model in this cache (a resumed
    one) makes the same choice without timing; without onnxruntime, on another backend
    than TensorFlow, or when the ONNX export or its session fails for any reason, it
    keeps Keras.

    Raises
    ------
    DependencyError, EngineError
        For ``onnxruntime`` or ``openvino`` when it is not installed, cannot run the
        backbone, or the Keras backend is not TensorFlow
        (:func:`featurecache.cache.recipe.recorded_engine`).
    """
    engine = recorded_engine(requested)
    if engine == "onnxruntime":
        return engine, onnx_runner(built, folder, model_id)
    if engine == "openvino":
        return engine, openvino_runner(exported(built, folder, model_id), "fp32")
    if engine != "auto":
        return engine, keras_runner(built)
    return _auto(built, folder, model_id, batch_size, trials)


def _auto(
    built: BuiltBackbone, folder: Path, model_id: str, batch_size: int, trials: int
) -> tuple[str, Runner]:
    """``auto`` for ``built``: the choice made before in ``folder``, else the fastest
    engine on ``trials`` batches (see :func:`select`). ``auto`` is resolved on the
    TensorFlow backend only, where the Keras model is recorded as ``tensorflow``."""
    if not onnx_available():
        log.info("engine auto: onnxruntime is not installed, using tensorflow")
        return "tensorflow", keras_runner(built)
    candidates = {"tensorflow": keras_runner(built)}
    choice = folder / f"{model_stem(built, model_id)}.auto"
    # chosen before for this model in this cache: a resumed run stays on it
    kept = choice.read_text().strip() if choice.is_file() else None
    if kept == "tensorflow":  # no ONNX session to build
        log.info("engine auto for %s: %s (chosen before)", built.config.name, kept)
        return kept, candidates[kept]
    try:
        path = exported(built, folder, model_id)
        if kept in ("onnxruntime", None):
            candidates["onnxruntime"] = ort_runner(path)
    except Exception as exc:  # noqa: BLE001  any export or session failure: Keras runs it
        log.warning("engine auto: %s; using tensorflow", exc)
        return "tensorflow", candidates["tensorflow"]
    if kept in ("openvino", None) and openvino_available():
        try:
            candidates["openvino"] = openvino_runner(path, "fp32")
        except Exception as exc:  # noqa: BLE001  OpenVINO cannot compile it: not a candidate
            log.warning("engine auto: OpenVINO cannot run %s: %s", built.config.name, exc)
    if kept in candidates:
        log.info("engine auto for %s: %s (chosen before)", built.config.name, kept)
        return kept, candidates[kept]
    best = _fastest(built, candidates, batch_size, trials)
    tmp = choice.with_name(f".{choice.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(best + "\n")
    os.replace(tmp, choice)
    return best, candidates[best]


def _fastest(
    built: BuiltBackbone, candidates: dict[str, Runner], batch_size: int, trials: int
) -> str:
    """The engine of ``candidates`` with the most images/s on random pixels; ONNX Runtime
    unless another is :data:`AUTO_MARGIN` times faster."""
    size = built.config.input_size
    batch = built.preprocess(
        np.random.default_rng(0).uniform(0, 255, (batch_size, size, size, 3)).astype(np.float32)
    )
    timings = {}
    for name, run in candidates.items():
        run(batch)
        start = time.perf_counter()
        for _ in range(trials):
            run(batch)
        timings[name] = trials * batch_size / (time.perf_counter() - start)
    best = max(timings, key=lambda name: timings[name])
    if "onnxruntime" in timings and timings[best] < AUTO_MARGIN * timings["onnxruntime"]:
        best = "onnxruntime"  # within the trials' noise: the engine known to pipeline well
    log.info(
        "engine auto for %s: %s (%s)",
        built.config.name,
        best,
        ", ".join(f"{k} {v:.0f} images/s" for k, v in timings.items()),
    )
    return best
