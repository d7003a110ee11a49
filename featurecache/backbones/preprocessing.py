"""Each backbone family's own preprocessing: ``preprocess_input``, and the same as layers.

The registry says what each family's ``preprocess_input`` does
(:data:`featurecache.config.registry.PREPROCESS_MODES`): extraction calls the family's
own function; fine-tuned models, which are saved whole, carry the same arithmetic as
standard Keras layers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from featurecache.config import BackboneConfig
from featurecache.deps import import_keras

#: ImageNet statistics used by ``keras.applications.imagenet_utils.preprocess_input``:
#: the "caffe" mode's channel means (BGR, 0-255) and the "torch" mode's mean and std (RGB, 0-1).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)


def preprocess_fn(config: BackboneConfig) -> Callable[[Any], Any]:
    """The family's own ``keras.applications.<module>.preprocess_input``.

    It maps float32 RGB pixels, 0-255, of shape ``(batch, size, size, 3)`` to the
    backbone's input (the identity for families that rescale inside the model).
    """
    import_keras()
    module = importlib.import_module(f"keras.applications.{config.spec.module}")
    return module.preprocess_input


def preprocessing_layers(config: BackboneConfig) -> list[Any]:
    """Keras layers equal to the family's ``preprocess_input``, for models saved whole.

    A ``Lambda`` around ``preprocess_input`` would not load without ``safe_mode=False``;
    these are standard, serialisable layers (numbers from ``keras.applications.
    imagenet_utils``). ``tests/backbones/test_build.py`` checks each against
    ``preprocess_input``.
    """
    keras = import_keras()
    mode = config.spec.preprocess
    if mode == "tf":
        return [keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess_tf")]
    if mode == "torch":
        return [
            keras.layers.Normalization(
                mean=[m * 255 for m in TORCH_MEAN],
                variance=[(s * 255) ** 2 for s in TORCH_STD],
                name="preprocess_torch",
            )
        ]
    if mode == "caffe":
        layer = keras.layers.Conv2D(3, 1, name="preprocess_caffe", trainable=False)
        layer.build((None, None, None, 3))
        flip = np.zeros((1, 1, 3, 3), np.float32)
        for out_channel in range(3):
            flip[0, 0, 2 - out_channel, out_channel] = 1.0  # RGB -> BGR
        layer.set_weights([flip, -np.asarray(CAFFE_MEAN_BGR, np.float32)])
        return [layer]
    if mode == "hub":  # the preset's image converter
        from featurecache.backbones.hub import converter_layers
        from featurecache.config.hub import preset_of

        return converter_layers(preset_of(config.name))
    return []
