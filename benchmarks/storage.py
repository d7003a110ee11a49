"""Feature storage: float32 vs float16, bytes on disk, write time, and head accuracy.

Takes clothing_small's MobileNetV2 features (extracting them first unless --cache
already holds them), writes them as a float32 and as a float16 generation with the
cache's own writer and codec, and trains the logistic-regression and dense heads on
each, evaluated on the same test split. Write overhead is reported against the
extraction time of the same features.

Usage: python benchmarks/storage.py [--cache DIR]
Prints a table and writes benchmarks/results/storage.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import save  # benchmarks/_results.py: scripts run from this folder

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    from featurecache.cache import Cache, recipe
    from featurecache.cache.arrays import ArraySpec
    from featurecache.cache.writing import CacheWriter
    from featurecache.config import load_pipeline
    from featurecache.extraction import extract
    from featurecache.heads import build_head, predict_proba

    work = Path(tempfile.mkdtemp(prefix="fc-bench-storage-"))
    pipeline = load_pipeline(
        REPO / "pipelines" / "clothing.toml",
        cache=args.cache or work / "cache",
        output=work / "runs",
    )
    [result] = extract(pipeline)
    cache = Cache(pipeline.cache)
    found = recipe.find_group(cache, "clothing_small", pipeline.backbones[0])
    fs = cache.read("clothing_small", found.group)
    extraction_s = found.attrs["extraction_seconds"]
    n, dim = fs.X.shape
    rows = []
    for dtype in ("float32", "float16"):
        out = Cache(work / f"store-{dtype}")
        CacheWriter(out).ensure()
        start = time.perf_counter()
        spec = ArraySpec("features", (dim,), dtype)
        writer = CacheWriter(out).generation_writer("d", "g", arrays=[spec], group_attrs={})
        for i in range(0, n, 32):
            sl = slice(i, i + 32)
            k = len(fs.y[sl])
            writer.append(
                {"features": fs.X[sl]},
                labels=fs.y[sl],
                split=fs.split[sl],
                keys=fs.keys[sl],
                sources=fs.sources[sl],
                sizes=[0] * k,
                mtimes=[0] * k,
            )
        writer.commit({"recipe_hash": "bench", "class_names": fs.class_names})
        write_s = time.perf_counter() - start
        stored = out.read("d", "g")
        nbytes = sum(
            p.stat().st_size for p in out.current("d", "g").glob("features/**/*") if p.is_file()
        )
        accuracy = {}
        for kind in ("logistic_regression", "dense"):
            x_train, y_train = stored.subset("train")
            head = build_head(kind)
            if kind == "dense":
                head.fit(x_train, y_train, validation_data=stored.subset("validation"))
            else:
                head.fit(x_train, y_train)
            x_test, y_test = stored.subset("test")
            proba = predict_proba(head, x_test, len(fs.class_names))
            accuracy[kind] = float((proba.argmax(1) == y_test).mean())
        rows.append(
            {
                "dtype": dtype,
                "feature_bytes": nbytes,
                "write_seconds": write_s,
                "write_overhead_vs_extraction": write_s / extraction_s,
                "max_abs_rounding": float(np.abs(stored.X - fs.X).max()),
                "test_accuracy": accuracy,
            }
        )
    print(f"clothing_small, MobileNetV2 features {n} x {dim}; extraction took {extraction_s:.0f} s")
    print(
        f"{'dtype':<9}{'feature MB':>11}{'write s':>9}{'of extract':>11}{'max|round|':>12}"
        f"{'LR test':>9}{'dense test':>11}"
    )
    for r in rows:
        print(
            f"{r['dtype']:<9}{r['feature_bytes'] / 1e6:>11.2f}{r['write_seconds']:>9.2f}"
            f"{r['write_overhead_vs_extraction']:>10.1%} {r['max_abs_rounding']:>11.1e}"
            f"{r['test_accuracy']['logistic_regression']:>9.3f}"
            f"{r['test_accuracy']['dense']:>11.3f}"
        )
    out = {
        "benchmark": "storage",
        "n_images": n,
        "feature_dim": dim,
        "extraction_seconds": extraction_s,
        "rows": rows,
        "codec": found.attrs["codec"],
        "extracted_now": not result.cache_hit,
    }
    save("storage", out)


if __name__ == "__main__":
    main()
