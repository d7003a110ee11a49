"""Building a frozen backbone: the Keras model, its weights, and their identity.

This is the one place a backbone is built, for extraction, fine-tuning and
``predict`` alike, so the one place that seeds random weights (``weights = "none"``,
with :data:`featurecache.config.RANDOM_WEIGHTS_SEED`): every process that builds the
same configuration gets the same model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from featurecache.backbones.preprocessing import preprocess_fn
from featurecache.backbones.taps import outputs_model
from featurecache.config import RANDOM_WEIGHTS_SEED, BackboneConfig
from featurecache.config.hub import is_hub
from featurecache.deps import import_keras
from featurecache.errors import ConfigError
from featurecache.hashing import sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltBackbone:
    """A built feature extractor and the identity of the weights it loaded.

    ``model`` maps float32 images of shape ``(batch, size, size, 3)``, already passed
    through ``preprocess`` from 0-255 RGB, to features of shape ``(batch, feature_dim)``.
    ``weights_file`` is the file Keras loaded (``None`` for random weights) and
    ``weights_sha256`` its SHA-256 (hex). ``outputs_model`` is the same backbone with
    every output extraction stores (:func:`featurecache.backbones.taps.outputs_model`;
    ``model`` itself when there is only the pooled features).
    """

    config: BackboneConfig
    model: Any
    preprocess: Callable[[Any], Any]
    weights_file: str | None
    weights_sha256: str | None
    outputs_model: Any = None
    pooled_as: str | None = None  # keras-hub backbones: how the family pools

    @property
    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """One image's shape of each output (``config.outputs``), e.g.
        ``{"features": (1280,), "activations": (14, 14, 96)}``."""
        return {
            name: tuple(int(d) for d in tensor.shape[1:])
            for name, tensor in zip(self.config.outputs, self.outputs_model.outputs, strict=True)
        }


def build_backbone(config: BackboneConfig) -> BuiltBackbone:
    """Build the frozen ``include_top=False`` backbone with global pooling (a keras-hub
    backbone, ``hub:<preset>``, through :mod:`featurecache.backbones.hub`).

    ImageNet weights come through Keras's own ``get_file`` (downloaded once into
    ``$KERAS_HOME/models``, default ``~/.keras/models``); the file Keras used is recorded
    and hashed so that the cache knows exactly which weights made the features. Random
    weights (``weights = "none"``) are seeded with ``RANDOM_WEIGHTS_SEED`` first.

    Raises
    ------
    ConfigError
        If Keras rejects the arguments (for example an input size the weights do not
        support), the weights cannot be loaded, or a tap or ``finetune_from`` names no
        usable layer.
    """
    if is_hub(config.name):
        from featurecache.backbones.hub import build_hub

        parts = build_hub(config)
        return BuiltBackbone(
            config=config, outputs_model=outputs_model(parts["model"], config), **parts
        )
    keras = import_keras()
    weights: str | None = None if config.weights == "none" else config.weights
    if weights is None:
        log.warning(
            "backbone %s uses RANDOM weights (weights=none): for tests only", config.spec.name
        )
        keras.utils.set_random_seed(RANDOM_WEIGHTS_SEED)
    with recording_weight_downloads() as fetched:
        model = _application(keras, config, weights)
    model.trainable = False
    weights_file = config.weights if weights not in (None, "imagenet") else None
    if weights == "imagenet" and fetched:
        weights_file = fetched[-1]
    return BuiltBackbone(
        config=config,
        model=model,
        preprocess=preprocess_fn(config),
        weights_file=weights_file,
        weights_sha256=sha256_file(weights_file) if weights_file else None,
        outputs_model=outputs_model(model, config),
    )


def _application(keras: Any, config: BackboneConfig, weights: str | None) -> Any:
    """The ``keras.applications`` model of ``config``, headless, with global pooling and
    ``weights`` (None: random); Keras's refusals become ConfigError."""
    spec = config.spec
    builder = getattr(keras.applications, spec.keras_name)
    kwargs = dict(
        include_top=False,
        weights=weights,
        input_shape=(config.input_size, config.input_size, 3),
        pooling=config.pooling,
        **dict(config.args),
    )
    try:
        return builder(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"Keras cannot build {spec.keras_name} with {kwargs}: {exc}") from exc
    except Exception as exc:  # keras.utils.get_file raises a bare Exception offline
        raise ConfigError(
            f"could not load weights for {spec.keras_name}: {exc}. Offline? Set KERAS_HOME "
            "to a folder whose models/ holds Keras's weight files (see README)"
        ) from exc


@contextmanager
def recording_weight_downloads() -> Iterator[list[str]]:
    """Record the paths of the files Keras fetches while the block runs (the weights
    file a ``keras.applications`` builder loaded, downloaded or found in
    ``$KERAS_HOME/models``), in the list it yields.

    Keras 3 (3.15 when written) has no public way to ask which file an application
    loaded: the builders call ``keras.src.utils.file_utils.get_file`` (private), looked
    up at call time, so wrapping that attribute sees the exact file. This is the one
    place featurecache touches ``keras.src``; tests/backbones/test_build.py tests it.
    """
    from keras.src.utils import file_utils

    original = file_utils.get_file
    paths: list[str] = []

    def recording_get_file(*args: Any, **kwargs: Any) -> str:
        path = original(*args, **kwargs)
        paths.append(str(path))
        return path

    file_utils.get_file = recording_get_file
    try:
        yield paths
    finally:
        file_utils.get_file = original
