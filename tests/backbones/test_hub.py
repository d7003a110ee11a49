"""keras-hub backbones (``hub:<preset>``) end to end, offline: tiny random presets of a
CNN (ResNet) and a ViT (DINOv2) saved with ``save_to_preset``, then extract, train-head
and predict through the command line. The cached features are checked against
keras-hub itself (the preset's converter, then the CLS token or the average pool)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from featurecache.cache import Cache
from featurecache.config import BackboneConfig
from featurecache.config.hub import preset_files
from featurecache.errors import ConfigError, UnknownBackboneError
from featurecache.hashing import sha256_files
from tests.backbones.hub_presets import IMAGE_SIZE, save_tiny_presets
from tests.conftest import CLASSES, invoke, make_image

keras_hub = pytest.importorskip("keras_hub")


@pytest.fixture(scope="module")
def presets(tmp_path_factory) -> dict[str, Path]:
    return save_tiny_presets(tmp_path_factory.mktemp("presets"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """3 classes x 8 images at the presets' own size (so no resize is involved)."""
    root = tmp_path_factory.mktemp("hub-images")
    for i, (name, color) in enumerate(CLASSES.items()):
        for j in range(8):
            make_image(root / name / f"{name}_{j}.png", color, size=IMAGE_SIZE, pattern=i)
    return root


def direct_features(preset: Path, files: list[Path], family: str) -> np.ndarray:
    """What keras-hub itself gives: converter, backbone, then the family's pooling."""
    from PIL import Image

    backbone = keras_hub.models.Backbone.from_preset(str(preset))
    converter = keras_hub.layers.ImageConverter.from_preset(str(preset))
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32) for f in files])
    x = converter(pixels)
    if family == "vit":
        return np.asarray(backbone({"images": x}))[:, 0, :]  # the CLS token
    return np.asarray(backbone(x)).mean(axis=(1, 2))  # global average pooling


def test_the_private_preset_lookup_finds_a_presets_folder(presets):
    """The one use of ``keras_hub.src`` (keras-hub has no public way to ask where a named
    preset's files are): here on a local preset, which it resolves without a download."""
    from featurecache.backbones.hub import downloaded_preset_folder, preset_folder

    assert downloaded_preset_folder(str(presets["cnn"])) == presets["cnn"]
    assert preset_folder(str(presets["cnn"])) == presets["cnn"]


@pytest.mark.parametrize(("family", "pooled_as"), [("cnn", "avg"), ("vit", "cls_token")])
def test_extract_train_and_predict_through_a_preset(presets, images, tmp_path, family, pooled_as):
    backbone = f"hub:{presets[family]}"
    args = ["--data", images, "--backbone", backbone, "--cache", tmp_path / "cache"]
    done = invoke(
        "run", *args, "--head", "logistic_regression", "--output", tmp_path / "runs", "--json"
    )
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    [extracted], [head] = result["extract"], result["heads"]
    assert extracted["n_extracted"] == 24 and extracted["group"].startswith(f"hub-tiny_{family}-")
    assert head["accuracy"]["train"] == 1.0

    fs = Cache(tmp_path / "cache").read(extracted["dataset"], extracted["group"])
    weights = fs.provenance["weights"]
    assert weights["sha256"] == sha256_files(
        presets[family], preset_files(presets[family], with_weights=True)
    )
    assert weights["pooled_as"].endswith(pooled_as) and fs.provenance["pooling"] == "auto"
    assert "ImageConverter.from_preset" in fs.provenance["preprocessing"]
    files = [Path(s) for s in fs.sources[:6]]
    np.testing.assert_allclose(
        fs.X[:6], direct_features(presets[family], files, family), rtol=1e-4, atol=1e-5
    )

    again = invoke("extract", *args, "--json")
    assert json.loads(again.stdout)["extract"][0]["cache_hit"] is True

    predicted = invoke("predict", head["folder"], images / "blue", "--json")
    assert predicted.exit_code == 0, predicted.output
    labels = [p["label"] for p in json.loads(predicted.stdout)]
    assert labels == ["blue"] * 8


def test_a_changed_preset_is_a_new_recipe(presets, images, tmp_path):
    """The preset's files are hashed into the recipe: new weights in the same folder
    are not a cache hit."""
    preset = tmp_path / "cnn"
    shutil.copytree(presets["cnn"], preset)
    args = [
        "extract",
        "--data",
        images,
        "--backbone",
        f"hub:{preset}",
        "--cache",
        tmp_path / "cache",
        "--json",
    ]
    first = json.loads(invoke(*args).stdout)["extract"][0]
    backbone = keras_hub.models.Backbone.from_preset(str(preset))
    backbone.set_weights([w * 1.5 for w in backbone.get_weights()])
    backbone.save_to_preset(str(preset))
    second = json.loads(invoke(*args).stdout)["extract"][0]
    assert not second["cache_hit"] and second["n_extracted"] == 24
    assert second["group"] != first["group"]


def test_hub_settings_are_checked_before_anything_runs(presets, tmp_path):
    name = f"hub:{presets['cnn']}"
    config = BackboneConfig(name=name)
    assert (config.weights, config.pooling, config.engine, config.input_size) == (
        "preset",
        "auto",
        "keras",
        IMAGE_SIZE[0],
    )
    assert BackboneConfig(name=name, engine="onnxruntime").engine == "onnxruntime"
    with pytest.raises(ConfigError, match="weights from the preset"):
        BackboneConfig(name=name, weights=str(tmp_path / "w.h5"))
    with pytest.raises(ConfigError, match="take no args"):
        BackboneConfig(name=name, args={"depth": 2})
    with pytest.raises(ConfigError, match="no default cache point for this keras-hub family"):
        BackboneConfig(name=name, finetune_from=True)
    with pytest.raises(UnknownBackboneError, match="not a keras-hub preset folder"):
        BackboneConfig(name=f"hub:{tmp_path}/missing")
    with pytest.raises(UnknownBackboneError, match="needs a preset"):
        BackboneConfig(name="hub:")


def test_fine_tuning_a_hub_vit_asks_for_the_layers_to_train(presets, images, tmp_path):
    """A family featurecache knows no last block of: one line asking for ``unfreeze``."""
    common = ("--data", images, "--backbone", f"hub:{presets['vit']}", "--cache", tmp_path / "c")
    ran = invoke("run", *common, "--head", "dense", "--output", tmp_path / "runs")
    assert ran.exit_code == 0, ran.output
    done = invoke("finetune", *common, "--output", tmp_path / "runs")
    assert done.exit_code == 1 and "[finetune] unfreeze" in done.output, done.output
    assert "knows no last block" in done.output
