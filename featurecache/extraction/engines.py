"""Inference engines for the frozen backbone: Keras on its backend, or ONNX Runtime.

The engines are named as the configuration names them: ``auto``, ``keras`` and
``onnxruntime`` (:data:`featurecache.config.constraints.ENGINES`; older spellings are
mapped there). ``keras`` runs the Keras model itself on the current Keras backend
(TensorFlow, JAX or PyTorch), and is recorded under the backend's name
(:func:`featurecache.cache.recipe.recorded_engine`). ``onnxruntime``
runs the ONNX export of the very same Keras model (Keras's own
``model.export(format="onnx")``, through tf2onnx, so on the TensorFlow backend only),
cached on disk by model identity so it is exported once (EfficientNet's Normalization
statistics folded into constants first: :func:`fold_normalization`); on a CPU it is often
several times faster (MobileNetV2: 2-4x on the team's 2-core machine,
``benchmarks/engines.py``), and its features agree with TensorFlow's to about 1e-5.
``auto``, the default (:func:`featurecache.config.backbone.default_engine`), times a few
batches on each and keeps the faster, and says which (on another backend, or without
ONNX Runtime, it is ``keras``).

The engine is part of the extraction recipe: features from different engines go to
different cache groups. ``featurecache[cpu]`` and ``featurecache[onnx]`` install ONNX
Runtime.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurecache.backbones import BuiltBackbone
from featurecache.cache.recipe import recorded_engine
from featurecache.errors import DependencyError, EngineError
from featurecache.quiet import quiet_import

log = logging.getLogger(__name__)

#: Preprocessed float32 images ``(batch, size, size, 3)`` -> one array per output of the
#: backbone (``BackboneConfig.outputs``: features ``(batch, feature_dim)`` first).
Runner = Callable[[np.ndarray], list[np.ndarray]]


@dataclass(frozen=True)
class Extractor:
    """A built backbone and the engine that runs it (``auto`` already resolved)."""

    built: BuiltBackbone
    engine: str
    runner: Runner

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


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401

        with quiet_import():  # tf2onnx imports TensorFlow
            import tf2onnx  # noqa: F401
    except ImportError:
        return False
    return True


def keras_runner(built: BuiltBackbone) -> Runner:
    """Preprocessed float32 ``(b, size, size, 3)`` -> the outputs of ``built.outputs_model``."""
    model = built.outputs_model

    def run(batch: np.ndarray) -> list[np.ndarray]:
        values = model.predict_on_batch(batch)
        return [np.asarray(v) for v in values] if isinstance(values, list | tuple) else [values]

    return run


def _export(built: BuiltBackbone, path: Path) -> None:
    """Export ``built``'s outputs model to ONNX at ``path`` (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = built.config.input_size
    model = built.outputs_model
    model.predict_on_batch(np.zeros((1, size, size, 3), np.float32))  # must be called
    fold_normalization(model)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    start = time.perf_counter()
    with warnings.catch_warnings():
        # Keras's tf2onnx patch probes np.object, which numpy 2 answers with a
        # FutureWarning: noise in every first export, nothing the user can act on
        warnings.filterwarnings("ignore", message=".*np.object", category=FutureWarning)
        model.export(str(tmp), format="onnx", verbose=False)
    os.replace(tmp, path)
    log.info(
        "exported %s to ONNX in %.1f s: %s",
        built.config.name,
        time.perf_counter() - start,
        path,
    )


def onnx_runner(built: BuiltBackbone, folder: Path, model_id: str) -> Runner:
    """The ONNX Runtime session of ``built``'s export, made once into ``folder``.

    Raises
    ------
    DependencyError
        If onnxruntime or tf2onnx is not installed.
    EngineError
        If the export cannot run on images alone (EfficientNet's, with tf2onnx 1.17).
    """
    if not onnx_available():
        raise DependencyError(
            "engine 'onnxruntime' needs onnxruntime and tf2onnx: pip install 'featurecache[onnx]'"
        )
    import onnxruntime as ort

    path = folder / f"{built.config.name}-{model_id[:16]}.onnx"
    fresh = not path.is_file()
    if fresh:
        _export(built, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    # Idle intra-op threads sleep instead of spinning, so decoding threads get the cores
    # between batches (ONNX Runtime's threading docs: session.intra_op.allow_spinning).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    if len(inputs) != 1 and not fresh:
        # an export made before featurecache folded these constants: make it again
        log.info(
            "%s: exported by an older featurecache with %d inputs; exporting again",
            path,
            len(inputs),
        )
        path.unlink()
        return onnx_runner(built, folder, model_id)
    if len(inputs) != 1:
        # tf2onnx turns tensors captured by the model (not variables, not constants)
        # into graph inputs; fold_normalization handles the case known so far.
        raise EngineError(
            f"engine 'onnxruntime' cannot run {built.config.name}: its ONNX export expects "
            f"{len(inputs)} inputs ({', '.join(i.name for i in inputs)}), not just the "
            "images (a tf2onnx limitation); use engine 'keras' for this backbone"
        )
    name = inputs[0].name
    n_outputs = len(built.config.outputs)
    if len(session.get_outputs()) != n_outputs:
        raise EngineError(
            f"the ONNX export of {built.config.name} has {len(session.get_outputs())} "
            f"outputs, not {n_outputs}; delete {path} and run again"
        )
    return lambda batch: session.run(None, {name: np.ascontiguousarray(batch, np.float32)})


def _layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)


def fold_normalization(model) -> None:
    """Make every ``keras.layers.Normalization`` in ``model`` hold its mean and variance
    as numpy constants.

    The layer keeps them as eager tensors computed from its weights (``finalize_state``
    / ``build`` in ``keras/src/layers/preprocessing/normalization.py``). tf2onnx exports
    such captured tensors as extra graph inputs (EfficientNet's ``normalization/Sub/y``
    and ``Sqrt/x``), so the ONNX model cannot run on images alone; numpy arrays are
    traced as constants instead. The values are the same, so the Keras model's outputs
    do not change.
    """
    import keras

    for layer in _layers(model):
        if isinstance(layer, keras.layers.Normalization) and layer.mean is not None:
            layer.mean = np.asarray(layer.mean)
            layer.variance = np.asarray(layer.variance)


def open_extractor(
    built: BuiltBackbone, requested: str, folder: Path, model_id: str, batch_size: int = 32
) -> Extractor:
    """The :class:`Extractor` of ``built`` on the engine ``requested`` (``auto`` resolved by
    :func:`select`); ONNX exports are kept in ``folder``, named by ``model_id``. The engine
    has run one batch already (Keras traces its function, ONNX Runtime allocates), so a
    run's images/s measure the steady state."""
    engine, runner = select(built, requested, folder, model_id, batch_size)
    size = built.config.input_size
    runner(built.preprocess(np.zeros((batch_size, size, size, 3), np.float32)))
    return Extractor(built=built, engine=engine, runner=runner)


def select(
    built: BuiltBackbone,
    requested: str,
    folder: Path,
    model_id: str,
    batch_size: int = 32,
    trials: int = 2,
) -> tuple[str, Runner]:
    """Resolve ``requested`` (``auto``, ``keras`` or ``onnxruntime``) to ``(engine as
    recorded, runner)``.

    ``keras`` runs the Keras model and is recorded under the backend's name. ``auto``
    runs ``trials`` batches of random pixels through each available engine (after one
    warm-up batch) and keeps the faster, and writes its
    choice beside the export (``<model>.auto``) so that the next run of the same model
    in this cache (a resumed one) makes the same choice without timing; without
    onnxruntime, on another backend than TensorFlow, or when the ONNX export or its
    session fails for any reason, it keeps Keras.

    Raises
    ------
    DependencyError, EngineError
        For ``onnxruntime`` when it is not installed, cannot run the backbone, or the
        Keras backend is not TensorFlow (:func:`featurecache.cache.recipe.recorded_engine`).
    """
    engine = recorded_engine(requested)
    if engine == "onnxruntime":
        return engine, onnx_runner(built, folder, model_id)
    if engine != "auto":
        return engine, keras_runner(built)
    return _auto(built, folder, model_id, batch_size, trials)


def _auto(
    built: BuiltBackbone, folder: Path, model_id: str, batch_size: int, trials: int
) -> tuple[str, Runner]:
    """``auto`` for ``built``: the choice made before in ``folder``, else the faster
    engine on ``trials`` batches (see :func:`select`). ``auto`` is resolved on the
    TensorFlow backend only, where the Keras model is recorded as ``tensorflow``."""
    if not onnx_available():
        log.info("engine auto: onnxruntime is not installed, using tensorflow")
        return "tensorflow", keras_runner(built)
    candidates = {"tensorflow": keras_runner(built)}
    choice = folder / f"{built.config.name}-{model_id[:16]}.auto"
    # chosen before for this model in this cache: a resumed run stays on it
    kept = choice.read_text().strip() if choice.is_file() else None
    if kept == "tensorflow":  # no ONNX session to build
        log.info("engine auto for %s: %s (chosen before)", built.config.name, kept)
        return kept, candidates[kept]
    try:
        candidates["onnxruntime"] = onnx_runner(built, folder, model_id)
    except Exception as exc:  # noqa: BLE001  any export or session failure: Keras runs it
        log.warning("engine auto: %s; using tensorflow", exc)
        return "tensorflow", candidates["tensorflow"]
    if kept == "onnxruntime":
        log.info("engine auto for %s: %s (chosen before)", built.config.name, kept)
        return kept, candidates[kept]
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
    tmp = choice.with_name(f".{choice.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(best + "\n")
    os.replace(tmp, choice)
    log.info(
        "engine auto for %s: %s (%s)",
        built.config.name,
        best,
        ", ".join(f"{k} {v:.0f} images/s" for k, v in timings.items()),
    )
    return best, candidates[best]
