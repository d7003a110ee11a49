"""ONNX Runtime vs TensorFlow: images/s of the frozen backbone, per backbone.

Random weights (speed does not depend on the values), batch 32 at each backbone's
default input size, pre-decoded random pixels, after one warm-up batch; both engines
measured in the same process, so the ratio is meaningful even on a noisy machine.

Usage: python benchmarks/engines.py [--backbones mobilenet_v2 resnet50 ...] [--batches 3]
Prints a table and writes benchmarks/results/engines.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import save  # benchmarks/_results.py: scripts run from this folder

HERE = Path(__file__).resolve().parent
DEFAULT = ["mobilenet_v2", "mobilenet", "resnet50", "efficientnet_b0", "vgg16"]


def rate(run, batch, repeats: int) -> float:
    run(batch)
    start = time.perf_counter()
    for _ in range(repeats):
        run(batch)
    return repeats * len(batch) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=DEFAULT)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    from featurecache.backbones import build_backbone
    from featurecache.cache import recipe
    from featurecache.config import BackboneConfig
    from featurecache.errors import EngineError
    from featurecache.extraction.engines import keras_runner
    from featurecache.extraction.onnx import onnx_runner

    folder = Path(tempfile.mkdtemp(prefix="fc-bench-onnx-"))
    rows = []
    for name in args.backbones:
        config = BackboneConfig(name=name, weights="none")
        built = build_backbone(config)
        size = config.input_size
        pixels = np.random.default_rng(0).uniform(0, 255, (args.batch_size, size, size, 3))
        batch = np.asarray(built.preprocess(pixels.astype(np.float32)))
        start = time.perf_counter()
        tf = keras_runner(built)
        try:
            ort = onnx_runner(built, folder, recipe.model_id(config, None))
        except EngineError as exc:
            print(f"{name}: onnxruntime unavailable: {exc}", flush=True)
            rows.append(
                {
                    "backbone": name,
                    "input_size": size,
                    "tensorflow_images_per_s": rate(tf, batch, args.batches),
                    "onnxruntime_images_per_s": None,
                    "ratio_ort_over_tf": None,
                    "max_abs_diff": None,
                    "export_seconds": None,
                    "error": str(exc),
                }
            )
            continue
        export_s = time.perf_counter() - start
        diff = float(np.abs(np.asarray(tf(batch)) - ort(batch)).max())
        tf_rate = rate(tf, batch, args.batches)
        ort_rate = rate(ort, batch, args.batches)
        rows.append(
            {
                "backbone": name,
                "input_size": size,
                "tensorflow_images_per_s": tf_rate,
                "onnxruntime_images_per_s": ort_rate,
                "ratio_ort_over_tf": ort_rate / tf_rate,
                "max_abs_diff": diff,
                "export_seconds": export_s,
            }
        )
        print(f"{name}: tf {tf_rate:.1f}/s, ort {ort_rate:.1f}/s", flush=True)
    print(
        f"\n{'backbone':<18}{'px':>5}{'TF img/s':>10}{'ORT img/s':>11}{'ORT/TF':>8}"
        f"{'max|diff|':>11}{'export s':>10}"
    )
    for r in rows:
        head = f"{r['backbone']:<18}{r['input_size']:>5}{r['tensorflow_images_per_s']:>10.1f}"
        if r["onnxruntime_images_per_s"] is None:
            print(f"{head}{'cannot run: see the JSON':>30}")
            continue
        print(
            f"{head}{r['onnxruntime_images_per_s']:>11.1f}{r['ratio_ort_over_tf']:>8.2f}"
            f"{r['max_abs_diff']:>11.1e}{r['export_seconds']:>10.1f}"
        )
    out = {
        "benchmark": "engines",
        "batch_size": args.batch_size,
        "batches": args.batches,
        "rows": rows,
    }
    save("engines", out)


if __name__ == "__main__":
    main()
