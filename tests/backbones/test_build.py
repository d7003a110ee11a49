import re
import sys
from pathlib import Path

import numpy as np
import pytest

from featurecache.backbones import build_backbone
from featurecache.config import REGISTRY, BackboneConfig, get_spec
from featurecache.errors import ConfigError, UnknownBackboneError

FAMILIES = {
    "vgg16",
    "vgg19",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnet50_v2",
    "resnet101_v2",
    "resnet152_v2",
    "inception_v3",
    "inception_resnet_v2",
    "xception",
    "mobilenet",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "densenet121",
    "densenet169",
    "densenet201",
    "nasnet_mobile",
    *(f"efficientnet_b{i}" for i in range(8)),
    "efficientnet_v2_b0",
    "efficientnet_v2_b1",
    "efficientnet_v2_b2",
    "efficientnet_v2_b3",
    "efficientnet_v2_s",
    "convnext_tiny",
    "convnext_small",
}
# Built in every test run: one per preprocessing family and the write-ups' backbones.
REPRESENTATIVE = [
    "mobilenet_v2",
    "mobilenet",
    "efficientnet_b0",
    "resnet50",
    "vgg16",
    "mobilenet_v3_small",
    "convnext_tiny",
    "densenet121",
    "inception_v3",
]


def test_registry_covers_the_keras_applications_families():
    assert set(REGISTRY) == FAMILIES


@pytest.mark.parametrize("alias", ["MobileNetV2", "mobilenetv2", "mobilenet-v2", " MOBILENET_V2 "])
def test_keras_class_names_and_spellings_resolve(alias):
    assert get_spec(alias).name == "mobilenet_v2"


def test_unknown_backbone_lists_names():
    with pytest.raises(UnknownBackboneError, match="unknown backbone 'resnet9000'.*backbones"):
        get_spec("resnet9000")


def test_registry_is_importable_without_tensorflow():
    assert "featurecache.backbones" in sys.modules
    code = (
        "import sys, featurecache.backbones, featurecache.config; "
        "print('tensorflow' in sys.modules)"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_feature_dim_follows_alpha():
    assert BackboneConfig(name="mobilenet", args={"alpha": 0.25}).feature_dim == 256
    assert BackboneConfig(name="mobilenet_v2", args={"alpha": 0.35}).feature_dim == 1280
    assert BackboneConfig(name="mobilenet_v2", args={"alpha": 1.4}).feature_dim == 1792


def test_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="pooling"):
        BackboneConfig(name="vgg16", pooling="mean")
    with pytest.raises(ConfigError, match="input_size"):
        BackboneConfig(name="vgg16", input_size=8)
    with pytest.raises(ConfigError, match="weights file"):
        BackboneConfig(name="vgg16", weights=str(tmp_path / "missing.h5"))
    assert BackboneConfig(name="vgg16", weights="None").weights == "none"


def test_embedded_preprocessing_families_take_raw_pixels():
    """EfficientNet / ConvNeXt / MobileNetV3 rescale inside: preprocess_input is the identity."""
    from featurecache.backbones import preprocess_fn

    pixels = np.full((1, 4, 4, 3), 200.0, np.float32)
    for name in ("efficientnet_b0", "efficientnet_v2_b0", "convnext_tiny", "mobilenet_v3_small"):
        config = BackboneConfig(name=name)
        assert config.spec.embedded_preprocessing
        np.testing.assert_array_equal(np.asarray(preprocess_fn(config)(pixels.copy())), pixels)
    mobilenet = preprocess_fn(BackboneConfig(name="mobilenet_v2"))(pixels.copy())
    np.testing.assert_allclose(np.asarray(mobilenet), 200 / 127.5 - 1, rtol=1e-6)


def check_builds(name: str) -> None:
    config = BackboneConfig(name=name, weights="none")
    built = build_backbone(config)
    out = np.asarray(
        built.model.predict_on_batch(
            np.zeros((1, config.input_size, config.input_size, 3), np.float32)
        )
    )
    assert out.shape == (1, config.feature_dim)
    names = [layer.name for layer in built.model.layers]
    for pattern in config.spec.last_block:
        assert any(re.match(pattern, n) for n in names), f"{name}: no layer matches {pattern!r}"
    assert config.spec.last_block_layers(names)
    assert built.weights_sha256 is None


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_representative_backbones_build_with_declared_dim(name):
    check_builds(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAMILIES - set(REPRESENTATIVE)))
def test_every_other_backbone_builds_with_declared_dim(name):
    check_builds(name)


@pytest.mark.real_weights
def test_imagenet_weights_file_is_recorded_and_hashed():
    built = build_backbone(BackboneConfig(name="mobilenet_v2"))
    assert built.weights_file.endswith(
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    )
    assert len(built.weights_sha256) == 64


@pytest.mark.real_weights
def test_recording_weight_downloads_sees_the_file_keras_applications_load():
    """The one use of ``keras.src`` (Keras has no public way to ask which file loaded)."""
    import keras

    from featurecache.backbones.build import recording_weight_downloads

    with recording_weight_downloads() as fetched:
        keras.applications.MobileNet(alpha=0.25, include_top=False, input_shape=(224, 224, 3))
    assert [Path(p).name for p in fetched] == ["mobilenet_2_5_224_tf_no_top.h5"]
    assert Path(fetched[0]).is_file()
    from keras.src.utils import file_utils

    assert file_utils.get_file.__name__ == "get_file"  # put back afterwards


@pytest.mark.parametrize("module", sorted({s.module for s in REGISTRY.values()}))
def test_preprocessing_layers_equal_preprocess_input(module):
    """The layers saved inside fine-tuned models compute what preprocess_input does."""
    from featurecache.backbones import preprocess_fn, preprocessing_layers

    config = BackboneConfig(name=next(s.name for s in REGISTRY.values() if s.module == module))
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype(np.float32)
    expected = np.asarray(preprocess_fn(config)(pixels.copy()))
    out = pixels
    for layer in preprocessing_layers(config):
        out = layer(out)
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-4)


def test_missing_weights_offline_is_a_clear_error(tmp_path, monkeypatch):
    """No weights file and no network: Keras's download fails; the message says what to do."""
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://example.invalid: None -- no network")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(ConfigError, match="could not load weights for ResNet50.*KERAS_HOME"):
        build_backbone(BackboneConfig(name="resnet50"))
