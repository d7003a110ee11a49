"""Stage 1: data set x backbone -> a committed group of bottleneck features.

Reader -> model -> writer (the shape of clip-retrieval's runner): a thread pool
reads and decodes images a few batches ahead while the backbone runs on the
current batch; the writer appends whole chunks to a staging group that is
committed in one rename at the end.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from tqdm import tqdm

from featurecache import recipe
from featurecache.backbones import BackboneConfig, build_backbone
from featurecache.config import Pipeline
from featurecache.datasets import Listing, Record, list_dataset
from featurecache.errors import DatasetError, ImageDecodeError
from featurecache.store import CODEC_DESCRIPTION, Cache

log = logging.getLogger(__name__)

#: Batches decoded ahead of the one the backbone is running on.
PREFETCH_BATCHES = 2


@dataclass
class ExtractResult:
    """What one (data set, backbone) extraction did; ``--json`` prints these."""

    dataset: str
    backbone: str
    group: str
    cache_hit: bool
    n_images: int
    n_extracted: int
    weights: str
    seconds: float
    images_per_second: float | None = None
    split_counts: dict[str, int] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def extract(pipeline: Pipeline, *, progress: bool = False) -> list[ExtractResult]:
    """Extract every data set x backbone of ``pipeline`` into its cache.

    A (data set, backbone) whose inputs and recipe are unchanged is a cache hit:
    nothing is built or computed. Images that cannot be decoded are skipped and
    recorded (``ExtractResult.skipped`` and the group's ``skipped`` attribute).

    Raises
    ------
    DatasetError
        If a data set cannot be listed, or none of its images decodes.
    ConfigError
        If a backbone cannot be built with its arguments or weights.
    """
    cache = Cache(pipeline.cache)
    results = []
    for dataset in pipeline.datasets:
        listing = list_dataset(dataset)
        try:
            for backbone in pipeline.backbones:
                results.append(
                    extract_one(
                        cache, listing, backbone, batch_size=pipeline.batch_size, progress=progress
                    )
                )
        finally:
            listing.close()
    return results


def extract_one(
    cache: Cache,
    listing: Listing,
    backbone: BackboneConfig,
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> ExtractResult:
    """Extract one data set with one backbone (or find it already cached)."""
    start = time.perf_counter()
    found = recipe.find_group(cache, listing.name, backbone)
    if found is not None and found.attrs["dataset"]["fingerprint"] == listing.fingerprint:
        log.info(
            "cache hit: %s/%s (%d images), nothing to compute",
            listing.name,
            found.group,
            found.attrs["n_images"],
        )
        return ExtractResult(
            dataset=listing.name,
            backbone=backbone.name,
            group=found.group,
            cache_hit=True,
            n_images=found.attrs["n_images"],
            n_extracted=0,
            weights=backbone.weights,
            seconds=time.perf_counter() - start,
            split_counts=found.attrs["split_counts"],
            skipped=found.attrs.get("skipped", []),
        )
    if backbone.weights == "none":
        from featurecache.backbones import import_keras

        import_keras().utils.set_random_seed(recipe.RANDOM_WEIGHTS_SEED)
    built = build_backbone(backbone)
    recipe_hash = recipe.recipe_hash(backbone, built.weights_sha256)
    group = recipe.group_name(backbone, recipe_hash)
    writer = cache.writer(
        listing.name,
        group,
        feature_dim=backbone.feature_dim,
        dataset_attrs=listing.config.describe(),
    )
    skipped: list[dict[str, str]] = []
    split_counts: dict[str, int] = {}
    compute_start = time.perf_counter()
    try:
        bar = tqdm(
            total=len(listing.records),
            unit="img",
            desc=f"{listing.name} x {backbone.name}",
            disable=not progress,
            dynamic_ncols=True,
        )
        with bar:
            for batch in decoded_batches(listing, backbone.input_size, batch_size):
                good = [(r, key, px) for r, key, px, err in batch if err is None]
                for r, _, _, err in batch:
                    if err is not None:
                        log.warning("skipped %s", err)
                        skipped.append({"source": r.source, "reason": str(err)})
                if good:
                    pixels = np.stack([px for _, _, px in good]).astype(np.float32)
                    features = np.asarray(built.model.predict_on_batch(built.preprocess(pixels)))
                    writer.append(
                        features,
                        labels=[r.label for r, _, _ in good],
                        split=[r.split for r, _, _ in good],
                        keys=[key for _, key, _ in good],
                        sources=[r.source for r, _, _ in good],
                    )
                    for r, _, _ in good:
                        split_counts[r.split] = split_counts.get(r.split, 0) + 1
                bar.update(len(batch))
        n_done = sum(split_counts.values())
        if n_done == 0:
            raise DatasetError(
                f"data set {listing.name!r}: none of its {len(listing.records)} images could be "
                f"decoded (first: {skipped[0]['reason'] if skipped else 'none listed'})"
            )
        seconds = time.perf_counter() - compute_start
        writer.commit(
            _provenance(listing, backbone, built, recipe_hash, split_counts, skipped, seconds)
        )
    except BaseException:
        writer.abort()
        raise
    log.info(
        "extracted %s/%s: %d images in %.1f s (%.1f images/s), %d skipped",
        listing.name,
        group,
        n_done,
        seconds,
        n_done / seconds,
        len(skipped),
    )
    return ExtractResult(
        dataset=listing.name,
        backbone=backbone.name,
        group=group,
        cache_hit=False,
        n_images=n_done,
        n_extracted=n_done,
        weights=backbone.weights,
        seconds=time.perf_counter() - start,
        images_per_second=n_done / seconds,
        split_counts=split_counts,
        skipped=skipped,
    )


def _provenance(listing, backbone, built, recipe_hash, split_counts, skipped, seconds) -> dict:
    return {
        "featurecache_format": 1,
        "request_hash": recipe.request_hash(backbone),
        "recipe_hash": recipe_hash,
        "recipe": recipe.request(backbone),
        "dataset": {**listing.config.describe(), "fingerprint": listing.fingerprint},
        "class_names": listing.class_names,
        "backbone": backbone.describe(),
        "weights": {
            "spec": backbone.weights,
            "file": built.weights_file,
            "sha256": built.weights_sha256,
            **({"random_seed": recipe.RANDOM_WEIGHTS_SEED} if backbone.weights == "none" else {}),
        },
        "input_size": backbone.input_size,
        "preprocessing": backbone.preprocessing,
        "pooling": backbone.pooling,
        "resize": recipe.RESIZE_METHOD,
        "feature_dim": backbone.feature_dim,
        "codec": CODEC_DESCRIPTION,
        "versions": recipe.versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "extraction_seconds": round(seconds, 3),
        "split_counts": split_counts,
        "skipped": skipped,
    }


Decoded = tuple[Record, str | None, np.ndarray | None, ImageDecodeError | None]


def _read(listing: Listing, record: Record, size: int) -> Decoded:
    try:
        key, pixels = listing.read(record, size)
    except ImageDecodeError as exc:
        return record, None, None, exc
    return record, key, pixels, None


def decoded_batches(
    listing: Listing, size: int, batch_size: int, workers: int | None = None
) -> Iterator[list[Decoded]]:
    """Yield batches of ``(record, key, pixels, error)`` in listing order.

    Decoding runs in a thread pool (Pillow releases the GIL while decoding) at most
    :data:`PREFETCH_BATCHES` batches ahead, so memory stays bounded whatever the
    data set's size. ``pixels`` is ``(size, size, 3)`` uint8, or ``None`` with
    ``error`` set when the image could not be decoded.
    """
    workers = workers or min(8, os.cpu_count() or 1)
    records = iter(listing.records)
    window: deque[Future[Decoded]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:

        def fill() -> None:
            while len(window) < batch_size * (PREFETCH_BATCHES + 1):
                record = next(records, None)
                if record is None:
                    return
                window.append(pool.submit(_read, listing, record, size))

        fill()
        while window:
            batch = [window.popleft().result() for _ in range(min(batch_size, len(window)))]
            fill()
            yield batch
