"""Extraction images/s on real JPEGs vs the backbone alone on pre-decoded tensors.

clothing_small: 3,781 real JPEG photos (about 400x533). For each engine, in the same
run: (1) the backbone alone on pre-decoded, pre-resized tensors (its ceiling), (2) the
extraction's compute phase into a fresh cache (decoding and resizing in a thread pool
overlapped with inference, durable staging writes; end to end, with the backbone's build
and the commit, is reported too), (3) decoding alone. The backbone alone is measured
just before and just after (2), and their mean is used: this machine's speed drifts.
The ratio (2)/(1) says how close extraction gets to the backbone's own speed.

Usage: python benchmarks/extraction.py [--engines tensorflow onnxruntime] [--limit N]
Prints a table and writes benchmarks/results/extraction.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import save  # benchmarks/_results.py: scripts run from this folder

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "datasets" / "clothing_small"


def raw(run, batches) -> float:
    """Images/s of the backbone alone on pre-decoded, preprocessed batches."""
    run(batches[0])
    start = time.perf_counter()
    for batch in batches:
        run(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=["tensorflow", "onnxruntime"])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    from featurecache.backbones import build_backbone
    from featurecache.cache import Cache, recipe
    from featurecache.config import BackboneConfig, DatasetConfig
    from featurecache.datasets import list_dataset
    from featurecache.extraction import engines, extract_dataset

    listing = list_dataset(DatasetConfig(name="clothing_small", format="folder", path=args.data))
    n = len(listing.records)
    size = 224
    sample = listing.records[:256]
    start = time.perf_counter()
    decoded = [listing.read(r, size)[1] for r in sample]
    decode_rate = len(sample) / (time.perf_counter() - start)  # one thread
    tensors = np.stack(decoded).astype(np.float32)
    rows = []
    for engine in args.engines:
        config = BackboneConfig(name="mobilenet_v2", engine=engine)
        built = build_backbone(config)
        work = Path(tempfile.mkdtemp(prefix="fc-bench-extract-"))
        _, run = engines.select(
            built, engine, work / "engines", recipe.model_id(config, built.weights_sha256)
        )
        batches = [
            built.preprocess(tensors[i : i + args.batch_size].copy())
            for i in range(0, len(tensors), args.batch_size)
        ]

        # The machine's speed drifts: measure the backbone alone just before and just
        # after the extraction and compare with their mean.
        raw_before = raw(run, batches)
        [result] = extract_dataset(
            Cache(work / "cache"), listing, [config], batch_size=args.batch_size
        )
        raw_after = raw(run, batches)
        raw_rate = (raw_before + raw_after) / 2
        full_rate = result.images_per_second  # the compute phase: decode + infer + stage
        rows.append(
            {
                "engine": engine,
                "raw_images_per_s": raw_rate,
                "raw_before": raw_before,
                "raw_after": raw_after,
                "extraction_images_per_s": full_rate,
                "end_to_end_images_per_s": result.n_extracted / result.seconds,
                "ratio": full_rate / raw_rate,
                "extraction_seconds": result.seconds,
                "n_images": result.n_extracted,
                "decode_share_if_serial": raw_rate / decode_rate,
            }
        )
        print(f"{engine}: raw {raw_rate:.1f}/s, extraction {full_rate:.1f}/s", flush=True)
    print(
        f"\nclothing_small, {n} JPEGs, MobileNetV2 ImageNet 224 px, batch {args.batch_size}; "
        f"decode + resize alone: {decode_rate:.0f} images/s on one thread"
    )
    print(f"{'engine':<14}{'backbone alone':>16}{'extraction':>12}{'ratio':>8}{'seconds':>9}")
    for r in rows:
        print(
            f"{r['engine']:<14}{r['raw_images_per_s']:>16.1f}{r['extraction_images_per_s']:>12.1f}"
            f"{r['ratio']:>8.2f}{r['extraction_seconds']:>9.0f}"
        )
    out = {
        "benchmark": "extraction",
        "n_images": n,
        "decode_images_per_s_one_thread": decode_rate,
        "rows": rows,
    }
    save("extraction", out)


if __name__ == "__main__":
    main()
