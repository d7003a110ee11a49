"""Write docs/benchmarks.md from the JSON files under benchmarks/results/.

Usage: python benchmarks/report.py   (after running the benchmark scripts)
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from report_precision import (  # benchmarks/: scripts run from this folder
    precision_c_section,
    precision_section,
)

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"


def load(name: str) -> dict | None:
    path = HERE / "results" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def extraction_section(ext: dict) -> list[str]:
    rows = [r for r in ext["rows"] if "engines" in r]
    lines = [
        "## (a) Extraction against the Keras guide's pipeline and the pipelined limit",
        "",
        f"`benchmarks/extraction.py` on {ext['date']}: MobileNetV2 with ImageNet weights, "
        "224 px, batch 32, every figure of a data set from the same run. *Decode*: "
        "featurecache's input side alone (read, hash, decode, resize, `preprocess_input`), one "
        "thread per core. *Backbone*: the engine alone on preprocessed batches (mean of a "
        "measurement just before and just after its extraction). *Limit*: "
        "`1 / (1/backbone + 1/decode)`, the best a pipeline can do when decoding and inference "
        "share the same cores. *Extraction*: `extract` into a fresh cache, images over the "
        "compute phase; the last three columns are its own profile (seconds the backbone ran, "
        "waited for decoded images, waited for the previous batch's write). photos_hires: "
        "the 16 camera JPEGs (8-24 MP), each copied with a distinct JPEG comment so that no "
        "two files share a content key.",
        "",
        "| data set | images | engine | decode img/s | backbone img/s | limit img/s "
        "| extraction img/s | of limit | backbone s | waiting s | writing s |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        for engine, e in r["engines"].items():
            p = e["profile"]
            lines.append(
                f"| {r['dataset']} | {r['n_images']:,} | {engine} | "
                f"{r['decode_images_per_s']:.1f} | {e['backbone_images_per_s']:.1f} | "
                f"{e['limit_images_per_s']:.1f} | {e['extraction_images_per_s']:.1f} | "
                f"{e['of_limit']:.2f} | {p['backbone']:.1f} | {p['waiting']:.1f} | "
                f"{p['writing']:.2f} |"
            )
    lines += [
        "",
        "Against what the Keras guide has users write "
        "([transfer learning](https://keras.io/guides/transfer_learning/), "
        "[image data loading](https://keras.io/api/data_loading/image/)): "
        "`keras.utils.image_dataset_from_directory` (tf.data, parallel decoding, bilinear "
        "resize without antialiasing) with `preprocess_input` mapped over it and "
        "`.prefetch(AUTOTUNE)`, then `model.predict` of the same backbone, timed from the "
        "listing call to the last prediction. *Default*: `extract` with no engine named "
        "(`auto`), with the engine it chose.",
        "",
        "| data set | Keras guide img/s | default engine | default img/s | default / guide "
        "| tensorflow img/s | tensorflow / guide |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if "peer_images_per_s" not in r:
            continue
        tf = r["engines"].get("tensorflow", {}).get("extraction_images_per_s", float("nan"))
        lines.append(
            f"| {r['dataset']} | {r['peer_images_per_s']:.1f} | {r['default']['engine']} | "
            f"{r['default']['images_per_s']:.1f} | {r['default_vs_peer']:.2f}x | {tf:.1f} | "
            f"{r.get('tensorflow_vs_peer', float('nan')):.2f}x |"
        )
    bounds = [
        f"{r['dataset']} {e['limit_images_per_s'] / r['peer_images_per_s']:.2f}x "
        f"({e['backbone_images_per_s'] / r['peer_images_per_s']:.2f}x)"
        for r in rows
        if "peer_images_per_s" in r and (e := r["engines"].get("onnxruntime"))
    ]
    if bounds:
        lines += [
            "",
            "How far ahead of the guide the default can be is bounded by ONNX Runtime's limit "
            "on this machine; limit / guide (and ONNX Runtime's backbone alone / guide, the "
            "bound even if decoding were free): " + ", ".join(bounds) + ". The guide's own "
            "pipeline decodes with TensorFlow's JPEG decoder and resizes without antialiasing, "
            "which costs less CPU per image than Pillow's antialiased resize, so on small "
            "photos it comes within a few percent of featurecache's TensorFlow limit, or above it.",
        ]
    for r in ext["rows"]:
        if "gzip_vs_contiguous" in r:
            rates = r["rates"]
            lines += [
                "",
                f"HDF5 (the CIFAR-10 subset as uint8 arrays, ONNX Runtime): contiguous file "
                f"{rates['contiguous']:.1f} images/s, gzip-compressed with h5py's own chunks "
                f"{rates['gzip']:.1f} images/s: **{r['gzip_vs_contiguous']:.2f}x**. Rows are "
                "read in slabs aligned with the file's chunks, each slab kept while its rows "
                "are used. Before, each row was its own read: with these chunks one row "
                "touches 48 chunks of 32 KB, more than h5py's 1 MiB chunk cache holds, so "
                "every row decompressed all 48 again.",
            ]
    for r in rows:
        if r.get("ablation"):
            lines += [
                "",
                f"What the pipeline's settings are worth ({r['dataset']}, ONNX Runtime "
                "extraction, images/s; featurecache uses one decoding thread per core and "
                "ONNX Runtime's idle threads not spinning):",
                "",
                "| decoding threads | ONNX Runtime spinning | extraction img/s |",
                "| ---: | --- | ---: |",
            ]
            lines += [
                f"| {a['decode_threads']} | {'yes' if a['spinning'] else 'no'} | "
                f"{a['images_per_s']:.1f} |"
                for a in r["ablation"]
            ]
    return lines + [""]


def scaleout_section(so: dict) -> list[str]:
    base = so["rows"][0]["compute_images_per_s"]
    lines = [
        "## Scale-out: a Dask LocalCluster against the same process",
        "",
        f"`benchmarks/scaleout.py` on {so['date']}: {so['data']}, {so['backbone']}. *New "
        "cluster* counts starting the workers (each imports TensorFlow and builds the "
        "backbone); *warm workers* reuse workers that already did (a long run's steady "
        "state). Compute: images over the first shard submitted to the last recorded.",
        "",
        "| setting | images | wall s | compute img/s | vs local | batches / shard "
        "| identical to local |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in so["rows"]:
        lines.append(
            f"| {r['setting']} | {r['images']} | {r['wall_seconds']:.1f} | "
            f"{r['compute_images_per_s']:.1f} | {r['compute_images_per_s'] / base:.2f} | "
            f"{r['shard_batches'] or '-'} | {'yes' if r['identical_to_local'] else 'NO'} |"
        )
    return lines + [
        "",
        "A warm worker's loss was mostly Dask's own worker environment: the nanny starts "
        "workers with `MALLOC_TRIM_THRESHOLD_=65536`, which also turns off glibc's adaptive "
        "mmap threshold, so every image and batch buffer is mapped and faulted in afresh. "
        "Measured the same day with all else equal: a warm worker at 0.88x the local rate "
        "with it; the local process given the same variable fell to the worker's speed "
        "(the worker then 0.96x of it). featurecache's LocalCluster unsets it; for workers "
        "you start yourself, see README, Scale-out.",
        "",
    ]


def main() -> None:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python benchmarks/report.py` from `benchmarks/results/*.json`. "
        "Every figure below was measured by the script named in its section, on the "
        "team's machine: 2 CPU cores, 24 GiB, no GPU (TensorFlow CPU 2.21, Keras 3.15, "
        "ONNX Runtime 1.32). This machine's speed drifts by 20% or more from minute to "
        "minute, so comparisons are ratios measured in the same run.",
        "",
    ]
    if ext := load("extraction"):
        lines += extraction_section(ext)
    if prec := load("precision"):
        lines += precision_section(prec)
    if sweep := load("precision_c"):
        lines += precision_c_section(sweep)
    if eng := load("engines"):
        lines += [
            "## (b) ONNX Runtime vs TensorFlow",
            "",
            f"`benchmarks/engines.py` on {eng['date']}: random weights, batch "
            f"{eng['batch_size']}, each backbone's default input size, both engines in the "
            "same process.",
            "",
            "| backbone | px | TensorFlow img/s | ONNX Runtime img/s "
            "| ORT / TF | max abs diff | export s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in eng["rows"]:
            if r["onnxruntime_images_per_s"] is None:
                lines.append(
                    f"| {r['backbone']} | {r['input_size']} | "
                    f"{r['tensorflow_images_per_s']:.1f} | cannot run (see below) | "
                    "| | |"
                )
                continue
            lines.append(
                f"| {r['backbone']} | {r['input_size']} | "
                f"{r['tensorflow_images_per_s']:.1f} | "
                f"{r['onnxruntime_images_per_s']:.1f} | {r['ratio_ort_over_tf']:.2f} | "
                f"{r['max_abs_diff']:.1e} | {r['export_seconds']:.0f} |"
            )
        errors = [r for r in eng["rows"] if r.get("error")]
        for r in errors:
            lines += ["", f"{r['backbone']}: {r['error']}"]
        lines.append("")
    if fit := load("head_vs_frozen_fit"):
        lines += [
            "## (c) A head from the cache vs a Keras fit through the frozen backbone",
            "",
            f"`benchmarks/head_vs_frozen_fit.py` on {fit['date']}: catvnoncat (209 train / "
            "50 test, upscaled to 224 px), MobileNetV2 ImageNet, the same dense head, Adam, "
            f"{fit['epochs']} epochs, no early stopping.",
            "",
            "| approach | seconds | test top-1 |",
            "| --- | ---: | ---: |",
            f"| Keras fit through the frozen backbone | {fit['frozen_fit_seconds']:.1f} | "
            f"{fit['frozen_fit_test_accuracy']:.3f} |",
            f"| featurecache: extract once | {fit['extract_seconds']:.1f} | |",
            f"| featurecache: dense head on cached features | "
            f"{fit['cached_head_seconds']:.1f} | {fit['cached_head_test_accuracy']:.3f} |",
            "",
            f"Speed-up of training the head: {fit['speedup_head_only']:.0f}x; "
            f"including the one-off extraction: {fit['speedup_including_extraction']:.1f}x "
            "(and every further head or experiment costs only the head's seconds).",
            "",
        ]
    if mem := load("memory"):
        lines += [
            "## (d) Peak memory against data set size",
            "",
            f"`benchmarks/memory.py` on {mem['date']}: MobileNetV2 (random weights) at "
            f"{mem['input_size']} px over CIFAR-10 training JPEGs, each size in a fresh "
            "process; peak RSS from `getrusage`.",
            "",
            "| images | peak RSS MB | vs first | seconds |",
            "| ---: | ---: | ---: | ---: |",
        ]
        base = mem["rows"][0]["peak_rss_mb"]
        for r in mem["rows"]:
            lines.append(
                f"| {r['n_images']:,} | {r['peak_rss_mb']:.0f} | "
                f"{r['peak_rss_mb'] / base:.2f} | {r['seconds']:.0f} |"
            )
        lines.append("")
    if noop := load("noop_refresh"):
        lines += [
            "## (e) No-op refresh",
            "",
            f"`benchmarks/noop_refresh.py` on {noop['date']}: {noop['n_files']:,} files "
            "(CIFAR-10 test JPEGs), median of "
            f"{noop['repeats']}.",
            "",
            "| measure | seconds |",
            "| --- | ---: |",
            f"| list and stat every file | {statistics.median(noop['listing_seconds']):.2f} |",
            f"| no-op refresh, library call | "
            f"{statistics.median(noop['noop_library_seconds']):.2f} |",
            f"| no-op `featurecache refresh`, a new process | "
            f"{statistics.median(noop['noop_cli_seconds']):.2f} |",
            "",
        ]
    if st := load("storage"):
        lines += [
            "## Storage: float32 vs float16, write overhead",
            "",
            f"`benchmarks/storage.py` on {st['date']}: clothing_small MobileNetV2 features "
            f"({st['n_images']:,} x {st['feature_dim']}), codec {st['codec']}, written "
            "with the cache's own writer; heads trained on each and evaluated on the same "
            "372 test images.",
            "",
            "| dtype | features MB on disk | write s | of extraction time | max rounding | "
            "LR test top-1 | dense test top-1 |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in st["rows"]:
            lines.append(
                f"| {r['dtype']} | {r['feature_bytes'] / 1e6:.2f} | "
                f"{r['write_seconds']:.2f} | {r['write_overhead_vs_extraction']:.1%} | "
                f"{r['max_abs_rounding']:.1e} | "
                f"{r['test_accuracy']['logistic_regression']:.3f} | "
                f"{r['test_accuracy']['dense']:.3f} |"
            )
        lines.append("")
    if ft := load("finetune_clothing"):
        f = ft["finetune"]
        lines += [
            "## Fine-tuning",
            "",
            "See `docs/finetune.md`: clothing_small test top-1 "
            f"{f['frozen_accuracy']['test']:.3f} (frozen dense head) -> "
            f"{f['finetuned_accuracy']['test']:.3f} (fine-tuned, {f['epochs_run']} CPU "
            "epochs).",
            "",
        ]
    if fc := load("finetune_cache"):
        lines += _finetune_cache(fc)
    if so := load("scaleout"):
        lines += scaleout_section(so)
    if kb := load("backends"):
        lines += _backends(kb)
    lines += [
        "## Measured elsewhere",
        "",
        "- `docs/sources.md`: images where they live (a folder, WebDataset shards, shards on "
        "S3; the no-op refresh over 10,000 objects), from `benchmarks/sources.py`.",
        "- `docs/audit.md`: `featurecache audit` (planted duplicates and the threshold, planted "
        "label flips, time and memory up to a million images, CIFAR-10), from "
        "`benchmarks/audit.py`.",
        "",
    ]
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text("\n".join(lines))
    print(f"wrote {DOC}")


def _finetune_cache(fc: dict) -> list[str]:
    """Fine-tuning from the cache vs from images, and its memory, as Markdown."""
    lines = [
        "## Fine-tuning from the cache vs from images",
        "",
        f"`benchmarks/finetune_cache.py` on {fc['date']}: MobileNetV2 (ImageNet weights, "
        "224 px), the same trainable layers both ways (blocks 13-16, Conv_1 and the dense "
        "head; BatchNormalization frozen), batch as in each pipeline's `[finetune]`. "
        "*From the cache*: trained from the cached `block_12_add` activation maps (float16), "
        "flipped views as augmentation. *From images*: decoded images through the whole "
        "backbone, horizontal flips as the only augmentation, one epoch. Seconds per epoch: "
        "the fastest epoch of each run (wall time of Keras's epoch, validation included).",
        "",
        "| data set | images | from | epochs | s / epoch | test top-1 | epoch speed-up |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in fc["runs"]:
        for source in ("cache", "images"):
            s = r[source]
            speed = f"{r['speedup']:.1f}x" if source == "cache" else ""
            lines.append(
                f"| {r['dataset']} | {r['n_images']:,} | {source} | {s['epochs']} | "
                f"{min(s['epoch_seconds']):.1f} | {s['test']:.3f} | {speed} |"
            )
    lines += [
        "",
        "Peak RSS of `featurecache finetune --from-cache --epochs 1`, each in its own "
        "process (the activations stream from zarr in shuffled chunk windows):",
        "",
        "| CIFAR-10 training images | peak RSS (MiB) |",
        "| ---: | ---: |",
    ]
    lines += [f"| {m['n_images']:,} | {m['peak_rss_mib']:,} |" for m in fc["memory"]]
    sizes = fc.get("cifar10_activation_bytes", {})
    if sizes:
        total = sum(sizes.values())
        lines += [
            "",
            f"Activation cache of all 60,000 CIFAR-10 images (two views): {total / 2**30:.2f} "
            "GiB on disk.",
        ]
    return [*lines, ""]


def _backends(kb: dict) -> list[str]:
    """TensorFlow vs JAX vs PyTorch on this CPU, as Markdown."""
    versions = ", ".join(f"{k} {v}" for k, v in kb["versions"].items())
    rows = kb["rows"]
    base = rows[0]
    lines = [
        "## Keras backends on the CPU",
        "",
        f"`benchmarks/backends.py` on {kb['date']} ({versions}), each backend in processes "
        "of its own, one after the other. *Backbone alone*: MobileNetV2 with ImageNet "
        "weights, 224 px, batch 32 of pre-decoded pixels, after a warm-up batch (*first "
        "batch*: its seconds, compilation included). *Extraction*: `featurecache extract "
        f"--engine keras` of {kb['data']} into a fresh cache, as the command reports it. "
        "*Dense head*: the 256-unit dense head fit for 5 epochs on 10,000 x 1280 features. "
        "*ResNet50*: random weights, alone, as for MobileNetV2. *max abs diff*: the "
        "backend's cached features against TensorFlow's.",
        "",
        "| backend | backbone alone, img/s | first batch, s | extraction, img/s | "
        f"extraction vs {base['backend']} | dense head fit, s | ResNet50 alone, img/s | "
        "max abs diff |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        diff = r.get("max_abs_diff_vs_tensorflow")
        lines.append(
            f"| {r['backend']} | {r['backbone_images_per_s']:.1f} | {r['first_batch_s']:.1f} | "
            f"{r['extraction_images_per_s']:.1f} | "
            f"{r['extraction_images_per_s'] / base['extraction_images_per_s']:.2f} | "
            f"{r['dense_fit_s']:.1f} | {r['resnet50_images_per_s']:.1f} | "
            f"{'-' if diff is None else f'{diff:.1e}'} |"
        )
    tf = next((r for r in rows if r["backend"] == "tensorflow"), None)
    fastest = max(rows, key=lambda r: r["extraction_images_per_s"])
    lines += ["", f"Fastest extraction on this CPU: {fastest['backend']}."]
    if tf is not None:
        lines[-1] += (
            " Against TensorFlow, backbone alone: "
            + "; ".join(
                f"{r['backend']} {r['backbone_images_per_s'] / tf['backbone_images_per_s']:.2f}x "
                f"on MobileNetV2 (depthwise convolutions) but "
                f"{r['resnet50_images_per_s'] / tf['resnet50_images_per_s']:.2f}x on ResNet50 "
                "(dense convolutions)"
                for r in rows
                if r is not tf
            )
            + ". JAX's gap is mostly in MobileNetV2's depthwise convolutions, which "
            "XLA's CPU backend runs far slower than TensorFlow's CPU build (oneDNN on); "
            "PyTorch is slower at both kinds, running eagerly (Keras's default for it) "
            "and moving channels-last tensors to channels-first around each convolution "
            "(`keras/src/backend/torch/nn.py`). TensorFlow stays the default backend: "
            "on a CPU neither other backend comes near it for extraction, and ONNX "
            "Runtime, the faster engine for MobileNetV2 (section (b)), needs it anyway."
        )
    return [*lines, ""]


if __name__ == "__main__":
    main()
