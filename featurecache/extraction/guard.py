"""The accuracy guard of a lower precision, and the stratified samples it and int8
calibration read.

Before a bf16 or int8 extraction computes anything, a sample of the images it is about
to compute (:data:`GUARD_IMAGES`, stratified by class) goes through the low-precision
engine and through fp32 ONNX Runtime on the same export, and the cosine similarity of
each image's two feature vectors is taken. Their median and minimum are recorded with
the generation (``engine_settings.precision_check``); below the backbone's
``guard_median`` or ``guard_min`` (0.99 and 0.90 by default) the extraction stops with
one line naming the figure, before anything is written.

Why these defaults (``benchmarks/precision.py``, all images of each set): bf16 gave
median / minimum cosine 0.997 / 0.980 (MobileNetV2) and 0.999 / 0.992 (EfficientNet-Lite0)
on clothing_small photos, 0.985 / 0.912 (MobileNetV2) on upsampled 32 px CIFAR-10, with
linear-probe top-1 that moved by a few test images either way; int8 MobileNetV2 gave
0.969 / 0.877 on clothing_small and 0.889 / 0.690 on CIFAR-10, where its top-1 fell by
0.65 points (the ONNX model zoo publishes -1.2 points for its int8 MobileNetV2 on
ImageNet). On CIFAR-10 MobileNetV2's bf16 (median 0.985) lost 0.72 points by 5-fold CV at
the probe's best C (``benchmarks/precision_c.py``). A median of 0.99 refuses those three
and passes every case that stayed within 0.5 points (bf16 on photos, EfficientNet-Lite0's
int8 on clothing_small at 0.993); the minimum of 0.90 catches single images gone astray.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from featurecache.backbones import BuiltBackbone
from featurecache.config import BackboneConfig
from featurecache.datasets import Listing
from featurecache.errors import ImageDecodeError, PrecisionError
from featurecache.extraction.onnx import Runner
from featurecache.extraction.quantize import CALIBRATION_IMAGES, Calibration

log = logging.getLogger(__name__)

#: Images the guard runs through both precisions.
GUARD_IMAGES = 64


def stratified_sample(labels: Sequence[int], indices: Sequence[int], n: int) -> list[int]:
    """Up to ``n`` of ``indices`` (record indices), as evenly as possible across the
    classes ``labels[i]`` and, within a class, evenly spaced: deterministic, no seed.
    Returned in the order of ``indices``."""
    by_class: dict[int, list[int]] = defaultdict(list)
    for i in indices:
        by_class[labels[i]].append(i)
    picked: list[int] = []
    queues = [members for _, members in sorted(by_class.items())]
    share = max(1, n // max(1, len(queues)))
    for members in queues:
        step = max(1, len(members) // share)
        picked.extend(members[::step][:share])
    if len(picked) < n:  # small classes left room: fill from the rest in order
        chosen = set(picked)
        picked.extend(i for i in indices if i not in chosen)
    order = {i: k for k, i in enumerate(indices)}
    return sorted(picked[:n], key=order.__getitem__)


def read_sample(
    listing: Listing, indices: Sequence[int], config: BackboneConfig
) -> tuple[list[str], np.ndarray]:
    """The content keys and uint8 RGB pixels ``(n, size, size, 3)`` of the records
    ``indices`` (decoded with the backbone's decoder); unreadable images are left out."""
    keys, pixels = [], []
    for index in indices:
        try:
            key, image = listing.read(listing.records[index], config.input_size, config.decoder)
        except ImageDecodeError as exc:
            log.debug("sample: %s", exc)
            continue
        keys.append(key)
        pixels.append(image)
    size = config.input_size
    return keys, np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)


def cosines(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``(n, d)`` arrays, float64 ``(n,)``."""
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    norms = np.linalg.norm(low, axis=1) * np.linalg.norm(high, axis=1)
    return np.sum(low * high, axis=1) / np.maximum(norms, 1e-30)


def check_precision(
    config: BackboneConfig, low: Runner, fp32: Runner, inputs: np.ndarray, batch_size: int = 32
) -> dict[str, Any]:
    """Run the preprocessed images ``inputs`` (float32 ``(n, size, size, 3)``) through
    ``low`` and ``fp32`` and compare their features: ``{"images", "median_cosine",
    "min_cosine", "guard_median", "guard_min"}``.

    Raises
    ------
    PrecisionError
        If the median is below ``config.guard_median`` or the minimum below
        ``config.guard_min``; the one line says which, and how to accept it anyway.
    """
    pairs = [
        (low(inputs[i : i + batch_size])[0], fp32(inputs[i : i + batch_size])[0])
        for i in range(0, len(inputs), batch_size)
    ]
    values = cosines(np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs]))
    check = {
        "images": len(values),
        "median_cosine": round(float(np.median(values)), 6),
        "min_cosine": round(float(values.min()), 6),
        "guard_median": config.guard_median,
        "guard_min": config.guard_min,
    }
    log.info(
        "%s %s agrees with fp32 on %d images: median cosine %.4f, minimum %.4f",
        config.name,
        config.precision,
        check["images"],
        check["median_cosine"],
        check["min_cosine"],
    )
    for figure, field in (("median_cosine", "guard_median"), ("min_cosine", "guard_min")):
        if check[figure] < check[field]:
            what = figure.replace("_cosine", "")
            raise PrecisionError(
                f"{config.name} in {config.precision} differs from fp32: the {what} cosine "
                f"similarity of {check['images']} images' features is {check[figure]:.4f}, "
                f"below {field} = {check[field]}; to accept it, set {field} = "
                f"{check[figure] - 0.001:.3f} under the backbone in the pipeline file, or use "
                "precision = 'fp32'"
            )
    return check


def calibration_images(listing: Listing, built: BuiltBackbone) -> Calibration:
    """The int8 calibration set of ``listing`` for ``built``: up to
    :data:`~featurecache.extraction.quantize.CALIBRATION_IMAGES` training images, stratified
    by class, as ``(content keys, preprocessed float32 (n, size, size, 3))``; read only
    when called (an int8 model calibrated before is reused without it)."""

    def read() -> tuple[list[str], np.ndarray]:
        labels = [r.label for r in listing.records]
        train = [i for i, r in enumerate(listing.records) if r.split == "train"]
        picked = stratified_sample(labels, train, CALIBRATION_IMAGES)
        keys, pixels = read_sample(listing, picked, built.config)
        return keys, np.asarray(built.preprocess(pixels.astype(np.float32)), np.float32)

    return read


def guard(
    listing: Listing,
    indices: Sequence[int],
    built: BuiltBackbone,
    low: Runner,
    fp32: Runner,
    batch_size: int = 32,
) -> dict[str, Any]:
    """:func:`check_precision` on :data:`GUARD_IMAGES` of the records ``indices`` (the
    images about to be computed), stratified by class.

    Raises
    ------
    PrecisionError
        As :func:`check_precision`.
    """
    labels = [r.label for r in listing.records]
    _, pixels = read_sample(listing, stratified_sample(labels, indices, GUARD_IMAGES), built.config)
    if not len(pixels):  # none of them decodes: extraction will say so, image by image
        return {"images": 0}
    inputs = np.asarray(built.preprocess(pixels.astype(np.float32)), np.float32)
    return check_precision(built.config, low, fp32, inputs, batch_size)
