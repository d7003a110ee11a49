"""Keras backends on this CPU: TensorFlow vs JAX vs PyTorch, measured in the same run.

Each backend runs in processes of its own (Keras fixes its backend when imported),
one backend after the other:

- **backbone alone**: MobileNetV2 with its real ImageNet weights, 224 px, batches of 32
  pre-decoded random pixels through the ``keras`` engine's runner, after one warm-up
  batch (whose seconds are reported too: JAX compiles there);
- **extraction**: ``featurecache extract --data ../shared/datasets/clothing_small/test
  --engine keras`` into a fresh cache: 372 real JPEG photos, decode + resize +
  backbone + zarr writes, images/s as the command reports it;
- **where the time goes**: the same, with random weights, for ResNet50 (dense
  convolutions only) beside MobileNetV2 (mostly depthwise convolutions): a backend
  slow on one but not the other is slow at that kind of convolution on this CPU;
- **dense head**: :class:`featurecache.heads.dense.DenseHead` (256 units) fit for 5 epochs
  (no early stop) on 10,000 x 1280 float32 features, 10 classes, batch 32; random
  features, as the time does not depend on their values;
- the largest difference between each backend's cached features and TensorFlow's.

Usage: python benchmarks/backends.py [--backends tensorflow jax torch] [--batches 5]
Prints a table and writes benchmarks/results/backends.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import save  # benchmarks/_results.py: scripts run from this folder

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "datasets" / "clothing_small" / "test"


def backbone_rate(name: str, weights: str, batches: int) -> tuple[float, float]:
    """``(seconds of the warm-up batch, images/s after it)`` of ``name`` alone."""
    from featurecache.backbones import build_backbone
    from featurecache.config import BackboneConfig
    from featurecache.extraction.engines import keras_runner

    built = build_backbone(BackboneConfig(name=name, weights=weights))
    size = built.config.input_size
    pixels = np.random.default_rng(0).uniform(0, 255, (32, size, size, 3)).astype(np.float32)
    batch = np.asarray(built.preprocess(pixels))
    run = keras_runner(built)
    start = time.perf_counter()
    run(batch)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        run(batch)
    return first, batches * len(batch) / (time.perf_counter() - start)


def child(batches: int) -> dict:
    """In a process on one backend: the backbones alone and the dense-head fit."""
    from featurecache.heads.dense import DenseHead

    first, mobilenet = backbone_rate("mobilenet_v2", "imagenet", batches)
    _, resnet = backbone_rate("resnet50", "none", max(2, batches // 2))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10_000, 1280)).astype(np.float32)
    y = rng.integers(0, 10, 10_000)
    head = DenseHead(epochs=5, patience=5)
    start = time.perf_counter()
    head.fit(X, y)
    return {
        "first_batch_s": first,
        "backbone_images_per_s": mobilenet,
        "resnet50_images_per_s": resnet,
        "dense_fit_s": time.perf_counter() - start,
    }


def featurecache_json(backend: str, *args: str) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend}
    command = [sys.executable, "-m", "featurecache", *args, "--json"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{backend}: {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def measure(backend: str, batches: int, cache: Path) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend}
    done = subprocess.run(
        [sys.executable, __file__, "--child", "--batches", str(batches)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"{backend}: the backbone/head child failed:\n{done.stderr[-2000:]}")
    row = {"backend": backend, **json.loads(done.stdout.strip().splitlines()[-1])}
    [extract] = featurecache_json(
        backend, "extract", "--data", str(DATA), "--engine", "keras", "--cache", str(cache)
    )["extract"]
    row["extraction_images_per_s"] = extract["images_per_second"]
    row["group"] = extract["group"]
    return row


def largest_differences(rows: list[dict], cache: Path) -> None:
    from featurecache.cache.layout import Cache

    store = Cache(cache)
    [dataset] = store.datasets()
    features = {r["backend"]: np.asarray(store.read(dataset, r["group"]).X) for r in rows}
    reference = features.get("tensorflow")
    for r in rows:
        r["max_abs_diff_vs_tensorflow"] = (
            None if reference is None else float(np.abs(features[r["backend"]] - reference).max())
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.batches)))
        return
    cache = Path(tempfile.mkdtemp(prefix="fc-bench-backends-"))
    rows = []
    for backend in args.backends:
        rows.append(measure(backend, args.batches, cache))
        print(f"{backend}: {rows[-1]}", flush=True)
    largest_differences(rows, cache)
    base = rows[0]
    print(
        f"\n{'backend':<12}{'backbone img/s':>15}{'first batch s':>14}{'extract img/s':>14}"
        f"{'dense fit s':>12}{'extract vs ' + base['backend']:>22}{'max|diff| vs TF':>16}"
        f"{'ResNet50 img/s':>15}"
    )
    for r in rows:
        diff = r["max_abs_diff_vs_tensorflow"]
        print(
            f"{r['backend']:<12}{r['backbone_images_per_s']:>15.1f}{r['first_batch_s']:>14.1f}"
            f"{r['extraction_images_per_s']:>14.1f}{r['dense_fit_s']:>12.1f}"
            f"{r['extraction_images_per_s'] / base['extraction_images_per_s']:>22.2f}"
            f"{'-' if diff is None else f'{diff:.1e}':>16}{r['resnet50_images_per_s']:>15.1f}"
        )
    versions = {}
    for backend in args.backends:
        from featurecache.deps import backend_version

        versions[backend] = backend_version(backend)
    save(
        "backends",
        {
            "benchmark": "backends",
            "batches": args.batches,
            "data": "clothing_small/test (372 JPEG photos)",
            "versions": versions,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
