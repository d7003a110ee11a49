"""Training a head from the cache vs a Keras fit through the frozen backbone.

The approach featurecache replaces: a Keras model `frozen MobileNetV2 -> dense head`
fitted on the images, so every epoch runs the backbone over every image again.
featurecache runs the backbone once (extraction), then fits the same dense head on the
cached features. Same images (catvnoncat, 209 train / 50 test, upscaled to 224 px),
same head (Dense 256 relu, Dropout 0.5, softmax), same optimizer and epochs, no early
stopping; both measured in this run.

Usage: python benchmarks/head_vs_frozen_fit.py [--epochs 15]
Prints a table and writes benchmarks/results/head_vs_frozen_fit.json.
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
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    from featurecache.backbones import build_backbone
    from featurecache.cache import Cache, recipe
    from featurecache.config import BackboneConfig, load_pipeline
    from featurecache.datasets import list_dataset
    from featurecache.deps import import_keras
    from featurecache.extraction import extract
    from featurecache.heads.dense import DenseHead

    keras = import_keras()
    work = Path(tempfile.mkdtemp(prefix="fc-bench-headfit-"))
    pipeline = load_pipeline(
        REPO / "pipelines" / "catvnoncat.toml", cache=work / "cache", output=work / "runs"
    )
    config = pipeline.backbones[0]

    # featurecache: extract once, then fit the dense head on cached features.
    start = time.perf_counter()
    extract(pipeline)
    extract_s = time.perf_counter() - start
    found = recipe.find_group(Cache(pipeline.cache), "catvnoncat", config)
    fs = Cache(pipeline.cache).read("catvnoncat", found.group)
    x_train, y_train = fs.subset("train")
    x_test, y_test = fs.subset("test")
    start = time.perf_counter()
    head = DenseHead(epochs=args.epochs, patience=args.epochs + 1, validation_fraction=0.1)
    head.fit(x_train, y_train, validation_data=(x_test[:1], y_test[:1]))
    head_s = time.perf_counter() - start
    cached_acc = float((head.predict(x_test) == y_test).mean())

    # The replaced approach: fit through the frozen backbone on the images every epoch.
    listing = list_dataset(pipeline.datasets[0])
    pixels = {s: [] for s in ("train", "test")}
    labels = {s: [] for s in ("train", "test")}
    for record in listing.records:
        pixels[record.split].append(listing.read(record, config.input_size)[1])
        labels[record.split].append(record.label)
    listing.close()
    built = build_backbone(BackboneConfig(name="mobilenet_v2"))
    keras.utils.set_random_seed(0)
    inputs = keras.Input((config.input_size, config.input_size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = built.model(x, training=False)
    x = keras.layers.Dense(256, activation="relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    train_x = np.stack(pixels["train"]).astype(np.float32)
    start = time.perf_counter()
    model.fit(train_x, np.asarray(labels["train"]), epochs=args.epochs, batch_size=32, verbose=0)
    frozen_fit_s = time.perf_counter() - start
    proba = model.predict(np.stack(pixels["test"]).astype(np.float32), verbose=0)
    frozen_acc = float((proba.argmax(1) == np.asarray(labels["test"])).mean())

    total_fc = extract_s + head_s
    print(f"catvnoncat, MobileNetV2 ImageNet, dense head, {args.epochs} epochs, 50 test images")
    print(f"{'approach':<52}{'seconds':>9}{'test top-1':>12}")
    print(
        f"{'Keras fit through the frozen backbone (every epoch)':<52}{frozen_fit_s:>9.1f}"
        f"{frozen_acc:>12.3f}"
    )
    print(f"{'featurecache: extract once':<52}{extract_s:>9.1f}")
    print(f"{'featurecache: dense head on cached features':<52}{head_s:>9.1f}{cached_acc:>12.3f}")
    print(
        f"speed-up of the head fit: {frozen_fit_s / head_s:.0f}x; including the one-off "
        f"extraction: {frozen_fit_s / total_fc:.1f}x"
    )
    out = {
        "benchmark": "head_vs_frozen_fit",
        "epochs": args.epochs,
        "frozen_fit_seconds": frozen_fit_s,
        "frozen_fit_test_accuracy": frozen_acc,
        "extract_seconds": extract_s,
        "cached_head_seconds": head_s,
        "cached_head_test_accuracy": cached_acc,
        "speedup_head_only": frozen_fit_s / head_s,
        "speedup_including_extraction": frozen_fit_s / total_fc,
    }
    save("head_vs_frozen_fit", out)


if __name__ == "__main__":
    main()
