"""Extraction locally vs on a Dask LocalCluster of 1 and 2 worker processes.

Real images (the first N fingers training PNGs, 128 px grayscale upscaled to 224),
MobileNetV2 with its ImageNet weights, TensorFlow engine, batch 32. Each setting
extracts into a fresh cache in the same run, so the ratios compare like with
like. "wall s" is the whole `extract` call: for Dask it includes starting the
cluster and each worker importing TensorFlow and building the backbone;
"compute img/s" is images over the compute phase only (first shard submitted to
last shard recorded). "New cluster" rows include each worker importing TensorFlow
and building the backbone; "warm workers" rows reuse workers that already did (the
steady state of a long run). Also checks that every setting's features are
bit-identical to the local run's.

On a 2-core machine two workers share the cores that one TensorFlow process
already uses, so no speed-up is expected; the benchmark measures the overhead.

Usage: python benchmarks/scaleout.py [--images 960] [--workers 1 2]
(run from the repository root, with ../shared beside it and KERAS_HOME set).
Prints a table and writes benchmarks/results/scaleout.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import save  # benchmarks/_results.py: scripts run from this folder

HERE = Path(__file__).resolve().parent
FINGERS = HERE.parent.parent / "shared" / "datasets" / "fingers" / "train"


def subset(n: int, root: Path, source: Path = FINGERS) -> Path:
    """``root`` with the first n/6 images of each fingers class (links)."""
    classes = sorted(source.iterdir())
    for class_dir in classes:
        target = root / class_dir.name
        target.mkdir(parents=True)
        for path in sorted(class_dir.iterdir())[: n // len(classes)]:
            (target / path.name).symlink_to(path)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=960)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--engine", default="tensorflow", help="tensorflow or onnxruntime")
    args = parser.parse_args()

    from featurecache.cache import Cache
    from featurecache.config import BackboneConfig, DatasetConfig, Pipeline
    from featurecache.extraction import extract
    from featurecache.extraction.cluster import Cluster, connect
    from featurecache.extraction.dask import shard_batches

    work = Path(tempfile.mkdtemp(prefix="fc-bench-scaleout-"))
    data = subset(args.images, work / "fingers")
    warmup_data = subset(256, work / "warmup", FINGERS.parent / "test")
    rows: list[dict] = []
    reference = None

    def pipeline_for(name: str, folder: Path, cache: Path) -> Pipeline:
        return Pipeline(
            name=name,
            datasets=(DatasetConfig(name=name, format="folder", path=folder),),
            backbones=(BackboneConfig(name="mobilenet_v2", engine=args.engine),),
            heads=(),
            cache=cache,
            output=work / "runs",
            batch_size=32,
        )

    def measure(label: str, workers: int, cluster) -> None:
        nonlocal reference
        pipeline = pipeline_for("fingers", data, work / f"cache-{len(rows)}")
        start = time.perf_counter()
        result = extract(pipeline, cluster=cluster)[0]
        wall = time.perf_counter() - start
        features = Cache(pipeline.cache).read(result.dataset, result.group).X
        reference = features if reference is None else reference
        n_batches = -(-result.n_extracted // 32)
        rows.append(
            {
                "setting": label,
                "workers": workers,
                "images": result.n_extracted,
                "wall_seconds": wall,
                "compute_images_per_s": result.images_per_second,
                "shard_batches": shard_batches(n_batches, workers) if workers else None,
                "identical_to_local": bool(np.array_equal(features, reference)),
            }
        )
        print(f"{label}: {wall:.1f} s, {result.images_per_second:.1f} img/s", flush=True)

    measure("local", 0, None)
    for workers in args.workers:
        # Cold: a new LocalCluster, each worker imports TensorFlow and builds the
        # backbone inside the measured time. Warm: the same workers again (they keep
        # the built backbone), into a new cache: the steady state of a long run.
        measure(f"dask {workers}w, new cluster", workers, Cluster(workers=workers))
        # The LocalCluster featurecache starts itself (connect), reached by its address.
        with connect(Cluster(workers=workers)) as client:
            address = Cluster(scheduler=client.scheduler.address)
            # untimed: every worker imports TensorFlow and builds the backbone
            extract(pipeline_for("warmup", warmup_data, work / f"w{workers}"), cluster=address)
            measure(f"dask {workers}w, warm workers", workers, address)
    base = rows[0]
    print(
        f"\n{'setting':<22}{'images':>7}{'wall s':>8}{'vs local':>9}{'compute img/s':>15}"
        f"{'vs local':>9}{'batches/shard':>14}{'identical':>10}"
    )
    for r in rows:
        print(
            f"{r['setting']:<22}{r['images']:>7}{r['wall_seconds']:>8.1f}"
            f"{r['wall_seconds'] / base['wall_seconds']:>9.2f}"
            f"{r['compute_images_per_s']:>15.1f}"
            f"{r['compute_images_per_s'] / base['compute_images_per_s']:>9.2f}"
            f"{r['shard_batches'] or '-':>14}{'yes' if r['identical_to_local'] else 'NO':>10}"
        )
    save(
        "scaleout",
        {
            "benchmark": "scaleout",
            "backbone": f"mobilenet_v2 (imagenet, 224 px), {args.engine} engine, batch 32",
            "data": f"fingers train, first {args.images // 6} per class",
            "cpu_count": os.cpu_count(),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
