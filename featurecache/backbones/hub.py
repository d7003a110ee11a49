"""Building a keras-hub backbone (``hub:<preset>``) as a frozen feature extractor.

``keras_hub.models.Backbone.from_preset`` builds the model and
``keras_hub.layers.ImageConverter.from_preset`` its preprocessing, both from the
preset (a local folder, or a name keras-hub downloads from Kaggle / Hugging Face at
first use). The pooled features are taken as each family defines them (keras-hub's own
task models do the same):

- a backbone with ``get_vision_embeddings`` (CLIP, SigLIP): the image embedding
  (CLIP: the projected CLS token, ``clip_backbone.py``; SigLIP: the attention-pooled
  output, ``siglip_backbone.py``), not L2-normalised;
- a token sequence ``(batch, tokens, dim)`` (DINOv2, ViT): the CLS token, ``[:, 0]``,
  after the backbone's final layer norm (``ViTImageClassifier(pooling="token")``);
- a feature map ``(batch, h, w, channels)`` (ResNet, EfficientNet...): global average
  pooling (``ImageClassifier``'s ``GlobalAveragePooling2D``), or max with ``pooling="max"``.

The preset's files (``config.json``, the image converter, the weights) are hashed into
one SHA-256 (:func:`featurecache.hashing.sha256_files` over
:func:`featurecache.config.hub.preset_files`), which the recipe uses as it uses a weights
file's.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from featurecache.config import RANDOM_WEIGHTS_SEED, BackboneConfig
from featurecache.config.hub import preset_files, preset_of
from featurecache.deps import import_keras
from featurecache.errors import ConfigError, DependencyError
from featurecache.hashing import sha256_files
from featurecache.quiet import quiet_import

log = logging.getLogger(__name__)


def import_keras_hub() -> Any:
    """keras_hub, or a one-line install hint.

    Raises
    ------
    DependencyError
        If keras-hub is not installed.
    """
    import_keras()
    try:
        with quiet_import():
            import keras_hub
    except ImportError as exc:
        raise DependencyError(
            f"hub: backbones need keras-hub ({exc}): pip install 'featurecache[hub]' (or, "
            "beside tensorflow-cpu: pip install 'featurecache[hub-deps]' && pip install "
            "--no-deps keras-hub)"
        ) from exc
    return keras_hub


def preset_folder(preset: str) -> Path:
    """The local folder holding the preset's files: ``preset`` itself for a local
    preset folder, else keras-hub's download of the named preset."""
    if Path(preset, "config.json").is_file():
        return Path(preset)
    return downloaded_preset_folder(preset)


def downloaded_preset_folder(preset: str) -> Path:
    """The folder keras-hub downloads a named preset's files to (downloading them once).

    keras-hub (0.32 when written) has no public function that says where a preset's
    files are; ``keras_hub.src.utils.preset_utils.get_file`` (private) is what its own
    ``from_preset`` calls. This is the one place featurecache touches ``keras_hub.src``;
    tests/backbones/test_hub.py tests it on a local preset.
    """
    from keras_hub.src.utils.preset_utils import get_file

    return Path(os.path.dirname(get_file(preset, "config.json")))


def _load(keras_hub: Any, preset: str, config: BackboneConfig) -> tuple[Any, Any]:
    """The preset's backbone and image converter at ``config.input_size``."""
    size = (config.input_size, config.input_size)
    load_weights = config.weights != "none"
    if not load_weights:
        log.warning("backbone %s uses RANDOM weights (weights=none): for tests only", preset)
        import_keras().utils.set_random_seed(RANDOM_WEIGHTS_SEED)
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
        kwargs: dict[str, Any] = {"load_weights": load_weights}
        if tuple(converter.image_size or size) != size:
            kwargs["image_shape"] = (*size, 3)  # e.g. DINOv2 interpolates its positions
            converter.image_size = size
        if "input_shape" in _preset_config(preset):
            # CNN families (EfficientNet) take it: static shapes, so a cached activation
            # map has a known (h, w, c); their default is (None, None, 3)
            kwargs["input_shape"] = (*size, 3)
        backbone = keras_hub.models.Backbone.from_preset(preset, **kwargs)
    except (ValueError, TypeError, OSError, KeyError) as exc:
        raise ConfigError(f"keras-hub cannot build preset {preset!r}: {exc}") from exc
    except Exception as exc:  # kagglehub / requests errors offline
        raise ConfigError(
            f"could not fetch keras-hub preset {preset!r}: {exc}. Offline? Use a local "
            "preset folder (hub:/path/to/preset)"
        ) from exc
    return backbone, converter


def _preset_config(preset: str) -> dict[str, Any]:
    """The backbone's constructor arguments in a local preset's ``config.json``; ``{}``
    for a named preset (not read before it is downloaded)."""
    path = Path(preset, "config.json")
    return json.loads(path.read_text()).get("config", {}) if path.is_file() else {}


def pooled_model(backbone: Any, config: BackboneConfig) -> tuple[Any, str]:
    """A Keras model: preprocessed images ``(batch, size, size, 3)`` float32 -> pooled
    features ``(batch, feature_dim)``, and how it pools (``image_embedding``,
    ``cls_token``, ``avg``, ``max``, ``pooled``).

    Raises
    ------
    ConfigError
        If ``pooling = "max"`` is asked of a model that does not output a feature map.
    """
    keras = import_keras()
    images = keras.Input((config.input_size, config.input_size, 3), name="images")
    if hasattr(backbone, "get_vision_embeddings"):
        return keras.Model(images, backbone.get_vision_embeddings(images)), "image_embedding"
    out = backbone({"images": images} if isinstance(backbone.input, dict) else images)
    rank = len(out.shape)
    if config.pooling == "max" and rank != 4:
        raise ConfigError(f"{config.name}: pooling 'max' needs a CNN (a feature map)")
    if rank == 4:
        fmt = getattr(backbone, "data_format", None) or "channels_last"
        pool = keras.layers.GlobalMaxPooling2D if config.pooling == "max" else None
        layer = (pool or keras.layers.GlobalAveragePooling2D)(data_format=fmt)
        if not isinstance(backbone.input, dict):
            # flat: the backbone's own layers, reachable by name for taps, the cache
            # point and fine-tuning (nested, they hide inside one layer); same numbers
            return keras.Model(backbone.input, layer(backbone.output)), "max" if pool else "avg"
        return keras.Model(images, layer(out)), "max" if pool else "avg"
    if rank == 3:
        return keras.Model(images, out[:, 0, :]), "cls_token"
    return keras.Model(images, out), "pooled"


def converter_layers(preset: str) -> list[Any]:
    """The preset's image converter as standard Keras layers, for models saved whole
    (fine-tuned): its ``Rescaling`` (``scale``, ``offset``); the resize is the model's
    own. ``[]`` when the converter has neither.

    Raises
    ------
    DependencyError
        If keras-hub is not installed.
    """
    keras, keras_hub = import_keras(), import_keras_hub()
    converter = keras_hub.layers.ImageConverter.from_preset(preset)
    scale, offset = getattr(converter, "scale", None), getattr(converter, "offset", None)
    if scale is None and offset is None:
        return []
    return [
        keras.layers.Rescaling(
            1.0 if scale is None else scale,
            offset=0.0 if offset is None else offset,
            name="preprocess_hub",
        )
    ]


def build_hub(config: BackboneConfig) -> dict[str, Any]:
    """The parts of a :class:`~featurecache.backbones.build.BuiltBackbone` for a
    keras-hub backbone: ``model``, ``preprocess``, ``weights_file`` (the preset
    folder), ``weights_sha256`` (of :func:`~featurecache.config.hub.preset_files`) and
    ``pooled_as``.

    Raises
    ------
    DependencyError
        If keras-hub is not installed.
    ConfigError
        If the preset cannot be fetched or built.
    """
    keras, keras_hub = import_keras(), import_keras_hub()
    preset = preset_of(config.name)
    backbone, converter = _load(keras_hub, preset, config)
    model, pooled_as = pooled_model(backbone, config)
    model.trainable = False
    folder = preset_folder(preset)

    def preprocess(batch: Any) -> np.ndarray:
        """0-255 RGB float32 ``(b, size, size, 3)`` -> the converter's output (its resize
        is a no-op: the images are already at its ``image_size``)."""
        converted = converter(np.asarray(batch, dtype=np.float32))
        return np.asarray(keras.ops.convert_to_numpy(converted), dtype=np.float32)

    return {
        "model": model,
        "preprocess": preprocess,
        "weights_file": str(folder),
        "weights_sha256": sha256_files(
            folder, preset_files(folder, with_weights=config.weights != "none")
        ),
        "pooled_as": f"{type(backbone).__name__}: {pooled_as}",
    }
