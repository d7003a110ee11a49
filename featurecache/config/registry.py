"""The backbone registry: what featurecache knows about each ``keras.applications`` backbone.

The registry is data: one table per backbone in ``backbones.toml`` beside this module
(one keyword per field, with the sources of the numbers), read into a
:class:`BackboneSpec` and looked up by its snake_case name (``mobilenet_v2``) or its
Keras class name (``MobileNetV2``). It sits with the configuration because every
:class:`~featurecache.config.BackboneConfig` is checked and completed against it (name,
default input size, feature dimension); building the models is
:mod:`featurecache.backbones`'s job. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from featurecache.config.hub import PREFIX, is_hub, preset_family, preset_input_size, preset_of
from featurecache.errors import UnknownBackboneError

#: How a family's ``preprocess_input`` maps 0-255 RGB pixels (keras.applications
#: ``imagenet_utils.preprocess_input`` modes): "tf" scales to [-1, 1]; "caffe" flips RGB to
#: BGR and subtracts the ImageNet channel means; "torch" scales to [0, 1] and standardises
#: with the ImageNet mean and std; "none" leaves the pixels as they are (the model
#: rescales them inside).
PREPROCESS_MODES = ("caffe", "tf", "torch", "none", "hub")


@dataclass(frozen=True, kw_only=True)
class BackboneSpec:
    """One registered backbone.

    Attributes
    ----------
    name : str
        snake_case name, e.g. ``"mobilenet_v2"``.
    keras_name : str
        Class name in ``keras.applications``, e.g. ``"MobileNetV2"``.
    module : str
        ``keras.applications`` submodule whose ``preprocess_input`` this backbone uses.
    input_size : int
        Default square input side, in pixels.
    feature_dim : int
        Length of the pooled bottleneck feature vector with the default arguments.
    last_block : tuple of str
        Regular expressions, matched with ``re.match`` against layer names, that select
        the backbone's last block (the layers fine-tuning unfreezes).
    preprocess : {"caffe", "tf", "torch", "none"}
        What ``preprocess_input`` does (:data:`PREPROCESS_MODES`).
    alpha_rule : {"linear", "v2"} or None
        How ``alpha`` changes ``feature_dim``: ``"linear"`` (MobileNet: ``1024 * alpha``),
        ``"v2"`` (MobileNetV2: 1280, or ``1280 * alpha`` above 1).
    default_args : mapping
        Extra keyword arguments passed to the builder unless overridden.
    cache_point : str or None
        Default layer whose activation map is cached for fine-tuning from the cache
        (``finetune_from = true``): the input of the last few blocks. ``None`` where no
        single layer separates them from the rest (NASNet).
    """

    name: str
    keras_name: str
    module: str
    input_size: int
    feature_dim: int
    last_block: tuple[str, ...]
    preprocess: str
    alpha_rule: str | None = None
    default_args: Mapping[str, Any] = field(default_factory=dict)
    cache_point: str | None = None

    @property
    def embedded_preprocessing(self) -> bool:
        """True when the model rescales raw 0-255 pixels itself (EfficientNet, EfficientNetV2,
        ConvNeXt, MobileNetV3): ``preprocess_input`` is then the identity and the input must
        *not* be rescaled beforehand."""
        return self.preprocess == "none"

    def describe(self) -> dict[str, Any]:
        """The spec as ``featurecache backbones --json`` lists it."""
        return {
            "name": self.name,
            "keras_name": self.keras_name,
            "input_size": self.input_size,
            "feature_dim": self.feature_dim,
            "preprocess_input": f"keras.applications.{self.module}",
            "embedded_preprocessing": self.embedded_preprocessing,
            "last_block": list(self.last_block),
            "cache_point": self.cache_point,
        }

    def last_block_layers(self, layer_names: list[str]) -> list[str]:
        """The names among ``layer_names`` that belong to the last block."""
        patterns = [re.compile(p) for p in self.last_block]
        return [n for n in layer_names if any(p.match(n) for p in patterns)]


def _load(name: str = "backbones.toml") -> dict[str, BackboneSpec]:
    """The specs in ``backbones.toml`` beside this module, by name."""
    table = tomllib.loads(resources.files(__package__).joinpath(name).read_text("utf-8"))
    return {
        key: BackboneSpec(name=key, **{**row, "last_block": tuple(row["last_block"])})
        for key, row in table.items()
    }


REGISTRY: dict[str, BackboneSpec] = _load()
_ALIASES: dict[str, str] = {s.keras_name.lower(): s.name for s in REGISTRY.values()}


def get_spec(name: str) -> BackboneSpec:
    """The spec for ``name`` (snake_case or Keras class name, any case or separator), or
    for a keras-hub backbone ``hub:<preset>`` (:mod:`featurecache.config.hub`).

    Raises
    ------
    UnknownBackboneError
        If the name is not registered; the message lists some known names.
    """
    if is_hub(name):
        preset = preset_of(name)
        family = preset_family(preset)
        return BackboneSpec(
            name=f"{PREFIX}{preset}",
            keras_name="keras_hub.models.Backbone",
            module="keras_hub",
            input_size=preset_input_size(preset),
            feature_dim=0,  # known once built
            last_block=tuple(family.get("last_block", ())),
            cache_point=family.get("cache_point"),
            preprocess="hub",
        )
    key = re.sub(r"[\s\-]+", "_", name.strip()).lower()
    for candidate in (key, _ALIASES.get(key), _ALIASES.get(key.replace("_", ""))):
        if candidate in REGISTRY:
            return REGISTRY[candidate]
    raise UnknownBackboneError(
        f"unknown backbone {name!r}; run `featurecache backbones` to list them "
        f"(e.g. {', '.join(list(REGISTRY)[:6])}, ...)"
    )
