"""Backbone configuration: a registered backbone, its weights, input size and pooling."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featurecache.config import constraints as rules
from featurecache.config.hub import is_hub, preset_of
from featurecache.config.registry import REGISTRY, BackboneSpec, get_spec
from featurecache.errors import ConfigError

#: Environment variable naming the engine of every backbone whose configuration names
#: none (a pipeline file's ``engine``, ``--engine`` and ``engine=`` win over it).
ENGINE_ENV = "FEATURECACHE_ENGINE"


def default_engine() -> str:
    """``$FEATURECACHE_ENGINE``, else ``"auto"``: ONNX Runtime where it is installed and
    faster on this machine, else the Keras model (see
    :mod:`featurecache.extraction.engines`)."""
    return os.environ.get(ENGINE_ENV) or "auto"


#: Seed of ``weights = "none"`` (random initialisation), so random backbones are reproducible.
RANDOM_WEIGHTS_SEED = 0


def _weights(value: str) -> str:
    """``"imagenet"``, ``"none"`` or the absolute path of an existing weights file."""
    if value.lower() in ("none", "random", ""):
        return "none"
    if value.lower() == "imagenet":
        return "imagenet"
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"weights file {value!r} does not exist; give 'imagenet', 'none' or the path "
            "of a Keras weights file",
            key="weights",
        )
    return str(path.resolve())


@dataclass(frozen=True, kw_only=True)
class BackboneConfig:
    """A backbone as the user asked for it, completed from the registry.

    Attributes
    ----------
    name : str
        Registered name; Keras class names and other spellings are normalised to the
        snake_case name (``MobileNetV2`` -> ``mobilenet_v2``).
    weights : str
        ``"imagenet"`` (downloaded and cached by Keras itself), ``"none"`` (random
        initialisation seeded with :data:`RANDOM_WEIGHTS_SEED`: for tests only), or the
        path of a Keras weights file (stored absolute). A keras-hub backbone
        (``hub:<preset>``, :mod:`featurecache.config.hub`) has ``"preset"`` (its own) or
        ``"none"``.
    input_size : int
        Square input side in pixels, >= 32; default: the backbone's own.
    pooling : {"avg", "max", "auto"}
        Global pooling applied to the last feature map; ``"auto"`` (keras-hub backbones'
        default) is the family's own pooled output (CLS token, image embedding, average).
    args : mapping
        Extra ``keras.applications`` arguments such as ``alpha``, over the registry's
        defaults.
    engine : {"auto", "keras", "onnxruntime"}
        What runs the frozen backbone (see :mod:`featurecache.extraction.engines`):
        ``auto`` (the default, or ``$FEATURECACHE_ENGINE``: :func:`default_engine`) times
        ONNX Runtime against the Keras model on a few batches when ONNX Runtime is
        installed, keeps the faster and records which; ``keras`` runs the Keras model on
        the current Keras backend (``KERAS_BACKEND``). ``tensorflow``, its name before
        backends were configurable, is read as ``keras``
        (:data:`~featurecache.config.constraints.ENGINE_ALIASES`).
    dtype : {"float32", "float16"}
        Storage type of the cached features (float16 halves the cache; features are
        read back as float32; ``benchmarks/storage.py`` measures the accuracy effect).
    finetune_from : str or None
        Layer whose activation map is cached too, float16 ``(n_images, h, w, c)``, so that
        ``finetune --from-cache`` can train the layers after it without running the rest;
        ``true`` in a pipeline file means the registry's ``cache_point`` for the family.
    taps : tuple of str
        Intermediate layers whose pooled outputs are cached beside the final features,
        for heads that concatenate several depths (Head2Toe, arXiv 2201.03529).
    views : tuple of str
        ``("identity",)``, or ``("identity", "flip")`` to cache each image's horizontal
        flip as well (features, taps and activations).
    precision : {"fp32", "bf16", "int8"}
        The backbone's arithmetic. ``bf16`` runs on OpenVINO (engine ``openvino``; ``auto``
        becomes it), ``int8`` on a model quantised with ONNX Runtime and calibrated on the
        data set's own training images (engine ``onnxruntime``, or ``openvino``). Opt-in:
        ``auto`` never lowers the precision. A recipe change: its own cache group.
    decoder : {"pillow", "simplejpeg"}
        What decodes JPEGs (:func:`featurecache.images.decode_bytes`); a recipe change.
    guard_median, guard_min : float
        The accuracy guard of a lower precision
        (:mod:`featurecache.extraction.guard`): the median and the smallest cosine
        similarity between its features and fp32's over a sample of the data set must
        reach these (defaults 0.99 and 0.90), or the extraction stops before it commits.
        Not part of the recipe.

    Raises
    ------
    ConfigError
        Naming the field at fault (:class:`~featurecache.errors.UnknownBackboneError`
        for an unknown name).
    """

    name: str
    weights: str = "imagenet"
    # None asks for the backbone's own size; __post_init__ always sets an int
    input_size: int = None  # type: ignore[assignment]
    pooling: str = "avg"
    args: Mapping[str, Any] = field(default_factory=dict)
    engine: str = field(default_factory=default_engine)
    dtype: str = "float32"
    finetune_from: str | None = None
    taps: tuple[str, ...] = ()
    views: tuple[str, ...] = ("identity",)
    precision: str = "fp32"
    decoder: str = "pillow"
    guard_median: float = 0.99
    guard_min: float = 0.90

    def __post_init__(self) -> None:
        rules.check(self, {"name": rules.BACKBONE["name"]})
        spec = get_spec(self.name)
        size = spec.input_size if self.input_size is None else self.input_size
        engine = rules.ENGINE_ALIASES.get(self.engine, self.engine)
        rules.complete(self, name=spec.name, input_size=size, engine=engine)
        if is_hub(spec.name):
            _check_hub(self)
        elif self.pooling == "auto":
            rules.complete(self, pooling="avg")  # a CNN's own pooling: global average
        rules.check(self, rules.BACKBONE)
        _check_precision(self)
        rules.complete(
            self,
            weights=self.weights if is_hub(spec.name) else _weights(self.weights),
            args={**spec.default_args, **self.args},
            finetune_from=_cache_point(self.finetune_from, spec),
            taps=tuple(self.taps),
            views=_views(self.views),
        )

    @classmethod
    def from_description(cls, described: Mapping[str, Any]) -> BackboneConfig:
        """The configuration :meth:`describe` recorded (in the cache or a head folder)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in described.items() if k in names})

    @property
    def spec(self) -> BackboneSpec:
        return REGISTRY[self.name] if self.name in REGISTRY else get_spec(self.name)

    @property
    def short_name(self) -> str:
        """The name without a path: ``mobilenet_v2``; a ``hub:`` preset folder as
        ``hub-<folder name>`` (for group, file and Keras model names)."""
        if is_hub(self.name):
            return "hub-" + self.name[len("hub:") :].rstrip("/").rsplit("/", 1)[-1]
        return self.name

    @property
    def feature_dim(self) -> int:
        """Length of the pooled feature vector for these arguments."""
        spec = self.spec
        alpha = float(self.args.get("alpha", 1.0))
        if spec.alpha_rule == "linear":
            return int(spec.feature_dim * alpha)
        if spec.alpha_rule == "v2" and alpha > 1.0:
            return _make_divisible(spec.feature_dim * alpha, 8)
        return spec.feature_dim

    @property
    def preprocessing(self) -> str:
        """Dotted name of the ``preprocess_input`` applied to 0-255 RGB pixels (for a
        keras-hub backbone: the preset's image converter)."""
        if is_hub(self.name):
            return f"keras_hub.layers.ImageConverter.from_preset({preset_of(self.name)!r})"
        return f"keras.applications.{self.spec.module}.preprocess_input"

    @property
    def outputs(self) -> tuple[str, ...]:
        """Names of the arrays one image gives, per view: ``features``, then
        ``pooled.<layer>`` per tap, then ``activations`` when ``finetune_from`` is set."""
        names = ("features", *(f"pooled.{t}" for t in self.taps))
        return (*names, "activations") if self.finetune_from else names

    def stored(self) -> tuple[str, ...]:
        """Names of the cached arrays: each output per view (``<output>.flip``)."""
        return tuple(
            name if view == "identity" else f"{name}.{view}"
            for view in self.views
            for name in self.outputs
        )

    @staticmethod
    def output_of(stored: str) -> str:
        """The output a stored array holds: ``features.flip`` -> ``features`` (the inverse
        of :meth:`stored`'s naming)."""
        return stored.removesuffix(".flip")

    def describe(self) -> dict[str, Any]:
        """The configuration as a JSON-serialisable dict (the provenance; hashed into the
        request hash, so its keys and values must not change for the same request: the
        taps, views, activation map, a lower precision and another decoder appear only
        when asked for; the guard's thresholds never)."""
        extra: dict[str, Any] = {}
        if self.finetune_from:
            extra["finetune_from"] = self.finetune_from
        if self.taps:
            extra["taps"] = list(self.taps)
        if self.views != ("identity",):
            extra["views"] = list(self.views)
        if self.precision != "fp32":
            extra["precision"] = self.precision
        if self.decoder != "pillow":
            extra["decoder"] = self.decoder
        return {
            "name": self.name,
            "keras_name": self.spec.keras_name,
            "weights": self.weights,
            "input_size": self.input_size,
            "pooling": self.pooling,
            "args": dict(self.args),
            "preprocessing": self.preprocessing,
            "embedded_preprocessing": self.spec.embedded_preprocessing,
            "engine": self.engine,
            "dtype": self.dtype,
            **extra,
        }

    def replace(self, **changes: Any) -> BackboneConfig:
        return dataclasses.replace(self, **changes)


def _check_hub(config: BackboneConfig) -> None:
    """A keras-hub backbone's settings (:mod:`featurecache.config.hub`), normalised:
    weights ``"preset"`` (its own) or ``"none"``, pooling ``"auto"`` or ``"max"``; no extra
    arguments (taps and ``finetune_from`` are checked against the model when it is
    built: CNN families only). Every engine runs it (the ONNX export of
    keras-hub's Functional models goes through tf2onnx like any Keras model's)."""
    weights = {"imagenet": "preset", "preset": "preset", "none": "none", "random": "none"}
    if str(config.weights).lower() not in weights:
        raise ConfigError(
            f"{config.name} takes its weights from the preset: weights = 'preset' (the "
            "default) or 'none', not a weights file",
            key="weights",
        )
    if config.args:
        raise ConfigError(f"{config.name}: keras-hub backbones take no args", key="args")
    rules.complete(
        config,
        weights=weights[str(config.weights).lower()],
        pooling="auto" if config.pooling == "avg" else config.pooling,
    )


def _check_precision(config: BackboneConfig) -> None:
    """A lower precision's engine: ``auto`` (or the machine's default engine from
    :data:`ENGINE_ENV`) becomes the precision's first engine
    (:data:`~featurecache.config.constraints.PRECISION_ENGINES`); another named engine is
    an error."""
    engines = rules.PRECISION_ENGINES.get(config.precision)
    if engines is None or config.engine in engines:
        return
    if config.engine == "auto" or config.engine == os.environ.get(ENGINE_ENV):
        rules.complete(config, engine=engines[0])
        return
    raise ConfigError(
        f"precision {config.precision!r} runs on engine {' or '.join(map(repr, engines))}, "
        f"not {config.engine!r}; drop engine (auto picks it) or set precision = 'fp32'",
        key="engine",
    )


def _cache_point(value: str | bool | None, spec: BackboneSpec) -> str | None:
    """``finetune_from``: ``None``/``false`` off, ``true``/``"default"`` the registry's
    cache point, or a layer name (checked against the model when it is built)."""
    if value is None or value is False or value == "":
        return None
    if value is True or value == "default":
        if spec.cache_point is None and spec.preprocess == "hub":
            raise ConfigError(
                f"{spec.name}: featurecache knows no default cache point for this keras-hub "
                "family; name a layer whose output alone feeds the rest (backbone.summary())",
                key="finetune_from",
            )
        if spec.cache_point is None:
            raise ConfigError(
                f"{spec.name} has no default cache point (its cells each read the two cells "
                "before them, so no single layer feeds the last blocks); fine-tune it from "
                "images, or name a layer",
                key="finetune_from",
            )
        return spec.cache_point
    return str(value)


def _views(value: Any) -> tuple[str, ...]:
    views = tuple(value)
    if not views or views[0] != "identity" or len(set(views)) != len(views):
        raise ConfigError(
            f"views must start with 'identity' and not repeat, got {list(views)}", key="views"
        )
    unknown = [v for v in views if v not in rules.VIEWS]
    if unknown:
        raise ConfigError(
            f"unknown view {unknown[0]!r}; views are {list(rules.VIEWS)}", key="views"
        )
    return views


def _make_divisible(value: float, divisor: int) -> int:
    """Keras MobileNetV2's channel rounding (``_make_divisible`` in keras.applications)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new
