"""Registry of ``keras.applications`` backbones.

The registry is data: one :class:`BackboneSpec` per backbone, looked up by its
snake_case name (``mobilenet_v2``) or its Keras class name (``MobileNetV2``).
Nothing here imports TensorFlow at module level, so listing backbones is instant;
:func:`build_backbone` imports Keras only when a model is really built.

Sources of the numbers: input sizes, feature dimensions and the preprocessing of
each family are those of the Keras applications documentation
(https://keras.io/api/applications/) and were checked by building every model
(``tests/test_backbones.py``). Last-block layer names follow the Keras guide
"Transfer learning & fine-tuning" and the Keras blog recipe ("Building powerful
image classification models using very little data", VGG16 ``block5``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featurecache.errors import ConfigError, DependencyError, UnknownBackboneError

log = logging.getLogger(__name__)

POOLINGS = ("avg", "max")
ENGINES = ("tensorflow", "onnxruntime", "auto")
DTYPES = ("float32", "float16")


@dataclass(frozen=True, kw_only=True)
class BackboneSpec:
    """What featurecache knows about one ``keras.applications`` backbone.

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
        Regular expressions, matched with ``re.match`` against layer names, that
        select the backbone's last block (the layers fine-tuning unfreezes).
    embedded_preprocessing : bool
        True when the model rescales raw 0-255 pixels itself (EfficientNet,
        EfficientNetV2, ConvNeXt, MobileNetV3): its ``preprocess_input`` is the
        identity and the input must *not* be rescaled beforehand.
    alpha_rule : str or None
        How ``alpha`` changes ``feature_dim``: ``"linear"`` (MobileNet:
        ``1024 * alpha``), ``"v2"`` (MobileNetV2: 1280, or ``1280 * alpha`` above 1).
    default_args : mapping
        Extra keyword arguments passed to the builder unless overridden.
    """

    name: str
    keras_name: str
    module: str
    input_size: int
    feature_dim: int
    last_block: tuple[str, ...]
    embedded_preprocessing: bool = False
    alpha_rule: str | None = None
    default_args: Mapping[str, Any] = field(default_factory=dict)

    def last_block_layers(self, layer_names: list[str]) -> list[str]:
        """The names among ``layer_names`` that belong to the last block."""
        patterns = [re.compile(p) for p in self.last_block]
        return [n for n in layer_names if any(p.match(n) for p in patterns)]


def _spec(name: str, keras_name: str, module: str, size: int, dim: int, last: str, **kw: Any):
    return BackboneSpec(
        name=name,
        keras_name=keras_name,
        module=module,
        input_size=size,
        feature_dim=dim,
        last_block=tuple(last.split()),
        **kw,
    )


_EMBED = {"embedded_preprocessing": True}

_SPECS: tuple[BackboneSpec, ...] = (
    _spec("vgg16", "VGG16", "vgg16", 224, 512, "block5_"),
    _spec("vgg19", "VGG19", "vgg19", 224, 512, "block5_"),
    _spec("resnet50", "ResNet50", "resnet", 224, 2048, "conv5_block3_"),
    _spec("resnet101", "ResNet101", "resnet", 224, 2048, "conv5_block3_"),
    _spec("resnet152", "ResNet152", "resnet", 224, 2048, "conv5_block3_"),
    _spec("resnet50_v2", "ResNet50V2", "resnet_v2", 224, 2048, "conv5_block3_ post_"),
    _spec("resnet101_v2", "ResNet101V2", "resnet_v2", 224, 2048, "conv5_block3_ post_"),
    _spec("resnet152_v2", "ResNet152V2", "resnet_v2", 224, 2048, "conv5_block3_ post_"),
    _spec("inception_v3", "InceptionV3", "inception_v3", 299, 2048, "mixed9 mixed10"),
    _spec(
        "inception_resnet_v2",
        "InceptionResNetV2",
        "inception_resnet_v2",
        299,
        1536,
        "block8_10 conv_7b",
    ),
    _spec("xception", "Xception", "xception", 299, 2048, "block14_"),
    _spec(
        "mobilenet",
        "MobileNet",
        "mobilenet",
        224,
        1024,
        "conv_dw_13 conv_pw_13",
        alpha_rule="linear",
    ),
    _spec(
        "mobilenet_v2",
        "MobileNetV2",
        "mobilenet_v2",
        224,
        1280,
        "block_16_ Conv_1",
        alpha_rule="v2",
    ),
    _spec(
        "mobilenet_v3_small",
        "MobileNetV3Small",
        "mobilenet_v3",
        224,
        576,
        "expanded_conv_10_ conv_1",
        **_EMBED,
    ),
    _spec(
        "mobilenet_v3_large",
        "MobileNetV3Large",
        "mobilenet_v3",
        224,
        960,
        "expanded_conv_14_ conv_1",
        **_EMBED,
    ),
    _spec("densenet121", "DenseNet121", "densenet", 224, 1024, "conv5_block16_ bn"),
    _spec("densenet169", "DenseNet169", "densenet", 224, 1664, "conv5_block32_ bn"),
    _spec("densenet201", "DenseNet201", "densenet", 224, 1920, "conv5_block32_ bn"),
    _spec("nasnet_mobile", "NASNetMobile", "nasnet", 224, 1056, r".*_12$"),
    *(
        _spec(
            f"efficientnet_b{i}",
            f"EfficientNetB{i}",
            "efficientnet",
            size,
            dim,
            "block7 top_",
            **_EMBED,
        )
        for i, (size, dim) in enumerate(
            [
                (224, 1280),
                (240, 1280),
                (260, 1408),
                (300, 1536),
                (380, 1792),
                (456, 2048),
                (528, 2304),
                (600, 2560),
            ]
        )
    ),
    *(
        _spec(
            f"efficientnet_v2_{v.lower()}",
            f"EfficientNetV2{v}",
            "efficientnet_v2",
            size,
            dim,
            last,
            **_EMBED,
        )
        for v, size, dim, last in [
            ("B0", 224, 1280, "block6 top_"),
            ("B1", 240, 1280, "block6 top_"),
            ("B2", 260, 1408, "block6 top_"),
            ("B3", 300, 1536, "block6 top_"),
            ("S", 384, 1280, "block6 top_"),
        ]
    ),
    _spec(
        "convnext_tiny",
        "ConvNeXtTiny",
        "convnext",
        224,
        768,
        "convnext_tiny_stage_3 layer_normalization",
        **_EMBED,
    ),
    _spec(
        "convnext_small",
        "ConvNeXtSmall",
        "convnext",
        224,
        768,
        "convnext_small_stage_3 layer_normalization",
        **_EMBED,
    ),
)

REGISTRY: dict[str, BackboneSpec] = {s.name: s for s in _SPECS}
_ALIASES: dict[str, str] = {s.keras_name.lower(): s.name for s in _SPECS}


def _normalise(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip()).lower()


def get_spec(name: str) -> BackboneSpec:
    """Return the spec for ``name`` (snake_case or Keras class name, any case).

    Raises
    ------
    UnknownBackboneError
        If the name is not registered; the message lists the known names.
    """
    key = _normalise(name)
    if key in REGISTRY:
        return REGISTRY[key]
    if key in _ALIASES:
        return REGISTRY[_ALIASES[key]]
    if key.replace("_", "") in _ALIASES:
        return REGISTRY[_ALIASES[key.replace("_", "")]]
    raise UnknownBackboneError(
        f"unknown backbone {name!r}; run `featurecache backbones` to list them "
        f"(e.g. {', '.join(list(REGISTRY)[:6])}, ...)"
    )


@dataclass(frozen=True, kw_only=True)
class BackboneConfig:
    """A backbone as the user asked for it: name, weights, input size, pooling, extras.

    Attributes
    ----------
    name : str
        Registered name (normalised to snake_case by :meth:`create`).
    weights : str
        ``"imagenet"`` (downloaded and cached by Keras itself), ``"none"`` (random
        initialisation: for tests only), or a path to a Keras weights file.
    input_size : int
        Square input side in pixels; images are resized to it.
    pooling : {"avg", "max"}
        Global pooling applied to the last feature map.
    args : mapping
        Extra builder arguments such as ``alpha``.
    engine : {"tensorflow", "onnxruntime", "auto"}
        What runs the frozen backbone (see :mod:`featurecache.engines`).
    dtype : {"float32", "float16"}
        Storage type of the cached features (float16 halves the cache; features are
        read back as float32; ``benchmarks/storage.py`` measures the accuracy effect).
    """

    name: str
    weights: str = "imagenet"
    input_size: int
    pooling: str = "avg"
    args: Mapping[str, Any] = field(default_factory=dict)
    engine: str = "tensorflow"
    dtype: str = "float32"

    @classmethod
    def create(
        cls,
        name: str,
        *,
        weights: str = "imagenet",
        input_size: int | None = None,
        pooling: str = "avg",
        args: Mapping[str, Any] | None = None,
        engine: str = "tensorflow",
        dtype: str = "float32",
    ) -> BackboneConfig:
        """Validate and normalise; raise :class:`ConfigError` naming the bad field."""
        spec = get_spec(name)
        if engine not in ENGINES:
            raise ConfigError(f"engine must be one of {ENGINES}, got {engine!r}")
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        size = spec.input_size if input_size is None else input_size
        if not isinstance(size, int) or size < 32:
            raise ConfigError(f"input_size must be an integer >= 32 pixels, got {size!r}")
        weights = str(weights)
        if weights.lower() in ("none", "random", ""):
            weights = "none"
        elif weights.lower() == "imagenet":
            weights = "imagenet"
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise ConfigError(
                    f"weights file {weights!r} does not exist; give 'imagenet', 'none' "
                    "or the path of a Keras weights file"
                )
            weights = str(path.resolve())
        merged = {**spec.default_args, **(args or {})}
        return cls(
            name=spec.name,
            weights=weights,
            input_size=size,
            pooling=pooling,
            args=merged,
            engine=engine,
        )

    @property
    def spec(self) -> BackboneSpec:
        return REGISTRY[self.name]

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
        """Dotted name of the ``preprocess_input`` applied to 0-255 RGB pixels."""
        return f"keras.applications.{self.spec.module}.preprocess_input"

    def describe(self) -> dict[str, Any]:
        """The configuration as a JSON-serialisable dict (used in provenance)."""
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
        }

    def replace(self, **changes: Any) -> BackboneConfig:
        return dataclasses.replace(self, **changes)


def _make_divisible(value: float, divisor: int) -> int:
    """Keras MobileNetV2's channel rounding (``_make_divisible`` in keras.applications)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def import_keras():
    """Import Keras (with the TensorFlow backend), or explain how to install it."""
    try:
        import keras
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DependencyError(
            "TensorFlow / Keras is not installed: pip install 'featurecache[cpu]' "
            "(or 'featurecache[gpu]' for an NVIDIA GPU)"
        ) from exc
    return keras


def preprocess_fn(config: BackboneConfig) -> Callable[[Any], Any]:
    """Return the backbone family's own ``keras.applications.<module>.preprocess_input``."""
    import_keras()
    module = importlib.import_module(f"keras.applications.{config.spec.module}")
    return module.preprocess_input


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: How each family's ``preprocess_input`` maps 0-255 RGB pixels (keras.applications
#: ``imagenet_utils.preprocess_input`` modes): "tf" scales to [-1, 1]; "caffe" flips RGB
#: to BGR and subtracts the ImageNet channel means; "torch" scales to [0, 1] and
#: standardises with the ImageNet mean and std; "none" leaves pixels as they are (the
#: model rescales them inside).
PREPROCESS_MODES: dict[str, str] = {
    "vgg16": "caffe",
    "vgg19": "caffe",
    "resnet": "caffe",
    "resnet_v2": "tf",
    "inception_v3": "tf",
    "inception_resnet_v2": "tf",
    "xception": "tf",
    "mobilenet": "tf",
    "mobilenet_v2": "tf",
    "nasnet": "tf",
    "densenet": "torch",
    "mobilenet_v3": "none",
    "efficientnet": "none",
    "efficientnet_v2": "none",
    "convnext": "none",
}
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


def preprocessing_layers(config: BackboneConfig) -> list[Any]:
    """Keras layers equal to the family's ``preprocess_input``, for models saved whole.

    A ``Lambda`` around ``preprocess_input`` would not load without ``safe_mode=False``;
    these are standard, serialisable layers (numbers from ``keras.applications.
    imagenet_utils``). ``tests/test_backbones.py`` checks each against
    ``preprocess_input``.
    """
    keras = import_keras()
    mode = PREPROCESS_MODES[config.spec.module]
    if mode == "tf":
        return [keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess_tf")]
    if mode == "torch":
        return [
            keras.layers.Normalization(
                mean=[m * 255 for m in _TORCH_MEAN],
                variance=[(s * 255) ** 2 for s in _TORCH_STD],
                name="preprocess_torch",
            )
        ]
    if mode == "caffe":
        layer = keras.layers.Conv2D(3, 1, name="preprocess_caffe", trainable=False)
        layer.build((None, None, None, 3))
        flip = np.zeros((1, 1, 3, 3), np.float32)
        for out_channel in range(3):
            flip[0, 0, 2 - out_channel, out_channel] = 1.0  # RGB -> BGR
        layer.set_weights([flip, -np.asarray(_CAFFE_MEAN_BGR, np.float32)])
        return [layer]
    return []


@dataclass(frozen=True)
class BuiltBackbone:
    """A built feature extractor and the identity of the weights it loaded.

    ``model`` maps ``float32`` images of shape ``(batch, size, size, 3)``, already
    passed through ``preprocess`` from 0-255 RGB, to features of shape
    ``(batch, feature_dim)``.
    """

    config: BackboneConfig
    model: Any
    preprocess: Callable[[Any], Any]
    weights_file: str | None
    weights_sha256: str | None


def build_backbone(config: BackboneConfig) -> BuiltBackbone:
    """Build the frozen ``include_top=False`` backbone with global pooling.

    ImageNet weights come through Keras's own ``get_file`` (downloaded once into
    ``$KERAS_HOME/models``, default ``~/.keras/models``); the file Keras used is
    recorded and hashed so that the cache knows exactly which weights made the
    features.

    Raises
    ------
    ConfigError
        If Keras rejects the arguments (for example an input size the weights do
        not support), or the weights cannot be loaded.
    """
    keras = import_keras()
    spec = config.spec
    builder = getattr(keras.applications, spec.keras_name)
    weights: str | None = None if config.weights == "none" else config.weights
    if weights is None:
        log.warning("backbone %s uses RANDOM weights (weights=none): for tests only", spec.name)
    kwargs = dict(
        include_top=False,
        weights=weights,
        input_shape=(config.input_size, config.input_size, 3),
        pooling=config.pooling,
        **dict(config.args),
    )
    with _RecordKerasDownloads() as fetched:
        try:
            model = builder(**kwargs)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"Keras cannot build {spec.keras_name} with {kwargs}: {exc}") from exc
        except Exception as exc:  # keras.utils.get_file raises a bare Exception offline
            raise ConfigError(
                f"could not load weights for {spec.keras_name}: {exc}. Offline? Set KERAS_HOME "
                "to a folder whose models/ holds Keras's weight files (see README)"
            ) from exc
    model.trainable = False
    weights_file = config.weights if weights not in (None, "imagenet") else None
    if weights == "imagenet" and fetched:
        weights_file = fetched[-1]
    sha = sha256_file(weights_file) if weights_file else None
    return BuiltBackbone(
        config=config,
        model=model,
        preprocess=preprocess_fn(config),
        weights_file=weights_file,
        weights_sha256=sha,
    )


class _RecordKerasDownloads:
    """Context manager recording the paths ``keras.utils.get_file`` returns.

    ``keras.applications`` fetch weights through ``keras.src.utils.file_utils.get_file``
    looked up at call time, so wrapping that attribute sees the exact file used.
    """

    def __enter__(self) -> list[str]:
        from keras.src.utils import file_utils

        self._module = file_utils
        self._original = file_utils.get_file
        self.paths: list[str] = []
        original = self._original

        def recording_get_file(*args: Any, **kwargs: Any) -> str:
            path = original(*args, **kwargs)
            self.paths.append(str(path))
            return path

        file_utils.get_file = recording_get_file
        return self.paths

    def __exit__(self, *exc: object) -> None:
        self._module.get_file = self._original
