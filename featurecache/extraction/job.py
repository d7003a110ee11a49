"""Planning one backbone's extraction over one data set: what is known, what to compute,
and the engine that will compute it.

:func:`plan_backbone` finds the backbone's cache group and the rows the cache already
holds (:func:`~featurecache.extraction.plan.make_plan`, row by row), and returns either a
cache hit (an :class:`ExtractResult` at once) or an :class:`ExtractJob`: the plan, its
staging area and, when images must go through the backbone, the backbone built on its
engine (:class:`~featurecache.extraction.engines.Extractor`). Running the job's batches is
the loop's business (:mod:`featurecache.extraction.loop`), committing them
:mod:`featurecache.extraction.commit`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from featurecache.backbones import build_backbone
from featurecache.cache import Cache
from featurecache.cache import recipe as recipes
from featurecache.cache.arrays import ArraySpec
from featurecache.cache.staging import ComputeStage
from featurecache.cache.writing import CacheWriter
from featurecache.config import RANDOM_WEIGHTS_SEED, BackboneConfig
from featurecache.datasets import Listing
from featurecache.extraction.engines import Extractor, open_extractor
from featurecache.extraction.guard import calibration_images, guard
from featurecache.extraction.onnx import onnx_runner
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
    engine_settings: dict[str, Any] = field(default_factory=dict)
    n_computed: int = 0
    compute_seconds: float = 0.0
    profile: Profile | None = None

    @property
    def batch_size(self) -> int:
        return self.stage.batch

    def rows(self, batch: int) -> list[int]:
        """Record indices of batch number ``batch``."""
        return self.plan.compute[batch * self.batch_size : (batch + 1) * self.batch_size]

    def missing(self) -> list[int]:
        """Numbers of the batches still missing from the stage, in order."""
        return self.stage.missing()

    def built_extractor(self) -> Extractor:
        """The backbone on its engine, for computing the missing batches.

        Raises
        ------
        RuntimeError
            If no backbone was built (an internal error: the plan had nothing to compute).
        """
        if self.extractor is None:
            raise RuntimeError("internal error: images to compute but no backbone built")
        return self.extractor


@dataclass(frozen=True)
class Making:
    """How a backbone's features are made: the recipe hash, the generation's arrays, the
    weights' provenance, the engine as recorded, and the backbone on that engine when
    images must go through it (None when every row is reused)."""

    recipe_hash: str
    arrays: list[ArraySpec]
    weights: dict[str, Any]
    engine: str
    extractor: Extractor | None = None
    engine_settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def recorded(cls, attrs: dict[str, Any]) -> Making:
        """As a committed generation's attributes record it (no backbone built)."""
        return cls(
            attrs["recipe_hash"],
            ArraySpec.from_attrs(attrs),
            dict(attrs["weights"]),
            recipes.engine_of(attrs),
            engine_settings=dict(attrs.get("engine_settings", {})),
        )


def array_specs(backbone: BackboneConfig, shapes: dict[str, tuple[int, ...]]) -> list[ArraySpec]:
    """The generation's per-image arrays: each stored output with its shape; activation
    maps in float16, pooled outputs in ``backbone.dtype``."""
    return [
        ArraySpec(
            name,
            shapes[backbone.output_of(name)],
            "float16" if backbone.output_of(name) == "activations" else backbone.dtype,
        )
        for name in backbone.stored()
    ]


def _stage_specs(arrays: list[ArraySpec]) -> list[ArraySpec]:
    """Staging keeps pooled outputs in float32 (cast once, at commit), maps in float16."""
    return [
        ArraySpec(s.name, s.shape, "float16" if len(s.shape) == 3 else "float32") for s in arrays
    ]


def plan_backbone(
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
    here = (listing.name, found.group) if found else ("", "")
    if here in damaged and damaged[here] is None:
        found = None  # unreadable: computed again, or found by content key elsewhere
    elif found and found.attrs["dataset"]["fingerprint"] == listing.fingerprint:
        if not rewrite and here not in damaged:
            return _cache_hit(listing, backbone, found, time.perf_counter() - start)
    known, backbone = _known(cache, backbone, found)
    plan = make_plan(cache, listing, found, known.attrs["recipe_hash"] if known else None, damaged)
    if plan.compute or known is None:
        made = _open(cache, backbone, known, batch_size, listing, plan.compute)
    else:  # every image is in the cache already: no backbone to build
        made = Making.recorded(known.attrs)
    if backbone.weights == "none":
        made.weights["random_seed"] = RANDOM_WEIGHTS_SEED
    group = recipes.group_name(backbone, made.recipe_hash)
    stage = CacheWriter(cache).stage(
        listing.name,
        group,
        plan_id(listing, made.recipe_hash, found, plan.compute, batch_size),
        n_records=len(plan.compute),
        arrays=_stage_specs(made.arrays),
        batch=batch_size,
    )
    if stage.done:
        log.info("resuming %s: %d of %d images done", group, stage.records_done, len(plan.compute))
    return ExtractJob(
        listing=listing,
        backbone=backbone,
        plan=plan,
        group=group,
        recipe_hash=made.recipe_hash,
        engine=made.engine,
        weights=made.weights,
        stage=stage,
        started=start,
        n_resumed=stage.records_done - len(stage.skipped),
        arrays=made.arrays,
        extractor=made.extractor,
        engine_settings=made.engine_settings,
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
    cache: Cache,
    backbone: BackboneConfig,
    known: recipes.CachedGroup | None,
    batch_size: int,
    listing: Listing,
    compute: Sequence[int],
) -> Making:
    """Build the backbone and open its engine; a lower precision is calibrated (int8) on
    ``listing`` and checked against fp32 on a sample of ``compute`` (the record indices
    to compute) before anything is computed.

    Raises
    ------
    PrecisionError
        If the lower precision's features differ from fp32's beyond the backbone's guard.
    """
    built = build_backbone(backbone)
    model_id = recipes.model_id(backbone, built.weights_sha256)
    # "auto" is resolved once, then kept: switching would recompute everything.
    engine = recipes.requested_engine(recipes.engine_of(known.attrs)) if known else backbone.engine
    folder = cache.location.engine_dir()
    extractor = open_extractor(
        built,
        engine,
        folder,
        model_id,
        batch_size,
        dataset=listing.name,
        calibration=calibration_images(listing, built),
    )
    if backbone.precision != "fp32" and compute:
        reference = onnx_runner(built, folder, model_id)  # fp32, on the same export
        check = guard(listing, compute, built, extractor.runner, reference, batch_size)
        extractor.settings["precision_check"] = check
    recipe_hash = recipes.recipe_hash(backbone, built.weights_sha256, extractor.engine)
    weights = {"spec": backbone.weights, "file": built.weights_file}
    weights["sha256"] = built.weights_sha256
    if built.pooled_as:
        weights["pooled_as"] = built.pooled_as  # keras-hub: the family's own pooling
    arrays = array_specs(backbone, built.output_shapes)
    return Making(recipe_hash, arrays, weights, extractor.engine, extractor, extractor.settings)


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
        engine=recipes.engine_of(attrs),
    )
