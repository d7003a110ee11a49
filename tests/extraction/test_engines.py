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


def test_auto_picks_an_engine_says_which_and_keeps_it(datasets_dir, tmp_path):
    cache = tmp_path / "cache"
    first = extract(datasets_dir, cache, "auto")
    assert first["engine"] in ("tensorflow", "onnxruntime")
    attrs = Cache(cache).attrs("catvnoncat", first["group"])
    assert attrs["engine"] == first["engine"] and attrs["backbone"]["engine"] == "auto"
    again = extract(datasets_dir, cache, "auto")
    assert again["cache_hit"] and again["engine"] == first["engine"]


def test_a_backbone_onnx_cannot_run_is_a_clear_error_and_auto_falls_back(tmp_path):
    """EfficientNet's export needs extra inputs (tf2onnx): say so; auto keeps TensorFlow."""
    from featurecache.backbones import build_backbone
    from featurecache.cache import recipe
    from featurecache.config import BackboneConfig
    from featurecache.errors import EngineError
    from featurecache.extraction import engines

    config = BackboneConfig(name="efficientnet_b0", weights="none", input_size=64)
    built = build_backbone(config)
    model_id = recipe.model_id(config, None)
    try:
        engines.onnx_runner(built, tmp_path, model_id)
    except EngineError as exc:
        assert "use engine 'keras'" in str(exc)
        name, _ = engines.select(built, "auto", tmp_path, model_id, batch_size=2, trials=1)
        assert name == "tensorflow"
    else:  # a newer tf2onnx may export it cleanly; then auto may choose either
        name, _ = engines.select(built, "auto", tmp_path, model_id, batch_size=2, trials=1)
        assert name in ("tensorflow", "onnxruntime")
