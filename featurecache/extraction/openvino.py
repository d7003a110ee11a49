"""OpenVINO on the backbone's ONNX export, at an explicit precision.

OpenVINO reads the same ONNX file ONNX Runtime runs (:func:`featurecache.extraction.onnx.
exported`) and compiles it for the CPU. **On a CPU with AVX512_BF16 or AMX, OpenVINO
computes in bf16 unless told otherwise** (its ``INFERENCE_PRECISION_HINT`` defaults to the
fastest type the CPU has), so featurecache always sets the hint: ``f32`` for precision
``fp32``, ``bf16`` for ``bf16`` (an int8 QDQ model keeps ``f32`` for what is not
quantised), and records it with the engine's other settings
(:attr:`~featurecache.extraction.engines.Extractor.settings`).

``PERFORMANCE_HINT`` is ``LATENCY``: one request at a time on all cores, which on the
team's 2 cores ran MobileNetV2 about twice as fast as ``THROUGHPUT`` (whose streams split
the cores). Source: OpenVINO's "Precision Control" and "High-level Performance Hints"
guides (docs.openvino.ai, 2026).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from featurecache.errors import DependencyError

log = logging.getLogger(__name__)

#: featurecache's precision -> OpenVINO's ``INFERENCE_PRECISION_HINT``.
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVinoRunner:
    """A compiled OpenVINO model as a :data:`~featurecache.extraction.onnx.Runner`, with
    the ``settings`` to record: ``{"openvino": version, "inference_precision_hint",
    "performance_hint", "inference_num_threads"}`` as the compiled model reports them."""

    def __init__(self, compiled: Any, settings: dict[str, Any]) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.settings = settings

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        results = self.request.infer({0: np.ascontiguousarray(batch, np.float32)})
        # the request reuses its output buffers: copy before the next batch
        return [np.array(results[i], copy=True) for i in range(len(self.compiled.outputs))]


def openvino_runner(path: Path, precision: str) -> OpenVinoRunner:
    """An OpenVINO CPU model compiled from the ONNX file at ``path`` with the precision
    hint of ``precision`` (:data:`PRECISION_HINTS`).

    Raises
    ------
    DependencyError
        If openvino is not installed.
    """
    if not openvino_available():
        raise DependencyError(
            "engine 'openvino' needs OpenVINO: pip install 'featurecache[openvino]'"
        )
    import openvino

    settings = {
        "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": os.cpu_count() or 1,
    }
    compiled = openvino.Core().compile_model(str(path), "CPU", settings)
    recorded: dict[str, Any] = {"openvino": openvino.get_version()}
    for key in settings:
        value = compiled.get_property(key)  # as compiled: the hint's Type prints "bf16"
        recorded[key.lower()] = value.to_string() if hasattr(value, "to_string") else str(value)
    log.info("openvino: %s compiled with %s", path.name, recorded)
    return OpenVinoRunner(compiled, recorded)
