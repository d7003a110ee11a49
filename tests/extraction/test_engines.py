"""TensorFlow and ONNX Runtime give the same features on real images."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from featurecache.cache import Cache
from featurecache.cli import app
from tests.conftest import needs_onnx, workspace

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.real_weights, needs_onnx]


def extract(datasets_dir, cache, engine):
    result = CliRunner().invoke(
        app,
        [
            "extract",
            str(REPO / "pipelines" / "catvnoncat.toml"),
            "--data-root",
            str(datasets_dir),
            "--cache",
            str(cache),
            "--engine",
            engine,
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["extract"][0]


def test_both_engines_agree_on_real_images_and_use_separate_groups(datasets_dir, tmp_path):
    cache = tmp_path / "cache"
    tf = extract(datasets_dir, cache, "tensorflow")
    ort = extract(datasets_dir, cache, "onnxruntime")
    assert (tf["engine"], ort["engine"]) == ("tensorflow", "onnxruntime")
    assert tf["group"] != ort["group"] and ort["n_extracted"] == 259
    a = Cache(cache).read("catvnoncat", tf["group"])
    b = Cache(cache).read("catvnoncat", ort["group"])
    assert list(a.keys) == list(b.keys)
    assert float(np.abs(a.X - b.X).max()) <= 1e-4
    assert b.provenance["engine"] == "onnxruntime"
    assert len(list((workspace(cache) / "engines").glob("mobilenet_v2-*.onnx"))) == 1
    assert extract(datasets_dir, cache, "onnxruntime")["cache_hit"]


def test_the_default_engine_is_auto_and_picks_onnxruntime_for_mobilenet_v2(
    datasets_dir, tmp_path, monkeypatch
):
    """With no engine named anywhere, MobileNetV2 runs on ONNX Runtime (about 2-4x
    TensorFlow's speed on a CPU, docs/benchmarks.md), and the choice is recorded."""
    from featurecache.config import ENGINE_ENV, BackboneConfig

    monkeypatch.delenv(ENGINE_ENV)
    assert BackboneConfig(name="mobilenet_v2").engine == "auto"
    monkeypatch.setenv(ENGINE_ENV, "keras")
    assert BackboneConfig(name="mobilenet_v2").engine == "keras"
    monkeypatch.delenv(ENGINE_ENV)
    cache = tmp_path / "cache"
    result = CliRunner().invoke(
        app,
        ["extract", str(REPO / "pipelines" / "catvnoncat.toml"), "--data-root", str(datasets_dir)]
        + ["--cache", str(cache), "--json"],
    )
    assert result.exit_code == 0, result.output
    [first] = json.loads(result.stdout)["extract"]
    attrs = Cache(cache).attrs("catvnoncat", first["group"])
    assert (first["engine"], attrs["engine"], attrs["backbone"]["engine"]) == (
        "onnxruntime",
        "onnxruntime",
        "auto",
    )


def test_auto_picks_an_engine_says_which_and_keeps_it(datasets_dir, tmp_path):
    cache = tmp_path / "cache"
    first = extract(datasets_dir, cache, "auto")
    assert first["engine"] in ("tensorflow", "onnxruntime", "openvino")
    attrs = Cache(cache).attrs("catvnoncat", first["group"])
    assert attrs["engine"] == first["engine"] and attrs["backbone"]["engine"] == "auto"
    again = extract(datasets_dir, cache, "auto")
    assert again["cache_hit"] and again["engine"] == first["engine"]


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_v2_b0"])
def test_efficientnet_runs_on_onnxruntime_with_tensorflows_features(name, tmp_path):
    """tf2onnx exported EfficientNet's Normalization statistics as extra graph inputs;
    folded into constants, the export runs on images alone and agrees with TensorFlow
    within 1e-4 of the features' scale, with statistics far from the identity."""
    import keras

    from featurecache.backbones import build_backbone
    from featurecache.cache import recipe
    from featurecache.config import BackboneConfig
    from featurecache.extraction import engines, onnx

    config = BackboneConfig(name=name, weights="none", input_size=64)
    built = build_backbone(config)
    [norm] = [
        layer
        for layer in onnx._layers(built.outputs_model)
        if isinstance(layer, keras.layers.Normalization)
    ]
    if norm.weights:  # EfficientNet adapts its statistics (V2 has them as constants)
        norm.set_weights([np.float32([120, 110, 100]), np.float32([3000, 2500, 4000]), np.int64(1)])
        norm.finalize_state()
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
    batch = built.preprocess(pixels)
    [tf] = engines.keras_runner(built)(batch)
    run = onnx.onnx_runner(built, tmp_path, recipe.model_id(config, None))
    [ort] = run(batch)
    scale = float(np.abs(tf).max())
    assert scale > 0 and float(np.abs(ort - tf).max()) <= 1e-4 * scale
    [again] = engines.keras_runner(built)(batch)  # folding left the Keras model as it was
    np.testing.assert_array_equal(again, tf)
    name, _ = engines.select(built, "auto", tmp_path, recipe.model_id(config, None), 2, trials=1)
    assert name in ("tensorflow", "onnxruntime", "openvino")


def test_auto_keeps_its_choice_for_a_resumed_run(tmp_path):
    """auto writes its choice beside the export; the next run of the same model reads it
    instead of timing again (a stopped first run resumes in the same group)."""
    from featurecache.backbones import build_backbone
    from featurecache.cache import recipe
    from featurecache.config import BackboneConfig
    from featurecache.extraction import engines

    config = BackboneConfig(name="mobilenet_v2", weights="none", input_size=32, engine="auto")
    built = build_backbone(config)
    model_id = recipe.model_id(config, None)
    first, _ = engines.select(built, "auto", tmp_path, model_id, batch_size=2, trials=1)
    [choice] = tmp_path.glob("*.auto")
    assert choice.read_text().strip() == first
    other = "onnxruntime" if first == "tensorflow" else "tensorflow"
    choice.write_text(other + "\n")
    again, _ = engines.select(built, "auto", tmp_path, model_id, batch_size=2, trials=1)
    assert again == other
