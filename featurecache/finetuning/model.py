"""Building the fine-tuning model: raw images -> backbone -> the trained dense head.

The recipe is the Keras guide's ("Transfer learning & fine-tuning",
https://keras.io/guides/transfer_learning/) and the Keras blog's ("Building powerful
image classification models using very little data"): start from a head that has
converged on frozen features, unfreeze only the backbone's last block, keep
BatchNormalization in inference mode (the backbone is called with
``training=False``, and BN layers stay frozen), recompile after changing
``trainable``, and train with SGD at a very low learning rate (1e-4, momentum 0.9).

The model is saved whole: it takes raw RGB pixels, 0-255, of any size, and holds the
resizing, the augmentation (active only while training), the family's preprocessing
as standard layers, the backbone and the head.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from featurecache.backbones import BuiltBackbone, preprocessing_layers
from featurecache.config import Augmentation
from featurecache.deps import import_keras

log = logging.getLogger(__name__)


@contextmanager
def mixed_precision(on: bool) -> Iterator[None]:
    """Keras's global dtype policy set to ``mixed_float16`` inside the block when ``on``
    (float16 compute, float32 variables), restored after.

    The policy is global in Keras, and layers keep the policy they were built with
    (``compile`` then adds loss scaling for it): so it is set for the build only.
    """
    if not on:
        yield
        return
    keras = import_keras()
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def augmentation_layers(augment: Augmentation, seed: int = 0) -> list[Any]:
    """Keras random-augmentation layers for ``augment`` (identity at inference)."""
    keras = import_keras()
    layers: list[Any] = []
    if augment.flip:
        layers.append(keras.layers.RandomFlip(augment.flip, seed=seed, name="augment_flip"))
    if augment.rotation:
        layers.append(
            keras.layers.RandomRotation(augment.rotation, seed=seed, name="augment_rotation")
        )
    if augment.zoom:
        layers.append(keras.layers.RandomZoom(augment.zoom, seed=seed, name="augment_zoom"))
    if augment.translation:
        layers.append(
            keras.layers.RandomTranslation(
                augment.translation, augment.translation, seed=seed, name="augment_translation"
            )
        )
    return layers


def build_model(built: BuiltBackbone, head: Any, augment: Augmentation, seed: int = 0) -> Any:
    """Raw pixels ``(batch, h, w, 3)`` float32 0-255 -> class probabilities ``(batch, k)``.

    ``head`` is the dense head's Keras model (features -> probabilities), reused with
    its trained weights.
    """
    keras = import_keras()
    size = built.config.input_size
    inputs = keras.Input(shape=(None, None, 3), name="image")
    x = keras.layers.Resizing(size, size, interpolation="bilinear", name="resize")(inputs)
    for layer in augmentation_layers(augment, seed) + preprocessing_layers(built.config):
        x = layer(x)
    features = built.model(x, training=False)  # BatchNormalization stays in inference mode
    outputs = head(features)
    return keras.Model(inputs, outputs, name=f"{built.config.short_name}_finetuned")


def unfreeze(built: BuiltBackbone, extra: Sequence[str] = ()) -> list[str]:
    """Make the backbone's last block (and layers matching ``extra``) trainable.

    BatchNormalization layers stay frozen. Returns the names of the layers made
    trainable. The model must be compiled again afterwards.
    """
    keras = import_keras()
    backbone = built.model
    patterns = [re.compile(p) for p in (*built.config.spec.last_block, *extra)]
    backbone.trainable = True
    opened = []
    for layer in backbone.layers:
        match = any(p.match(layer.name) for p in patterns)
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = match and not is_bn
        freeze_batch_norm(layer)
        if layer.trainable and layer.weights:
            opened.append(layer.name)
    if not patterns:
        raise ValueError(
            f"featurecache knows no last block for {built.config.name}: name the layers to "
            "train (regular expressions over its layer names, backbone.summary())"
        )
    if not opened:
        raise ValueError(f"no trainable layer matches {[p.pattern for p in patterns]}")
    log.info(
        "unfroze %d layers of %s: %s ... %s", len(opened), backbone.name, opened[0], opened[-1]
    )
    return opened


def nested_layers(layer: Any) -> Iterator[Any]:
    """``layer`` and every Keras layer it holds as an attribute, at any depth (a
    keras-hub ``MBConvBlock`` holds its convolutions and BatchNormalizations so)."""
    keras = import_keras()
    seen: set[int] = set()
    stack = [layer]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for value in vars(current).values():
            for item in value if isinstance(value, list | tuple) else (value,):
                if isinstance(item, keras.layers.Layer):
                    stack.append(item)


def freeze_batch_norm(layer: Any) -> None:
    """Freeze every BatchNormalization inside ``layer``, however deep.

    A frozen BatchNormalization runs in inference mode (Keras 3). ``training=False`` on
    the backbone's call does not reach layers nested in a block whose ``call`` takes no
    ``training`` argument (keras-hub's ``MBConvBlock``): there, unfrozen, they would
    normalise with batch statistics and update their moving averages while training.
    """
    keras = import_keras()
    for sub in nested_layers(layer):
        if isinstance(sub, keras.layers.BatchNormalization):
            sub.trainable = False


def compile_for_finetuning(
    model: Any,
    learning_rate: float,
    momentum: float,
    optimizer: str = "sgd",
    *,
    warmup_steps: int = 0,
    total_steps: int = 0,
) -> None:
    """SGD with momentum (the Keras blog recipe) or Adam (``momentum`` unused), sparse
    categorical cross-entropy, top-1 accuracy.

    With ``total_steps``, the learning rate rises linearly from 0 to ``learning_rate``
    over ``warmup_steps``, then follows a cosine decay to 0 at ``total_steps``
    (``keras.optimizers.schedules.CosineDecay``; warm-up as in Goyal et al. 2017,
    arXiv 1706.02677, cosine as in Loshchilov & Hutter 2017, arXiv 1608.03983): the
    first full-size steps would otherwise undo much of what the pretrained layers and
    the converged head start with.
    """
    keras = import_keras()
    rate: Any = learning_rate
    if total_steps > 0:
        rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0,
            decay_steps=max(1, total_steps - warmup_steps),
            warmup_target=learning_rate,
            warmup_steps=warmup_steps,
        )
    if optimizer == "adam":
        opt = keras.optimizers.Adam(learning_rate=rate)
    else:
        opt = keras.optimizers.SGD(learning_rate=rate, momentum=momentum)
    model.compile(
        optimizer=opt,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
