"""Reading a backbone at several depths, and cutting it in two at a cache point.

Extraction runs one Keras model with several outputs (:func:`outputs_model`): the
pooled bottleneck features, the pooled output of each tap, and the activation map of
``finetune_from``, all from the same forward pass. Fine-tuning from the cache trains
:func:`tail_model`: the backbone's layers after the cache point, as a model from the
cached activation map to the pooled features. The tail shares its layers (and so its
weights) with the backbone, so the backbone itself holds the trained tail afterwards.
"""

from __future__ import annotations

from typing import Any

from featurecache.config import BackboneConfig
from featurecache.deps import import_keras
from featurecache.errors import ConfigError


def _layer(model: Any, name: str, key: str) -> Any:
    try:
        layer = model.get_layer(name)
    except ValueError:
        names = [layer.name for layer in model.layers]
        raise ConfigError(
            f"{model.name} has no layer {name!r}; its last layers are {', '.join(names[-6:])} "
            "(the model's summary() lists them all)",
            key=key,
        ) from None
    if len(layer.output.shape) != 4:
        raise ConfigError(
            f"layer {name!r} of {model.name} gives shape {tuple(layer.output.shape)}, not an "
            "activation map (batch, h, w, channels)",
            key=key,
        )
    return layer


def outputs_model(model: Any, config: BackboneConfig) -> Any:
    """The backbone with every output ``config.outputs`` names, in that order.

    ``model`` maps preprocessed images ``(batch, size, size, 3)`` to pooled features
    ``(batch, feature_dim)``; the result maps them to ``[features, pooled taps...,
    activations]``: each tap pooled like the final features (``config.pooling``) to
    ``(batch, channels)``, the activation map of ``finetune_from`` as it is,
    ``(batch, h, w, channels)``. Without taps or ``finetune_from`` it is ``model``.

    Raises
    ------
    ConfigError
        If a named layer does not exist or is not an activation map, or
        ``finetune_from`` is not a point every later layer depends on through it alone.
    """
    if config.outputs == ("features",):
        return model
    keras = import_keras()
    # "auto" is a keras-hub CNN's own pooling: global average, as its features
    pool = {
        "avg": keras.layers.GlobalAveragePooling2D,
        "auto": keras.layers.GlobalAveragePooling2D,
        "max": keras.layers.GlobalMaxPooling2D,
    }
    outputs = [model.output]
    for tap in config.taps:
        layer = _layer(model, tap, "taps")
        outputs.append(pool[config.pooling](name=f"pooled_{tap}")(layer.output))
    if config.finetune_from:
        tail_model(model, config.finetune_from)  # refuse a layer that does not cut the model
        outputs.append(_layer(model, config.finetune_from, "finetune_from").output)
    return keras.Model(model.input, outputs, name=f"{model.name}_outputs")


def tail_model(model: Any, layer_name: str) -> Any:
    """The layers of ``model`` after ``layer_name``: its activation map
    ``(batch, h, w, c)`` -> pooled features ``(batch, feature_dim)``, sharing ``model``'s
    layers and weights.

    Raises
    ------
    ConfigError
        If the layer does not exist, or later layers also read layers before it (a
        residual branch that skips it, NASNet's two-input cells): then no model can be
        trained from its activations alone.
    """
    keras = import_keras()
    layer = _layer(model, layer_name, "finetune_from")
    try:
        return keras.Model(layer.output, model.output, name=f"{model.name}_after_{layer_name}")
    except ValueError as exc:
        raise ConfigError(
            f"cannot cache {model.name} at {layer_name!r}: later layers also read earlier "
            f"ones, so the layers after it cannot run on its activations alone ({exc})",
            key="finetune_from",
        ) from None


def prefix_model(model: Any, layer_name: str) -> Any:
    """The layers of ``model`` up to ``layer_name``: preprocessed images -> its
    activation map ``(batch, h, w, c)`` (sharing ``model``'s layers)."""
    keras = import_keras()
    layer = _layer(model, layer_name, "finetune_from")
    return keras.Model(model.input, layer.output, name=f"{model.name}_to_{layer_name}")
