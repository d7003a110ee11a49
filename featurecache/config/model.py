"""The configuration: frozen, keyword-only dataclasses.

A pipeline declares data sets x backbones x heads (:mod:`~featurecache.config.dataset`,
:mod:`~featurecache.config.backbone`, and the rest here). Each dataclass checks and completes
itself when it is created (its table in :mod:`featurecache.config.constraints`), so the
same object means the same thing whether it came from ``pipelines/*.toml``
(:mod:`featurecache.config.load`), from command-line options or from Python, and no
setting can be accepted and then dropped: everything a dataclass is given is a field.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featurecache.config import constraints as rules
from featurecache.config.backbone import BackboneConfig
from featurecache.config.dataset import DatasetConfig
from featurecache.errors import ConfigError

CACHE_ENV = "FEATURECACHE_CACHE"
DEFAULT_CACHE = "cache"
DEFAULT_OUTPUT = "runs"


def is_url(value: str | Path) -> bool:
    """Whether ``value`` names an fsspec URL (``scheme://...``) rather than a folder."""
    return "://" in str(value) and not str(value).startswith("file://")


def cache_path(value: str | Path | None) -> Path | str:
    """The cache: ``value``, else ``$FEATURECACHE_CACHE``, else ``./cache``.

    A folder becomes a :class:`~pathlib.Path`; a URL (``s3://bucket/prefix``,
    ``memory://name``) stays a string (see :mod:`featurecache.cache.storage`).
    """
    if value is None:
        value = os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    if is_url(value):
        return str(value)
    return Path(value).expanduser()


@dataclass(frozen=True, kw_only=True)
class HeadConfig:
    """A head: a name for its output folder (default: its kind), a kind, its parameters.

    ``kind`` is ``dense`` (the Keras dense head), a registered scikit-learn name
    (``logistic_regression``, ``linear_svm``, ``knn``, ``random_forest``) or the import
    path of any scikit-learn classifier (``sklearn.ensemble.ExtraTreesClassifier``).

    ``search`` maps parameter names to candidate values (``{C = [0.01, 0.1, 1]}``): the
    head is then tuned by a grid search with ``cv``-fold stratified cross-validation on
    the training split only (top-1 accuracy), and refitted on the whole training split
    with the best values. ``search_samples`` (0: all) bounds the images the search uses
    (a stratified sample of the training split), for large data sets; the refit still
    uses all of them.

    ``taps`` names pooled intermediate layers (the backbone's ``taps``) whose features
    are concatenated after the final ones, as in Head2Toe (arXiv 2201.03529). ``views``
    (default true) uses the flipped views when the cache holds them: the flipped
    training rows are added as augmentation, and predictions are averaged over the
    views at evaluation.
    """

    name: str = ""
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)
    search: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    cv: int = 5
    search_samples: int = 0
    taps: tuple[str, ...] = ()
    views: bool = True

    def __post_init__(self) -> None:
        if not self.name and isinstance(self.kind, str):
            rules.complete(self, name=self.kind)
        rules.check(self, rules.HEAD)
        rules.complete(
            self, search={k: tuple(v) for k, v in self.search.items()}, taps=tuple(self.taps)
        )


@dataclass(frozen=True, kw_only=True)
class Reference:
    """A published figure to compare with, shown beside ours by ``featurecache report``.

    ``value`` is a top-1 accuracy (a fraction) on ``split`` of data set ``dataset``;
    ``model`` says what produced it; ``comparable`` is false when the data or the
    backbone differ from ours, and ``note`` then says how.
    """

    dataset: str
    source: str
    model: str
    value: float
    split: str = "test"
    comparable: bool = True
    note: str = ""

    def __post_init__(self) -> None:
        rules.check(self, rules.REFERENCE)
        rules.complete(self, value=float(self.value))


@dataclass(frozen=True, kw_only=True)
class Augmentation:
    """Random augmentation applied while fine-tuning (Keras preprocessing layers).

    ``flip``: ``"horizontal"``, ``"vertical"``, ``"horizontal_and_vertical"`` or ``""``;
    ``rotation``: fraction of a full turn (0.05 = +/- 18 degrees); ``zoom`` and
    ``translation``: fraction of the image side. All 0 / ``""`` (:meth:`off`) disables it.
    """

    flip: str = "horizontal"
    rotation: float = 0.05
    zoom: float = 0.1
    translation: float = 0.1

    def __post_init__(self) -> None:
        rules.check(self, rules.AUGMENTATION)

    @classmethod
    def off(cls) -> Augmentation:
        return cls(flip="", rotation=0.0, zoom=0.0, translation=0.0)


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """How ``featurecache finetune`` trains (the Keras blog recipe by default).

    ``head`` names the trained dense head to start from; ``unfreeze`` adds layer-name
    patterns (regular expressions) to the backbone's registered last block; ``max_steps``
    bounds the batches per epoch (0: the whole training split); ``learning_rate`` and
    ``momentum`` are SGD's (``optimizer = "adam"``: Adam's learning rate, momentum
    unused). ``augment`` is an :class:`Augmentation`; ``true``, ``false`` or a table of
    its fields are accepted too.

    ``source = "cache"`` trains the layers after the backbone's ``finetune_from`` and
    the head from the cached activation maps instead of images (``augment`` then does
    not apply; the cached flipped views, if any, are the augmentation).
    """

    head: str = "dense"
    epochs: int = 10
    max_steps: int = 0
    batch_size: int = 32
    learning_rate: float = 1e-4
    momentum: float = 0.9
    patience: int = 3
    unfreeze: tuple[str, ...] = ()
    augment: Augmentation = field(default_factory=Augmentation)
    seed: int = 0
    source: str = "images"
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        rules.check(self, rules.FINETUNE)
        rules.complete(self, unfreeze=tuple(self.unfreeze), augment=_augmentation(self.augment))


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """How ``featurecache audit`` reads the cache (a pipeline's ``[audit]`` table).

    ``threshold`` is the cosine similarity of L2-normalised features at or above which
    two images are near-duplicates: 0.90 was chosen on duplicates planted in
    clothing_small with MobileNetV2 features (the middle of 0.88-0.92, where recall and
    precision were both >= 0.95; ``benchmarks/audit.py``, ``docs/audit.md``); another
    backbone's features may want another;
    ``neighbours`` the nearest neighbours looked at per image (duplicates and the
    outlier score); ``cv`` the stratified folds of the out-of-sample probabilities that
    label issues are found from; ``exact_at_most`` the most images searched exactly
    (beyond, an approximate faiss index); ``map`` the 2-D map's method, drawn from at
    most ``map_points`` images; ``thumbnails`` the most images shown per finding;
    ``outliers`` the fraction of images reported as outliers; ``seed`` fixes the folds,
    the map and the samples.
    """

    threshold: float = 0.90
    neighbours: int = 10
    cv: int = 4
    exact_at_most: int = 200_000
    map: str = "auto"
    map_points: int = 5000
    thumbnails: int = 24
    outliers: float = 0.005
    seed: int = 0

    def __post_init__(self) -> None:
        rules.check(self, rules.AUDIT)


def _augmentation(value: Any) -> Augmentation:
    if isinstance(value, Augmentation):
        return value
    if value is True:
        return Augmentation()
    if value is False:
        return Augmentation.off()
    if isinstance(value, Mapping):
        return rules.nested(Augmentation, value, "augment")
    raise ConfigError(f"augment must be true, false or a table, got {value!r}", key="augment")


def _check_head_names(heads: tuple[HeadConfig, ...]) -> None:
    """Refuse two heads of one name: each head writes the folder its name names, so the
    second would overwrite the first.

    Raises
    ------
    ConfigError
        Naming the name, both tables and the fix; ``where`` is the second table.
    """
    first: dict[str, int] = {}
    for i, head in enumerate(heads):
        if head.name in first:
            raise ConfigError(
                f"heads[{first[head.name]}] and heads[{i}] are both named {head.name!r} and "
                f'would write one folder; give each [[heads]] table its own name = "..."',
                key="name",
                where=f"heads[{i}]",
            )
        first[head.name] = i


def _check_head_taps(heads: tuple[HeadConfig, ...], backbones: tuple[BackboneConfig, ...]) -> None:
    """Refuse a head whose taps no backbone caches. A head with taps trains on the
    backbones that cache all of them (others are skipped with a log line:
    :func:`featurecache.heads.train.train_heads`); a head without taps on every backbone.

    Raises
    ------
    ConfigError
        Naming the head, the tap and the fix; ``where`` is the head's table.
    """
    for i, head in enumerate(heads):
        if head.taps and not any(set(head.taps) <= set(b.taps) for b in backbones):
            lacking = (t for t in head.taps if all(t not in b.taps for b in backbones))
            missing = next(lacking, head.taps[0])
            raise ConfigError(
                f"taps: no backbone caches all of {list(head.taps)} ({missing!r} is in none); "
                "add them to a backbone's taps, or drop them here",
                key="taps",
            ).within(f"heads[{i}]")


@dataclass(frozen=True, kw_only=True)
class Pipeline:
    """Data sets x backbones x heads, and where results go.

    ``cache`` is a folder or an fsspec URL (:func:`cache_path`); ``output`` the runs
    folder that heads are written under (:class:`featurecache.runs.RunLayout`);
    ``batch_size`` the images per backbone batch during extraction; ``audit`` the
    ``[audit]`` table (``None`` when the file has none: ``refresh`` then runs no audit);
    ``source`` the pipeline file, if any.
    """

    name: str
    datasets: tuple[DatasetConfig, ...]
    backbones: tuple[BackboneConfig, ...]
    heads: tuple[HeadConfig, ...] = (HeadConfig(kind="logistic_regression"),)
    cache: Path | str = field(default_factory=lambda: cache_path(None))
    output: Path = Path(DEFAULT_OUTPUT)
    batch_size: int = 32
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    audit: AuditConfig | None = None
    references: tuple[Reference, ...] = ()
    description: str = ""
    source: Path | None = None

    def __post_init__(self) -> None:
        rules.check(self, rules.PIPELINE)
        rules.complete(
            self,
            datasets=tuple(self.datasets),
            backbones=tuple(self.backbones),
            heads=tuple(self.heads),
            references=tuple(self.references),
            cache=cache_path(self.cache),
            output=Path(self.output),
        )
        for key in ("datasets", "backbones"):
            if not getattr(self, key):
                raise ConfigError(f"the pipeline needs at least one [[{key}]] table", key=key)
        _check_head_names(self.heads)
        _check_head_taps(self.heads, self.backbones)
        names = [d.name for d in self.datasets]
        for i, ref in enumerate(self.references):
            if ref.dataset not in names:
                raise ConfigError(
                    f"dataset {ref.dataset!r} is not a data set of this pipeline "
                    f"({', '.join(sorted(names))})",
                    key="dataset",
                ).within(f"references[{i}]")

    def with_overrides(
        self,
        *,
        batch_size: int | None = None,
        engine: str | None = None,
        dtype: str | None = None,
        precision: str | None = None,
        decoder: str | None = None,
    ) -> Pipeline:
        """This pipeline with the given settings replaced (``None``: kept), every backbone
        included; what the command line's ``--batch-size``, ``--engine``, ``--dtype``,
        ``--precision`` and ``--decoder`` do."""
        given = {"engine": engine, "dtype": dtype, "precision": precision, "decoder": decoder}
        changes = {k: v for k, v in given.items() if v is not None}
        return dataclasses.replace(
            self,
            batch_size=self.batch_size if batch_size is None else batch_size,
            backbones=tuple(b.replace(**changes) for b in self.backbones),
        )

    def with_finetune(self, **changes: Any) -> Pipeline:
        """This pipeline with ``[finetune]`` settings replaced; what ``featurecache
        finetune``'s options do: ``None`` keeps a setting, ``augment=False`` turns the
        augmentation off and ``augment=True`` keeps the pipeline's."""
        given = {k: v for k, v in changes.items() if v is not None}
        if given.get("augment") is True:
            del given["augment"]
        return dataclasses.replace(self, finetune=dataclasses.replace(self.finetune, **given))
