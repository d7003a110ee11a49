"""Lower precision and the faster JPEG decoder: speed against fp32 and the Keras guide,
each variant against its own pipelined limit, and linear-probe top-1 per precision.

Speed (``--speed``), on clothing_small (all 3,781 photos) and photos_hires (16 camera
JPEGs, each copied ``--repeat`` times), MobileNetV2 with ImageNet weights, 224 px, batch
32, everything in one run:

* *fp32 default*: ``extract`` with no engine or precision named (``auto``, Pillow);
* every engine x precision (``onnxruntime`` fp32/int8, ``openvino`` fp32/bf16/int8), with
  Pillow and with simplejpeg decoding: its *decode* rate (featurecache's input side alone,
  one thread per core), *backbone* rate (the engine alone on preprocessed batches, mean
  of just before and just after its extraction), *limit* ``1 / (1/backbone + 1/decode)``,
  and *extraction* rate (``extract`` into a fresh cache, compute phase);
* the Keras guide's pipeline (``image_dataset_from_directory`` + ``preprocess_input`` +
  ``model.predict``; see benchmarks/extraction.py), in a fresh process.

Accuracy (``--accuracy``): for MobileNetV2 and EfficientNet-Lite0
(``hub:../shared/keras-hub/efficientnet_lite0_imagenet``), features of clothing_small
(train / test as given) and of a 10,000-image CIFAR-10 subset (800 train + 200 test JPEGs
per class, from the data set's own splits) at fp32, bf16 and int8 (guard thresholds at 0,
to measure), and fp32 with simplejpeg; a scikit-learn ``LogisticRegression`` (C=1.0,
max_iter 5000, standardised features: featurecache's ``logistic_regression`` head) on
train, top-1 on test, and its mean top-1 over a stratified 5-fold cross-validation of
every image; plus the guard's median and minimum cosine against fp32.

GPU (``--gpu``): Keras's MobileNetV2 alone at ``float32``, ``mixed_float16`` and
``mixed_bfloat16`` where TensorFlow sees a GPU; this machine has none, so the results
say so instead of figures. Not measured here either: the PyTorch user's
pipeline (torchvision ``ImageFolder`` + ``DataLoader``): no torchvision wheel on the
registry imports against this machine's torch 2.13 CPU build (0.27-0.29 fail with
``operator torchvision::nms does not exist``).

Usage: python benchmarks/precision.py [--speed] [--accuracy] [--repeat 8]
Prints tables and writes benchmarks/results/precision.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import RESULTS, save
from extraction import backbone_rate, hires_copies, link_subset

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"
LITE0 = f"hub:{SHARED / 'keras-hub' / 'efficientnet_lite0_imagenet'}"
#: (engine, precision) of every variant measured for speed
VARIANTS = [
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("onnxruntime", "int8"),
    ("openvino", "int8"),
]
OPEN_GUARD = {"guard_median": -1.0, "guard_min": -1.0}


def _extract(listing, config, work: Path, keep: bool = False):
    from featurecache.cache import Cache
    from featurecache.extraction import extract_dataset

    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=work)) / "cache"
    [result] = extract_dataset(Cache(cache), listing, [config], batch_size=32)
    if keep:
        return result, Cache(cache).read(listing.name, result.group)
    shutil.rmtree(cache.parent)
    return result


def decode_rate(listing, built, decoder: str) -> float:
    """featurecache's input side alone, one decoding thread per core."""
    from featurecache.extraction.decoding import decoded_batches

    order = list(range(len(listing.records)))
    size = built.config.input_size
    sizes = dict.fromkeys(order, [(size, decoder)])

    def preprocess(index, pixels):
        return {0: np.asarray(built.preprocess(pixels[(size, decoder)][None].astype(np.float32)))}

    start = time.perf_counter()
    for _ in decoded_batches(listing, order, sizes, 32, os.cpu_count(), preprocess=preprocess):
        pass
    return len(order) / (time.perf_counter() - start)


def speed(name: str, listing, root: Path, work: Path) -> dict:
    from featurecache.backbones import build_backbone
    from featurecache.cache import recipe
    from featurecache.config import BackboneConfig
    from featurecache.extraction.engines import open_extractor
    from featurecache.extraction.guard import calibration_images

    base = build_backbone(BackboneConfig(name="mobilenet_v2", engine="keras"))
    decode = {d: decode_rate(listing, base, d) for d in ("pillow", "simplejpeg")}
    print(f"{name}: {len(listing.records)} images; decode {decode}", flush=True)
    pixels = np.stack([listing.read(r, 224)[1] for r in listing.records[:128]]).astype(np.float32)
    batches = [base.preprocess(pixels[i : i + 32]) for i in range(0, len(pixels), 32)]
    os.environ.pop("FEATURECACHE_ENGINE", None)
    default = _extract(listing, BackboneConfig(name="mobilenet_v2"), work)
    row = {
        "dataset": name,
        "n_images": len(listing.records),
        "decode_images_per_s": decode,
        "default": {"engine": default.engine, "images_per_s": default.images_per_second},
        "variants": [],
    }
    print(f"  fp32 default ({default.engine}): {default.images_per_second:.1f}", flush=True)
    engines = work / "engines"
    for engine, precision in VARIANTS:
        for decoder in ("pillow", "simplejpeg"):
            config = BackboneConfig(
                name="mobilenet_v2",
                engine=engine,
                precision=precision,
                decoder=decoder,
                **OPEN_GUARD,
            )
            built = build_backbone(config)
            model_id = recipe.model_id(config, built.weights_sha256)
            run = open_extractor(
                built,
                engine,
                engines,
                model_id,
                dataset=listing.name,
                calibration=calibration_images(listing, built),
            ).runner
            before = backbone_rate(run, batches)
            result = _extract(listing, config, work)
            after = backbone_rate(run, batches)
            backbone = (before + after) / 2
            limit = 1 / (1 / backbone + 1 / decode[decoder])
            rate = result.images_per_second
            row["variants"].append(
                {
                    "engine": engine,
                    "precision": precision,
                    "decoder": decoder,
                    "backbone_images_per_s": backbone,
                    "limit_images_per_s": limit,
                    "extraction_images_per_s": rate,
                    "of_limit": rate / limit,
                    "vs_fp32_default": rate / default.images_per_second,
                    "profile": result.profile,
                }
            )
            print(
                f"  {engine} {precision} {decoder}: backbone {backbone:.1f}, limit {limit:.1f}, "
                f"extraction {rate:.1f} ({rate / limit:.2f} of limit, "
                f"{rate / default.images_per_second:.2f}x the fp32 default)",
                flush=True,
            )
    row["peer_images_per_s"] = fresh_peer_rate(root, len(listing.records))
    for v in row["variants"]:
        v["vs_keras_guide"] = v["extraction_images_per_s"] / row["peer_images_per_s"]
    row["default"]["vs_keras_guide"] = default.images_per_second / row["peer_images_per_s"]
    print(f"  Keras guide: {row['peer_images_per_s']:.1f} images/s", flush=True)
    return row


def fresh_peer_rate(root: Path, n: int) -> float:
    """The Keras guide's rate (benchmarks/extraction.py ``peer_rate``) in a process of its
    own: in this one, the engines built before leave their thread pools behind (a run
    with the guide in-process measured it at half the rate)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from extraction import peer_rate; "
        "print('RATE', peer_rate(__import__('pathlib').Path(sys.argv[2]), int(sys.argv[3])))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(HERE), str(root), str(n)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(next(x for x in done.stdout.splitlines() if x.startswith("RATE")).split()[1])


def probe(features) -> tuple[float, float | None]:
    """Top-1 of featurecache's logistic_regression head, train -> test; and its mean
    top-1 over a stratified 5-fold cross-validation of every image (all splits), a
    figure with five times the test split's resolution."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, test = features.split == "train", features.split == "test"
    head = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    head.fit(features.X[train], features.y[train])
    top1 = float((head.predict(features.X[test]) == features.y[test]).mean())
    if len(features.y) > 5000:  # a test split of thousands resolves 0.05 points already
        return top1, None
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    cv = float(cross_val_score(head, features.X, features.y, cv=folds).mean())
    return top1, cv


def accuracy(name: str, listing, backbone: str, work: Path) -> dict:
    from featurecache.config import BackboneConfig
    from featurecache.extraction.guard import cosines

    rows, reference = {}, None
    variants = {
        "fp32": {"engine": "onnxruntime"},
        "bf16": {"precision": "bf16"},
        "int8": {"precision": "int8"},
        "fp32 simplejpeg": {"engine": "onnxruntime", "decoder": "simplejpeg"},
    }
    for label, settings in variants.items():
        config = BackboneConfig(name=backbone, **settings, **OPEN_GUARD)
        result, features = _extract(listing, config, work, keep=True)
        top1, cv = probe(features)
        entry = {"top1": top1, "images_per_s": result.images_per_second}
        if cv is not None:
            entry["cv_top1"] = cv
        if reference is None:
            reference = features
        else:
            assert list(features.keys) == list(reference.keys)
            similarity = cosines(features.X, reference.X)
            entry |= {
                "median_cosine": float(np.median(similarity)),
                "min_cosine": float(similarity.min()),
            }
        entry["vs_fp32_points"] = 100 * (top1 - rows["fp32"]["top1"]) if rows else 0.0
        if cv is not None:
            entry["cv_vs_fp32_points"] = 100 * (cv - rows["fp32"]["cv_top1"]) if rows else 0.0
        rows[label] = entry
        print(f"  {name} {backbone[-30:]} {label}: top-1 {top1:.4f} {entry}", flush=True)
    return {"dataset": name, "backbone": backbone, "variants": rows}


def gpu_rows(batch: int = 128, batches: int = 20) -> dict:
    """The GPU path: Keras's MobileNetV2 (ImageNet weights) alone at policy ``float32``,
    ``mixed_float16`` and ``mixed_bfloat16`` (Keras mixed precision guide), img/s and the
    cosine of its features to float32's; where TensorFlow sees no GPU, says so."""
    import keras
    import tensorflow as tf

    from featurecache.extraction.guard import cosines

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return {"measured": False, "reason": "TensorFlow sees no GPU on this machine"}
    rng = np.random.default_rng(0)
    images = keras.applications.mobilenet_v2.preprocess_input(
        rng.uniform(0, 255, (batch, 224, 224, 3)).astype(np.float32)
    )
    rows, reference = {}, None
    for policy in ("float32", "mixed_float16", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(policy)
        model = keras.applications.MobileNetV2(include_top=False, pooling="avg")
        features = np.asarray(model.predict_on_batch(images), np.float32)
        start = time.perf_counter()
        for _ in range(batches):
            model.predict_on_batch(images)
        rate = batch * batches / (time.perf_counter() - start)
        reference = features if reference is None else reference
        rows[policy] = {
            "images_per_s": rate,
            "median_cosine": float(np.median(cosines(features, reference))),
        }
        print(f"  GPU {policy}: {rate:.0f} images/s", flush=True)
    keras.mixed_precision.set_global_policy("float32")
    return {"measured": True, "gpus": [g.name for g in gpus], "policies": rows}


def cifar_subset(root: Path) -> Path:
    for split, per_class in (("train", 800), ("test", 200)):
        link_subset(SHARED / "datasets" / "cifar10" / split, root / split, per_class)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--accuracy", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--repeat", type=int, default=8, help="copies of each hires photo")
    parser.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--backbones", nargs="+", default=["mobilenet_v2", LITE0])
    parser.add_argument("--probe-sets", nargs="+", default=["clothing_small", "cifar10_10k"])
    args = parser.parse_args()
    from featurecache.config import dataset_from_option
    from featurecache.datasets import list_dataset

    work = Path(tempfile.mkdtemp(prefix="fc-bench-precision-"))
    path = RESULTS / "precision.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.pop("date", None)  # today's, and this machine's, when saved
    results.pop("machine", None)
    try:
        clothing = list_dataset(
            dataset_from_option([str(SHARED / "datasets" / "clothing_small")], name="clothing")
        )
        if args.speed:
            hires_root = hires_copies(work / "photos_hires", args.repeat)
            hires = list_dataset(dataset_from_option([str(hires_root)], name="photos_hires"))
            results["speed"] = [
                speed("clothing_small", clothing, SHARED / "datasets" / "clothing_small", work),
                speed("photos_hires", hires, hires_root, work),
            ]
            save("precision", {"benchmark": "precision", **results})
        if args.gpu:
            results["gpu"] = gpu_rows()
        if args.accuracy:
            sets = {"clothing_small": clothing}
            if "cifar10_10k" in args.probe_sets:
                sets["cifar10_10k"] = list_dataset(
                    dataset_from_option([str(cifar_subset(work / "cifar"))], name="cifar10")
                )
            done = {(r["dataset"], r["backbone"]): r for r in results.get("accuracy", [])}
            for backbone in args.backbones:
                for name in args.probe_sets:
                    done[name, backbone] = accuracy(name, sets[name], backbone, work)
                    results["accuracy"] = list(done.values())
                    save("precision", {"benchmark": "precision", **results})  # so far
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save("precision", {"benchmark": "precision", **results})


if __name__ == "__main__":
    main()
