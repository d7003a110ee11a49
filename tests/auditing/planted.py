"""Data sets with known defects, made from ../shared's clothing_small, for the audit's
tests and benchmarks/audit.py.

- :func:`plant_duplicates`: a class-folder data set whose train split holds altered
  copies of some held-out (test) photos: re-encoded as JPEG at quality 60, resized to
  60%, centre-cropped to 90% of each side, and mirrored. Every other image is a link to
  the original file, so the clean images are exactly the shared ones.
- :func:`flip_labels`: a fraction of the train labels changed at random to another class.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

#: How each planted copy is altered: name -> function of a PIL image.
ALTERATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "reencoded": lambda im: Image.open(_jpeg(im, 60)),
    "resized": lambda im: im.resize((max(1, im.width * 3 // 5), max(1, im.height * 3 // 5))),
    "cropped": lambda im: im.crop(
        (im.width // 20, im.height // 20, im.width - im.width // 20, im.height - im.height // 20)
    ),
    "mirrored": ImageOps.mirror,
}


def _jpeg(image: Image.Image, quality: int) -> io.BytesIO:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    out.seek(0)
    return out


def plant_duplicates(
    source: Path, out: Path, *, originals: int, per_class: int | None = None, seed: int = 0
) -> dict[str, str]:
    """Build ``out/{train,test}/<class>/`` from ``source`` (clothing_small's layout;
    ``per_class``: at most this many train and test images of each class, else all),
    with an altered copy of ``originals`` test photos per :data:`ALTERATIONS` in train.

    Returns the planted copies: file name in train -> the test file it copies (both
    relative to ``out``).
    """
    rng = np.random.default_rng(seed)
    chosen: list[Path] = []
    for split in ("train", "test"):
        for folder in sorted((source / split).iterdir()):
            files = sorted(folder.glob("*.jpg"))[:per_class]
            for file in files:
                link = out / split / folder.name / file.name
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(file, link)
            if split == "test":
                chosen += files
    planted = {}
    for i in rng.choice(len(chosen), originals, replace=False):
        original = chosen[int(i)]
        with Image.open(original) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            for name, alter in ALTERATIONS.items():
                copy = out / "train" / original.parent.name / f"planted-{name}-{original.name}"
                alter(image).convert("RGB").save(copy, format="JPEG", quality=92)
                planted[str(copy.relative_to(out))] = f"test/{original.parent.name}/{original.name}"
    return planted


def flip_labels(
    y: np.ndarray, rows: np.ndarray, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``y`` with ``fraction`` of ``rows`` given another class at random: the new labels
    and the rows flipped."""
    rng = np.random.default_rng(seed)
    n_classes = int(y.max()) + 1
    flipped = np.sort(rng.choice(rows, int(round(fraction * len(rows))), replace=False))
    out = y.copy()
    out[flipped] = (y[flipped] + rng.integers(1, n_classes, len(flipped))) % n_classes
    return out, flipped
