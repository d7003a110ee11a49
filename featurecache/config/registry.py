"""The backbone registry: what featurecache knows about each ``keras.applications`` backbone.

The registry is data: one :class:`BackboneSpec` per backbone, written as keywords and
looked up by its snake_case name (``mobilenet_v2``) or its Keras class name
(``MobileNetV2``). It sits with the configuration because every
:class:`~featurecache.config.BackboneConfig` is checked and completed against it (name,
default input size, feature dimension); building the models is
:mod:`featurecache.backbones`'s job. Nothing here imports TensorFlow.

Sources of the numbers: input sizes, feature dimensions and the preprocessing of each
family are those of the Keras applications documentation
(https://keras.io/api/applications/) and were checked by building every model
(``tests/backbones/test_build.py``). Last-block layer names follow the Keras guide
"Transfer learning & fine-tuning" and the Keras blog recipe ("Building powerful image
classification models using very little data", VGG16 ``block5``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from featurecache.errors import UnknownBackboneError

#: How a family's ``preprocess_input`` maps 0-255 RGB pixels (keras.applications
#: ``imagenet_utils.preprocess_input`` modes): "tf" scales to [-1, 1]; "caffe" flips RGB to
#: BGR and subtracts the ImageNet channel means; "torch" scales to [0, 1] and standardises
#: with the ImageNet mean and std; "none" leaves the pixels as they are (the model
#: rescales them inside).
PREPROCESS_MODES = ("caffe", "tf", "torch", "none")


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
        }

    def last_block_layers(self, layer_names: list[str]) -> list[str]:
        """The names among ``layer_names`` that belong to the last block."""
        patterns = [re.compile(p) for p in self.last_block]
        return [n for n in layer_names if any(p.match(n) for p in patterns)]


_EFFICIENTNET_SIZES = [  # (input size, feature dim) of B0 ... B7
    (224, 1280),
    (240, 1280),
    (260, 1408),
    (300, 1536),
    (380, 1792),
    (456, 2048),
    (528, 2304),
    (600, 2560),
]
_EFFICIENTNET_V2_SIZES = {"B0": (224, 1280), "B1": (240, 1280), "B2": (260, 1408)}
_EFFICIENTNET_V2_SIZES |= {"B3": (300, 1536), "S": (384, 1280)}

_SPECS: tuple[BackboneSpec, ...] = (
    *(
        BackboneSpec(
            name=f"vgg{depth}",
            keras_name=f"VGG{depth}",
            module=f"vgg{depth}",
            input_size=224,
            feature_dim=512,
            last_block=("block5_",),
            preprocess="caffe",
        )
        for depth in (16, 19)
    ),
    *(
        BackboneSpec(
            name=f"resnet{depth}",
            keras_name=f"ResNet{depth}",
            module="resnet",
            input_size=224,
            feature_dim=2048,
            last_block=("conv5_block3_",),
            preprocess="caffe",
        )
        for depth in (50, 101, 152)
    ),
    *(
        BackboneSpec(
            name=f"resnet{depth}_v2",
            keras_name=f"ResNet{depth}V2",
            module="resnet_v2",
            input_size=224,
            feature_dim=2048,
            last_block=("conv5_block3_", "post_"),
            preprocess="tf",
        )
        for depth in (50, 101, 152)
    ),
    BackboneSpec(
        name="inception_v3",
        keras_name="InceptionV3",
        module="inception_v3",
        input_size=299,
        feature_dim=2048,
        last_block=("mixed9", "mixed10"),
        preprocess="tf",
    ),
    BackboneSpec(
        name="inception_resnet_v2",
        keras_name="InceptionResNetV2",
        module="inception_resnet_v2",
        input_size=299,
        feature_dim=1536,
        last_block=("block8_10", "conv_7b"),
        preprocess="tf",
    ),
    BackboneSpec(
        name="xception",
        keras_name="Xception",
        module="xception",
        input_size=299,
        feature_dim=2048,
        last_block=("block14_",),
        preprocess="tf",
    ),
    BackboneSpec(
        name="mobilenet",
        keras_name="MobileNet",
        module="mobilenet",
        input_size=224,
        feature_dim=1024,
        last_block=("conv_dw_13", "conv_pw_13"),
        preprocess="tf",
        alpha_rule="linear",
    ),
    BackboneSpec(
        name="mobilenet_v2",
        keras_name="MobileNetV2",
        module="mobilenet_v2",
        input_size=224,
        feature_dim=1280,
        last_block=("block_16_", "Conv_1"),
        preprocess="tf",
        alpha_rule="v2",
    ),
    *(
        BackboneSpec(
            name=f"mobilenet_v3_{size.lower()}",
            keras_name=f"MobileNetV3{size}",
            module="mobilenet_v3",
            input_size=224,
            feature_dim=dim,
            last_block=(f"expanded_conv_{last}_", "conv_1"),
            preprocess="none",
        )
        for size, dim, last in (("Small", 576, 10), ("Large", 960, 14))
    ),
    *(
        BackboneSpec(
            name=f"densenet{depth}",
            keras_name=f"DenseNet{depth}",
            module="densenet",
            input_size=224,
            feature_dim=dim,
            last_block=(f"conv5_block{blocks}_", "bn"),
            preprocess="torch",
        )
        for depth, dim, blocks in ((121, 1024, 16), (169, 1664, 32), (201, 1920, 32))
    ),
    BackboneSpec(
        name="nasnet_mobile",
        keras_name="NASNetMobile",
        module="nasnet",
        input_size=224,
        feature_dim=1056,
        last_block=(r".*_12$",),
        preprocess="tf",
    ),
    *(
        BackboneSpec(
            name=f"efficientnet_b{i}",
            keras_name=f"EfficientNetB{i}",
            module="efficientnet",
            input_size=size,
            feature_dim=dim,
            last_block=("block7", "top_"),
            preprocess="none",
        )
        for i, (size, dim) in enumerate(_EFFICIENTNET_SIZES)
    ),
    *(
        BackboneSpec(
            name=f"efficientnet_v2_{variant.lower()}",
            keras_name=f"EfficientNetV2{variant}",
            module="efficientnet_v2",
            input_size=size,
            feature_dim=dim,
            last_block=("block6", "top_"),
            preprocess="none",
        )
        for variant, (size, dim) in _EFFICIENTNET_V2_SIZES.items()
    ),
    *(
        BackboneSpec(
            name=f"convnext_{size}",
            keras_name=f"ConvNeXt{size.title()}",
            module="convnext",
            input_size=224,
            feature_dim=768,
            last_block=(f"convnext_{size}_stage_3", "layer_normalization"),
            preprocess="none",
        )
        for size in ("tiny", "small")
    ),
)

REGISTRY: dict[str, BackboneSpec] = {s.name: s for s in _SPECS}
_ALIASES: dict[str, str] = {s.keras_name.lower(): s.name for s in _SPECS}


def get_spec(name: str) -> BackboneSpec:
    """The spec for ``name`` (snake_case or Keras class name, any case or separator).

    Raises
    ------
    UnknownBackboneError
        If the name is not registered; the message lists some known names.
    """
    key = re.sub(r"[\s\-]+", "_", name.strip()).lower()
    for candidate in (key, _ALIASES.get(key), _ALIASES.get(key.replace("_", ""))):
        if candidate in REGISTRY:
            return REGISTRY[candidate]
    raise UnknownBackboneError(
        f"unknown backbone {name!r}; run `featurecache backbones` to list them "
        f"(e.g. {', '.join(list(REGISTRY)[:6])}, ...)"
    )
