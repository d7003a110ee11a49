"""Fine-tuning from the cache vs from images, over the same trainable layers, in one run.

For clothing_small and a CIFAR-10 subset (the first 500 train / 100 test images per
class of the shared JPEGs), MobileNetV2 with ImageNet weights and
``finetune_from = block_12_add``: the dense head is trained on the cached features,
then

* **from the cache**: blocks 13-16, Conv_1 and the head trained from the cached
  activation maps (``[finetune] source = "cache"``), ``--epochs`` epochs;
* **from images**: the same layers (``unfreeze`` = blocks 13-16 and Conv_1) and head
  trained on decoded images through the whole backbone, one epoch (horizontal flips
  as the only augmentation, as the cache path's flipped views).

Seconds per epoch come from each run's history (wall time of ``model.fit``'s epoch);
test top-1 from each run's metrics. Then **memory**: peak RSS of a one-epoch cached
fine-tune on 1,000 and on 10,000 CIFAR-10 training images, each in its own process.
Extraction reuses the CIFAR-10 rows already in the cache (same recipe, content keys),
so run `featurecache extract pipelines/cifar10.toml` first for a fast start.

Usage: python benchmarks/finetune_cache.py [--epochs 3] [--cache cache]
Prints a table and writes benchmarks/results/finetune_cache.json.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from _results import save  # benchmarks/_results.py: scripts run from this folder

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "datasets"

MEASURE_RSS = """
import resource, sys
from featurecache.cli import app
try:
    app(sys.argv[1:])
except SystemExit as done:
    code = done.code
print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def cifar_subset(root: Path, per_class: dict[str, int]) -> Path:
    """``root/<split>/<class>/``: links to the first images of each CIFAR-10 class."""
    for split, n in per_class.items():
        for folder in sorted((SHARED / "cifar10" / split).iterdir()):
            (root / split / folder.name).mkdir(parents=True, exist_ok=True)
            for path in sorted(folder.iterdir())[:n]:
                link = root / split / folder.name / path.name
                if not link.exists():
                    link.symlink_to(path)
    return root


def pipeline_for(
    source: str, name: str, data: Path, cache: Path, work: Path, finetune_from: str | None = None
):
    """The pipeline file's backbone and [finetune], on ``data``, with a dense head only
    (and another cache point, if given)."""
    from featurecache.config import DatasetConfig, HeadConfig, load_pipeline

    pipeline = load_pipeline(REPO / "pipelines" / source, cache=cache, output=work / "runs")
    backbones = pipeline.backbones
    if finetune_from:
        backbones = tuple(b.replace(finetune_from=finetune_from) for b in backbones)
    return replace(
        pipeline,
        backbones=backbones,
        name=name,
        datasets=(DatasetConfig(name=name, path=data),),
        heads=(HeadConfig(kind="dense"),),
        references=(),
    )


def compare(pipeline, epochs: int, work: Path) -> dict:
    """Extract (reusing the cache), train the dense head, fine-tune from each source
    (kept in ``work``: a rerun with the same ``--work`` reuses a finished comparison)."""
    saved = work / f"{pipeline.name}.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    from featurecache.backbones import build_backbone
    from featurecache.backbones.taps import tail_model
    from featurecache.config import Augmentation
    from featurecache.extraction import extract
    from featurecache.finetuning.train import finetune
    from featurecache.heads.train import train_heads

    [extracted] = extract(pipeline)
    [head] = train_heads(pipeline)
    backbone = pipeline.backbones[0]
    tail = tail_model(build_backbone(backbone).model, backbone.finetune_from)
    # the image path unfreezes exactly the layers after the cache point
    unfreeze = tuple(f"{re.escape(layer.name)}$" for layer in tail.layers if layer.weights)
    ft = replace(pipeline.finetune, epochs=epochs, patience=epochs)
    [cached] = finetune(replace(pipeline, finetune=replace(ft, source="cache")))
    images_ft = replace(
        ft,
        source="images",
        epochs=1,
        unfreeze=unfreeze,
        augment=Augmentation(flip="horizontal", rotation=0.0, zoom=0.0, translation=0.0),
    )
    [images] = finetune(replace(pipeline, finetune=images_ft))
    cache_epoch = min(cached.epoch_seconds)
    image_epoch = min(images.epoch_seconds)
    result = {
        "dataset": pipeline.datasets[0].name,
        "finetune_from": backbone.finetune_from,
        "n_images": extracted.n_images,
        "dense_head_test": head.accuracy.get("test"),
        "trainable_layers": {"cache": cached.trainable_layers, "images": images.trainable_layers},
        "cache": {
            "epochs": cached.epochs_run,
            "epoch_seconds": cached.epoch_seconds,
            "test": cached.finetuned_accuracy.get("test"),
            "parity": cached.parity_max_abs_diff,
        },
        "images": {
            "epochs": images.epochs_run,
            "epoch_seconds": images.epoch_seconds,
            "test": images.finetuned_accuracy.get("test"),
        },
        "speedup": image_epoch / cache_epoch,
    }
    saved.write_text(json.dumps(result))
    return result


def peak_rss(pipeline, work: Path) -> dict:
    """Peak RSS (MiB) of `featurecache finetune --from-cache --epochs 1` in its own process."""
    from featurecache.extraction import extract
    from featurecache.heads.train import train_heads

    [extracted] = extract(pipeline)
    train_heads(pipeline)
    toml = work / f"{pipeline.name}.toml"
    d = pipeline.datasets[0]
    toml.write_text(
        f'name = "{pipeline.name}"\ncache = "{pipeline.cache}"\noutput = "{pipeline.output}"\n'
        f'[[datasets]]\nname = "{d.name}"\npath = "{d.path}"\n[[backbones]]\n'
        'name = "mobilenet_v2"\nweights = "imagenet"\nengine = "onnxruntime"\n'
        'finetune_from = true\ntaps = ["block_13_expand_relu", "block_16_expand_relu"]\n'
        'views = ["identity", "flip"]\n[[heads]]\nkind = "dense"\n'
        '[finetune]\nsource = "cache"\noptimizer = "adam"\nlearning_rate = 2e-4\n'
        "batch_size = 64\n"
    )
    args = [sys.executable, "-c", MEASURE_RSS, "-q", "finetune", str(toml), "--epochs", "1"]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    lines = done.stderr.splitlines()
    kib = next(int(line.split()[1]) for line in lines if line.startswith("PEAK_RSS"))
    return {"n_images": extracted.n_images, "peak_rss_mib": round(kib / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=REPO / "cache")
    parser.add_argument("--work", type=Path, default=None, help="reuse a previous run's folder")
    parser.add_argument(
        "--finetune-from", default=None, help="only clothing_small, with this cache point"
    )
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="fc-bench-ftcache-"))
    cache = args.cache.resolve()
    if args.finetune_from:
        clothing = SHARED / "clothing_small"
        ff = args.finetune_from
        run = compare(
            pipeline_for("clothing.toml", "clothing_small", clothing, cache, work, ff),
            args.epochs,
            work,
        )
        print(json.dumps(run, indent=1))
        save(f"finetune_cache_{ff}", {"runs": [run]})
        return
    runs = [
        compare(
            pipeline_for("clothing.toml", "clothing_small", SHARED / "clothing_small", cache, work),
            args.epochs,
            work,
        ),
        compare(
            pipeline_for(
                "cifar10.toml",
                "cifar10_5k",
                cifar_subset(work / "cifar10_5k", {"train": 500, "test": 100}),
                cache,
                work,
            ),
            args.epochs,
            work,
        ),
    ]
    memory = [
        peak_rss(
            pipeline_for(
                "cifar10.toml",
                f"cifar10_{n}",
                cifar_subset(work / f"cifar10_{n}", {"train": n // 10}),
                cache,
                work,
            ),
            work,
        )
        for n in (1000, 10000)
    ]
    print(f"{'data set':<16}{'source':<8}{'s/epoch':>9}{'epochs':>8}{'test top-1':>12}")
    for r in runs:
        for source in ("cache", "images"):
            s = r[source]
            print(
                f"{r['dataset']:<16}{source:<8}{min(s['epoch_seconds']):>9.1f}{s['epochs']:>8}"
                f"{s['test']:>12.3f}"
            )
        print(f"{'':<16}speed-up of an epoch from the cache: {r['speedup']:.1f}x")
    for m in memory:
        print(f"cached fine-tune, {m['n_images']:>6} images: peak RSS {m['peak_rss_mib']} MiB")
    disk = {
        p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        for p in (cache / "cifar10").glob("mobilenet_v2-*/current/activations*")
    }
    save("finetune_cache", {"runs": runs, "memory": memory, "cifar10_activation_bytes": disk})
    print(json.dumps(disk))


if __name__ == "__main__":
    main()
