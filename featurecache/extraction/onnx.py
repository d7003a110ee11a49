"""The backbone's ONNX export, and ONNX Runtime sessions on it.

The export is Keras's own ``model.export(format="onnx")`` (through tf2onnx, so on the
TensorFlow backend only) of the model featurecache builds, EfficientNet's Normalization
statistics folded into constants first (:func:`fold_normalization`); it is made once per
model identity into the cache's engine folder and shared by every engine that runs an
export (ONNX Runtime, OpenVINO) and by the int8 quantiser
(:mod:`featurecache.extraction.quantize`).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from featurecache.backbones import BuiltBackbone
from featurecache.errors import DependencyError, EngineError
from featurecache.quiet import quiet_import

log = logging.getLogger(__name__)

#: Preprocessed float32 images ``(batch, size, size, 3)`` -> one array per output of the
#: backbone (``BackboneConfig.outputs``: features ``(batch, feature_dim)`` first).
Runner = Callable[[np.ndarray], list[np.ndarray]]


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401

        with quiet_import():  # tf2onnx imports TensorFlow
            import tf2onnx  # noqa: F401
    except ImportError:
        return False
    return True


def model_stem(built: BuiltBackbone, model_id: str) -> str:
    """``<backbone>-<first 16 hex digits of the model identity>``: the name of the
    backbone's files in the engine folder (a ``hub:`` preset by its folder's name)."""
    return f"{Path(built.config.name.removeprefix('hub:')).name}-{model_id[:16]}"


def export_path(built: BuiltBackbone, folder: Path, model_id: str) -> Path:
    """Where the fp32 export of ``built`` lives in the engine folder."""
    return folder / f"{model_stem(built, model_id)}.onnx"


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


def exported(built: BuiltBackbone, folder: Path, model_id: str) -> Path:
    """The checked fp32 ONNX export of ``built`` in ``folder`` (made now if missing, or
    made again if an older featurecache made it with extra inputs).

    Raises
    ------
    DependencyError
        If onnxruntime or tf2onnx is not installed.
    EngineError
        If the export cannot run on images alone, or has the wrong number of outputs.
    """
    if not onnx_available():
        raise DependencyError(
            f"engine {built.config.engine!r} needs onnxruntime and tf2onnx (the backbone's "
            "ONNX export): pip install 'featurecache[onnx]'"
        )
    import onnxruntime as ort

    path = export_path(built, folder, model_id)
    fresh = not path.is_file()
    if fresh:
        _export(built, path)
    graph = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = graph.get_inputs()
    if len(inputs) != 1 and not fresh:
        # an export made before featurecache folded these constants: make it again
        log.info("%s: exported by an older featurecache with %d inputs; again", path, len(inputs))
        path.unlink()
        return exported(built, folder, model_id)
    if len(inputs) != 1:
        # tf2onnx turns tensors captured by the model (not variables, not constants)
        # into graph inputs; fold_normalization handles the case known so far.
        raise EngineError(
            f"engine {built.config.engine!r} cannot run {built.config.name}: its ONNX export "
            f"expects {len(inputs)} inputs ({', '.join(i.name for i in inputs)}), not just "
            "the images (a tf2onnx limitation); use engine 'keras' for this backbone"
        )
    n_outputs = len(built.config.outputs)
    if len(graph.get_outputs()) != n_outputs:
        raise EngineError(
            f"the ONNX export of {built.config.name} has {len(graph.get_outputs())} "
            f"outputs, not {n_outputs}; delete {path} and run again"
        )
    return path


def ort_runner(path: Path) -> Runner:
    """An ONNX Runtime session on the model at ``path`` (fp32 or a QDQ int8 model), one
    intra-op thread per core, idle threads not spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    # Idle intra-op threads sleep instead of spinning, so decoding threads get the cores
    # between batches (ONNX Runtime's threading docs: session.intra_op.allow_spinning).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: np.ascontiguousarray(batch, np.float32)})


def onnx_runner(built: BuiltBackbone, folder: Path, model_id: str) -> Runner:
    """The ONNX Runtime session of ``built``'s fp32 export (:func:`exported`).

    Raises
    ------
    DependencyError, EngineError
        As :func:`exported`.
    """
    return ort_runner(exported(built, folder, model_id))


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
