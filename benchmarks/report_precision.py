"""Section (a2) of docs/benchmarks.md: lower precision and simplejpeg, from
benchmarks/results/precision.json (``benchmarks/precision.py``)."""

from __future__ import annotations

NAMES = {"mobilenet_v2": "MobileNetV2"}


def _backbone(name: str) -> str:
    return NAMES.get(name, "EfficientNet-Lite0 (hub)" if "lite0" in name else name)


def precision_section(doc: dict) -> list[str]:
    lines = [
        "## (a2) Lower precision and simplejpeg decoding",
        "",
        f"`benchmarks/precision.py` on {doc['date']}: MobileNetV2 with ImageNet weights, "
        "224 px, batch 32, every figure of a data set from the same run; the columns are "
        "those of section (a), per engine x precision x JPEG decoder. *vs fp32*: against "
        "`extract` with nothing named (the fp32 default: `auto`, which ran ONNX Runtime, "
        "and Pillow), measured in the same run; "
        "*vs guide*: against the Keras guide's pipeline, measured in the same run. int8 "
        "variants ran with the accuracy guard open, to be measured.",
        "",
    ]
    for row in doc.get("speed", []):
        decode = row["decode_images_per_s"]
        lines += [
            f"**{row['dataset']}**, {row['n_images']:,} images: decode {decode['pillow']:.0f} "
            f"img/s with Pillow, {decode['simplejpeg']:.0f} with simplejpeg "
            f"({decode['simplejpeg'] / decode['pillow']:.2f}x); Keras guide "
            f"{row['peer_images_per_s']:.1f} img/s; `extract` with nothing named "
            f"({row['default']['engine']}) {row['default']['images_per_s']:.1f} img/s.",
            "",
            "| engine | precision | decoder | backbone img/s | limit img/s | extraction img/s "
            "| of limit | vs fp32 | vs guide |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for v in row["variants"]:
            rate = v["extraction_images_per_s"]
            lines.append(
                f"| {v['engine']} | {v['precision']} | {v['decoder']} | "
                f"{v['backbone_images_per_s']:.1f} | {v['limit_images_per_s']:.1f} | "
                f"{rate:.1f} | {v['of_limit']:.2f} | {v['vs_fp32_default']:.2f}x | "
                f"{v['vs_keras_guide']:.2f}x |"
            )
        lines.append("")
    if doc.get("accuracy"):
        lines += [
            "Linear-probe top-1 (featurecache's `logistic_regression` head, C=1, train -> "
            "test; and its mean over a stratified 5-fold cross-validation of every image, "
            "where measured) per precision and decoder, and the cosine similarity of each "
            "image's features to fp32's (median, minimum over every image). clothing_small: "
            "3,068 train / 372 test photos (one test photo is 0.27 points); CIFAR-10 subset: "
            "8,000 train / 2,000 test JPEGs.",
            "",
            "| backbone | data set | variant | test top-1 | vs fp32, points | 5-fold CV top-1 "
            "| vs fp32, points | median cosine | min cosine | extraction img/s |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in doc["accuracy"]:
            for label, v in r["variants"].items():
                cosine = (
                    f"{v['median_cosine']:.4f} | {v['min_cosine']:.4f}"
                    if "median_cosine" in v
                    else " | "
                )
                cv = (
                    f"{v['cv_top1']:.4f} | {v['cv_vs_fp32_points']:+.2f}"
                    if "cv_top1" in v
                    else " | "
                )
                lines.append(
                    f"| {_backbone(r['backbone'])} | {r['dataset']} | {label} | "
                    f"{v['top1']:.4f} | {v['vs_fp32_points']:+.2f} | {cv} | {cosine} | "
                    f"{v['images_per_s']:.1f} |"
                )
        lines.append("")
    gpu = doc.get("gpu", {})
    if gpu.get("measured"):
        lines += ["GPU, Keras MobileNetV2 alone (mixed precision):", ""]
        lines += [
            f"- {policy}: {v['images_per_s']:.0f} img/s, median cosine to float32 "
            f"{v['median_cosine']:.4f}"
            for policy, v in gpu["policies"].items()
        ]
        lines.append("")
    elif gpu:
        lines += [
            f"GPU path (Keras mixed precision, `--gpu`): not measured: {gpu['reason']}.",
            "",
        ]
    lines += doc.get("findings", [])
    return lines


def precision_c_section(doc: dict) -> list[str]:
    """The C sweep of ``benchmarks/precision_c.py``."""
    lines = [
        f"`benchmarks/precision_c.py` on {doc['date']}: MobileNetV2 on the CIFAR-10 subset, "
        "fp32 vs bf16, the same linear probe at several C (bf16 - fp32 in points):",
        "",
        "| C | fp32 test | bf16 test | diff | fp32 5-fold CV | bf16 5-fold CV | diff |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['C']} | {r['fp32_test']:.4f} | {r['bf16_test']:.4f} | "
            f"{100 * (r['bf16_test'] - r['fp32_test']):+.2f} | {r['fp32_cv']:.4f} | "
            f"{r['bf16_cv']:.4f} | {100 * (r['bf16_cv'] - r['fp32_cv']):+.2f} |"
        )
    return [*lines, ""]
