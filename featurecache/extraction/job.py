"""One backbone's extraction over one data set, and the one loop that computes batches.

:func:`prepare` plans a backbone: a cache hit (an :class:`ExtractResult` at once), or
an :class:`ExtractJob` with its staging area and, when images must go through the
backbone, its :class:`~featurecache.extraction.engines.Extractor`.

:func:`compute_batches` is the batch loop, the same in this process
(:mod:`featurecache.extraction.local`) and on a Dask worker
(:mod:`featurecache.extraction.dask`): it decodes the images of the given batches once
per input size, runs each backbone on exactly its planned batches and hands every
finished batch to a callback that makes it durable. A stage is reader -> model ->
writer, as in clip-retrieval's ``runner.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from featurecache.backbones import build_backbone
from featurecache.cache import Cache, storable
from featurecache.cache import recipe as recipes
from featurecache.cache.staging import ComputeStage
from featurecache.cache.store import ArraySpec
from featurecache.config import RANDOM_WEIGHTS_SEED, BackboneConfig
from featurecache.datasets import Listing
from featurecache.extraction.decoding import Decoded, decoded_batches
from featurecache.extraction.engines import Extractor, open_extractor
from featurecache.extraction.plan import Plan, make_plan, plan_id
from featurecache.extraction.result import ExtractResult, Profile

log = logging.getLogger(__name__)


@dataclass
class ExtractJob:
    """One backbone's pending extraction over one data set, as planned by the client.

    Batch ``b`` holds the images ``plan.compute[b * batch_size : (b + 1) * batch_size]``
    and is chunk ``b`` of ``stage``; ``weights`` is the provenance of the weights
    (``spec``, ``file``, ``sha256``); ``arrays`` the per-image arrays of the generation
    (``features`` first). ``extractor`` is set when images must be computed.
    """

    listing: Listing
    backbone: BackboneConfig
    plan: Plan
    group: str
    recipe_hash: str
    engine: str
    weights: dict[str, Any]
    stage: ComputeStage
    started: float
    n_resumed: int
    arrays: list[ArraySpec]
    extractor: Extractor | None = None
    n_computed: int = 0
    compute_seconds: float = 0.0
    profile: Profile | None = None

    @property
    def batch_size(self) -> int:
        return self.stage.batch

    def rows(self, batch: int) -> list[int]:
        """Record indices of batch number ``batch``."""
        return self.plan.compute[batch * self.batch_size : (batch + 1) * self.batch_size]

    def work(self) -> BatchWork:
        """The batches still missing from the stage, for :func:`compute_batches`."""
        batches = self.stage.missing()
        if batches and self.extractor is None:
            raise RuntimeError("internal error: images to compute but no backbone built")
        return BatchWork(self.extractor, batches, [self.rows(b) for b in batches], owner=self)


@dataclass
class BatchOutput:
    """One computed batch: ``arrays``, every stored array by name, ``(n, *shape)``
    float32 (``features`` ``(n, feature_dim)`` first; zero rows where an image was
    skipped), ``keys`` (``""`` where skipped) and the skip records."""

    arrays: dict[str, np.ndarray]
    keys: list[str]
    skipped: list[dict[str, str]]

    @property
    def n_computed(self) -> int:
        return sum(1 for k in self.keys if k)


@dataclass
class BatchWork:
    """Batches for one backbone in :func:`compute_batches`: their numbers and the record
    indices (ascending) of each. ``owner`` is whatever the callback needs back."""

    extractor: Extractor | None
    batches: list[int]
    rows: list[list[int]]
    owner: Any = None
    _next: int = 0
    _buffer: list[Decoded] = field(default_factory=list)


def compute_batch(extractor: Extractor, listing: Listing, items: Sequence[Decoded]) -> BatchOutput:
    """Run the backbone on one batch of decoded images; the undecodable are skipped.

    Only the decodable images go through the backbone, together, as one batch.
    """
    size = extractor.built.config.input_size
    keys = [key or "" for _, key, _, _, _ in items]
    skipped = [
        {"source": storable(listing.records[index].source), "reason": str(error)}
        for index, _, _, error, _ in items
        if error is not None
    ]
    for item in skipped:
        log.warning("skipped %s", item["reason"])
    shapes = extractor.built.output_shapes
    arrays = {
        name: np.zeros((len(items), *shapes[_output(name)]), np.float32)
        for name in extractor.built.config.stored()
    }
    good = [i for i, item in enumerate(items) if item[3] is None]
    if good:
        computed = extractor.outputs(
            np.stack([items[i][2][size] for i in good]),
            np.stack([items[i][4][id(extractor)] for i in good]),
        )
        for name, values in computed.items():
            arrays[name][good] = values
    return BatchOutput(arrays, keys, skipped)


def _output(stored: str) -> str:
    """The output a stored array holds: ``features.flip`` -> ``features``."""
    return stored.removesuffix(".flip")


def array_specs(backbone: BackboneConfig, shapes: dict[str, tuple[int, ...]]) -> list[ArraySpec]:
    """The generation's per-image arrays: each stored output with its shape; activation
    maps in float16, pooled outputs in ``backbone.dtype``."""
    return [
        ArraySpec(
            name,
            shapes[_output(name)],
            "float16" if _output(name) == "activations" else backbone.dtype,
        )
        for name in backbone.stored()
    ]


def _stage_specs(arrays: list[ArraySpec]) -> list[ArraySpec]:
    """Staging keeps pooled outputs in float32 (cast once, at commit), maps in float16."""
    return [
        ArraySpec(s.name, s.shape, "float16" if len(s.shape) == 3 else "float32") for s in arrays
    ]


def compute_batches(
    listing: Listing,
    work: Sequence[BatchWork],
    batch_size: int,
    on_batch: Callable[[BatchWork, int, BatchOutput], None],
    *,
    progress: bool = False,
    label: str = "",
) -> Profile:
    """Compute every batch of ``work``; ``on_batch(work, number, output)`` after each.
    Returns where the time went.

    Each image is read once and decoded once per input size that some backbone needs;
    each backbone runs exactly its planned batches, so its features do not depend on
    which other backbones ran beside it.

    Raises
    ------
    RuntimeError
        If decoding returned the images out of order (an internal error).
    """
    need: dict[int, list[BatchWork]] = {}
    for item in work:
        for rows in item.rows:
            for index in rows:
                need.setdefault(index, []).append(item)
    order = sorted(need)
    sizes = {i: sorted({w.extractor.built.config.input_size for w in need[i]}) for i in order}
    bar = tqdm(total=len(order), unit="img", dynamic_ncols=True, disable=not progress, desc=label)
    profile = Profile()

    def prepare(index: int, pixels: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Each backbone's input for image ``index``, by ``id`` of its extractor."""
        extractors = {id(w.extractor): w.extractor for w in need[index]}
        return {k: e.prepare(pixels[e.built.config.input_size]) for k, e in extractors.items()}

    batches = decoded_batches(listing, order, sizes, batch_size, prepare=prepare)
    with bar, closing(batches):  # on an error or a stop, no decoding goes on behind it
        while True:
            start = time.perf_counter()
            decoded = next(batches, None)
            profile.waiting += time.perf_counter() - start
            if decoded is None:
                return profile
            for image in decoded:
                for item in need[image[0]]:
                    _add(listing, item, image, on_batch, profile)
            bar.update(len(decoded))


def _add(
    listing: Listing,
    item: BatchWork,
    image: Decoded,
    on_batch: Callable[[BatchWork, int, BatchOutput], None],
    profile: Profile,
) -> None:
    item._buffer.append(image)
    rows = item.rows[item._next]
    if len(item._buffer) < len(rows):
        return
    if [index for index, *_ in item._buffer] != rows:
        raise RuntimeError("internal error: a decoded batch is not the planned batch")
    start = time.perf_counter()
    output = compute_batch(item.extractor, listing, item._buffer)
    middle = time.perf_counter()
    on_batch(item, item.batches[item._next], output)
    profile.backbone += middle - start
    profile.writing += time.perf_counter() - middle
    item._buffer = []
    item._next += 1


def prepare(
    cache: Cache,
    listing: Listing,
    backbone: BackboneConfig,
    batch_size: int,
    *,
    damaged: Mapping[tuple[str, str], Collection[int] | None] | None = None,
    rewrite: bool = False,
) -> ExtractJob | ExtractResult:
    """Plan one backbone: a cache hit, or a job with its staging area and extractor.

    ``damaged`` (rows not to reuse: :func:`~featurecache.extraction.plan.make_plan`) or
    ``rewrite`` make an unchanged data set a new generation, not a cache hit (repair)."""
    start = time.perf_counter()
    damaged = damaged or {}
    found = recipes.find_group(cache, listing.name, backbone)
    here = (listing.name, found.group) if found else None
    if here in damaged and damaged[here] is None:
        found = None  # unreadable: computed again, or found by content key elsewhere
    elif found and found.attrs["dataset"]["fingerprint"] == listing.fingerprint:
        if not rewrite and here not in damaged:
            return _cache_hit(listing, backbone, found, time.perf_counter() - start)
    known, backbone = _known(cache, backbone, found)
    recipe_hash = known.attrs["recipe_hash"] if known else None
    plan = make_plan(cache, listing, found, recipe_hash, damaged)
    extractor = None
    arrays = ArraySpec.from_attrs(known.attrs) if known else []
    if plan.compute or known is None:
        extractor, recipe_hash, arrays, weights = _open(cache, backbone, known, batch_size)
    else:
        recipe_hash = known.attrs["recipe_hash"]
        weights = dict(known.attrs["weights"])
    if backbone.weights == "none":
        weights["random_seed"] = RANDOM_WEIGHTS_SEED
    group = recipes.group_name(backbone, recipe_hash)
    stage = cache.stage(
        listing.name,
        group,
        plan_id(listing, recipe_hash, found, plan.compute, batch_size),
        n_records=len(plan.compute),
        arrays=_stage_specs(arrays),
        batch=batch_size,
    )
    if stage.done:
        log.info("resuming %s: %d of %d images done", group, stage.records_done, len(plan.compute))
    return ExtractJob(
        listing=listing,
        backbone=backbone,
        plan=plan,
        group=group,
        recipe_hash=recipe_hash,
        engine=extractor.engine if extractor else known.attrs.get("engine", "tensorflow"),
        weights=weights,
        stage=stage,
        started=start,
        n_resumed=stage.records_done - len(stage.skipped),
        arrays=arrays,
        extractor=extractor,
    )


def _known(
    cache: Cache, backbone: BackboneConfig, found: recipes.CachedGroup | None
) -> tuple[recipes.CachedGroup | None, BackboneConfig]:
    """A group ``backbone`` made (``found``, else in another data set), and the backbone
    with engine ``auto`` pinned to the engine that group was asked for: auto keeps the
    group it finds, whatever engine made it (``keras``, the default of earlier releases,
    included), so the recipe, the group and a resumed stage stay the same."""
    known = found or recipes.find_any_group(cache, backbone)
    if known and backbone.engine == "auto":
        backbone = backbone.replace(engine=known.attrs["backbone"].get("engine", "keras"))
    return known, backbone


def _open(
    cache: Cache, backbone: BackboneConfig, known: recipes.CachedGroup | None, batch_size: int
) -> tuple[Extractor, str, list[ArraySpec], dict[str, Any]]:
    """Build the backbone and its engine: ``(extractor, recipe hash, arrays, weights)``."""
    built = build_backbone(backbone)
    model_id = recipes.model_id(backbone, built.weights_sha256)
    # "auto" is resolved once, then kept: switching would recompute everything.
    engine = known.attrs.get("engine", "tensorflow") if known else backbone.engine
    extractor = open_extractor(built, engine, cache.location.engine_dir(), model_id, batch_size)
    recipe_hash = recipes.recipe_hash(backbone, built.weights_sha256, extractor.engine)
    weights = {"spec": backbone.weights, "file": built.weights_file}
    weights["sha256"] = built.weights_sha256
    if built.pooled_as:
        weights["pooled_as"] = built.pooled_as  # keras-hub: the family's own pooling
    return extractor, recipe_hash, array_specs(backbone, built.output_shapes), weights


def _cache_hit(
    listing: Listing, backbone: BackboneConfig, found: recipes.CachedGroup, seconds: float
) -> ExtractResult:
    attrs = found.attrs
    log.info(
        "cache hit: %s/%s (%d images), nothing to compute",
        listing.name,
        found.group,
        attrs["n_images"],
    )
    return ExtractResult(
        dataset=listing.name,
        backbone=backbone.name,
        group=found.group,
        cache_hit=True,
        n_images=attrs["n_images"],
        n_extracted=0,
        weights=backbone.weights,
        seconds=seconds,
        n_reused=attrs["n_images"],
        split_counts=attrs["split_counts"],
        skipped=attrs.get("skipped", []),
        content_hash=attrs.get("content_hash", ""),
        engine=attrs.get("engine", "tensorflow"),
    )
