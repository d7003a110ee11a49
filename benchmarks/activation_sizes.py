"""Disk cost of the activation cache: every registered family at its default cache point.

Builds each backbone of the registry (random weights, its default input size), checks
that its ``cache_point`` cuts it in two (the layers after it run on its activation map
alone: :func:`featurecache.backbones.taps.tail_model`), and reports the map's shape and
its size per image and view as float16, before compression. Blosc-zstd takes about 13%
off: MobileNetV2's block_12_add maps of the 60,000 CIFAR-10 images hold 1,873 MiB per
view on disk (32.0 KiB per image, against 36.8 KiB raw).

Usage: python benchmarks/activation_sizes.py
Prints a Markdown table (the README's) and writes benchmarks/results/activation_sizes.json.
"""

from __future__ import annotations

import math

from _results import save  # benchmarks/_results.py: scripts run from this folder


def main() -> None:
    from featurecache.backbones.taps import tail_model
    from featurecache.config import registry
    from featurecache.deps import import_keras

    keras = import_keras()
    rows = []
    for name, spec in registry.REGISTRY.items():
        if spec.cache_point is None:
            rows.append({"backbone": name, "cache_point": None})
            continue
        model = getattr(keras.applications, spec.keras_name)(
            include_top=False,
            weights=None,
            input_shape=(spec.input_size, spec.input_size, 3),
            pooling="avg",
            **dict(spec.default_args),
        )
        tail = tail_model(model, spec.cache_point)  # raises unless it cuts the model
        shape = tuple(int(d) for d in model.get_layer(spec.cache_point).output.shape[1:])
        trainable = sum(1 for layer in tail.layers if layer.weights)
        rows.append(
            {
                "backbone": name,
                "input_size": spec.input_size,
                "cache_point": spec.cache_point,
                "shape": list(shape),
                "kib_per_image": round(math.prod(shape) * 2 / 1024, 1),
                "tail_layers_with_weights": trainable,
            }
        )
        keras.backend.clear_session()
    print("| backbone | input | cache point | map (h, w, c) | KiB per image and view |")
    print("| --- | ---: | --- | --- | ---: |")
    for r in rows:
        if r["cache_point"] is None:
            print(f"| {r['backbone']} | | none (NASNet's cells read two cells each) | | |")
        else:
            h, w, c = r["shape"]
            print(
                f"| {r['backbone']} | {r['input_size']} | `{r['cache_point']}` | "
                f"{h} x {w} x {c} | {r['kib_per_image']} |"
            )
    save("activation_sizes", {"families": rows})


if __name__ == "__main__":
    main()
