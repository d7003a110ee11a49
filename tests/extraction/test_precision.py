"""bf16 and int8 backbones, the accuracy guard, OpenVINO, and keras-hub backbones on the
ONNX engines: real MobileNetV2 / EfficientNet-Lite0 weights on real clothing photos."""

import json
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from featurecache.cache import Cache
from featurecache.config import BackboneConfig
from featurecache.errors import ConfigError
from featurecache.extraction.guard import cosines, stratified_sample
from tests.conftest import invoke, needs_onnx, workspace

pytestmark = [pytest.mark.real_weights, needs_onnx]
LITE0 = Path(__file__).resolve().parents[3] / "shared/keras-hub/efficientnet_lite0_imagenet"


@pytest.fixture(scope="module")
def photos(datasets_dir, tmp_path_factory) -> Path:
    """3 clothing classes: 12 training and 4 test photos each, linked (nothing copied)."""
    root = tmp_path_factory.mktemp("clothing")
    for split, n in (("train", 12), ("test", 4)):
        for class_dir in sorted((datasets_dir / "clothing_small" / split).iterdir())[:3]:
            (root / split / class_dir.name).mkdir(parents=True)
            for path in sorted(class_dir.iterdir())[:n]:
                (root / split / class_dir.name / path.name).symlink_to(path)
    return root


def extract(photos, cache, *options, backbone="mobilenet_v2"):
    result = invoke(
        "extract", "--data", photos, "--backbone", backbone, "--cache", cache, "--json", *options
    )
    if result.exit_code:
        return result.exit_code, result.output
    return 0, json.loads(result.stdout)["extract"][0]


def test_precision_picks_its_engine_and_is_a_recipe_change(monkeypatch):
    from featurecache.cache import recipe

    monkeypatch.setenv("FEATURECACHE_ENGINE", "keras")  # the machine's default: overridden
    assert BackboneConfig(name="mobilenet_v2", precision="bf16").engine == "openvino"
    assert BackboneConfig(name="mobilenet_v2", precision="int8").engine == "onnxruntime"
    assert BackboneConfig(name="mobilenet_v2", precision="int8", engine="openvino").engine == (
        "openvino"
    )
    with pytest.raises(ConfigError, match="precision 'bf16' runs on engine 'openvino'"):
        BackboneConfig(name="mobilenet_v2", precision="bf16", engine="onnxruntime")
    with pytest.raises(ConfigError, match="precision must be"):
        BackboneConfig(name="mobilenet_v2", precision="fp16")
    fp32 = BackboneConfig(name="mobilenet_v2", engine="onnxruntime")
    assert "precision" not in fp32.describe() and "decoder" not in fp32.describe()
    hashes = {
        recipe.request_hash(fp32),
        recipe.request_hash(fp32.replace(precision="int8")),
        recipe.request_hash(fp32.replace(decoder="simplejpeg")),
        recipe.request_hash(fp32.replace(guard_median=0.5)),
    }
    assert len(hashes) == 3  # the guard's thresholds are not part of the recipe
    same_model = {recipe.model_id(b, "w") for b in (fp32, fp32.replace(precision="int8"))}
    assert len(same_model) == 1  # one ONNX export serves every precision


def test_stratified_sample_takes_every_class_evenly():
    labels = [0] * 50 + [1] * 30 + [2] * 4
    picked = stratified_sample(labels, range(84), 12)
    assert len(picked) == 12 and picked == sorted(picked)
    counts = np.bincount([labels[i] for i in picked], minlength=3)
    assert counts.tolist() == [4, 4, 4]
    assert stratified_sample(labels, range(84), 1000) == list(range(84))
    np.testing.assert_allclose(cosines(np.eye(3), np.eye(3) * 2), 1.0)


def test_bf16_on_openvino_records_its_hint_and_agrees_with_fp32(photos, tmp_path):
    cache = tmp_path / "cache"
    code, fp32 = extract(photos, cache, "--engine", "onnxruntime")
    assert code == 0, fp32
    code, bf16 = extract(photos, cache, "--precision", "bf16")
    assert code == 0, bf16
    assert bf16["engine"] == "openvino" and bf16["group"] != fp32["group"]
    name = fp32["dataset"]
    attrs = Cache(cache).attrs(name, bf16["group"])
    settings = attrs["engine_settings"]
    assert settings["precision"] == "bf16" and settings["inference_precision_hint"] == "bf16"
    assert settings["performance_hint"] == "LATENCY" and settings["decoder"] == "pillow"
    check = settings["precision_check"]
    assert check["images"] == 48 and check["median_cosine"] >= 0.99
    assert check["min_cosine"] >= 0.95
    a, b = Cache(cache).read(name, fp32["group"]), Cache(cache).read(name, bf16["group"])
    assert list(a.keys) == list(b.keys)
    assert float(np.median(cosines(a.X, b.X))) >= 0.99
    # fp32 on OpenVINO: the hint is set to f32 (OpenVINO would pick bf16 on this CPU)
    code, ov32 = extract(photos, cache, "--engine", "openvino")
    assert code == 0, ov32
    settings = Cache(cache).attrs(name, ov32["group"])["engine_settings"]
    assert settings["inference_precision_hint"] == "f32"
    assert float(np.abs(Cache(cache).read(name, ov32["group"]).X - a.X).max()) <= 1e-4


def test_int8_is_refused_by_the_guard_then_accepted_and_keeps_its_calibration(
    photos, tmp_path, datasets_dir
):
    cache = tmp_path / "cache"
    code, output = extract(photos, cache, "--precision", "int8")
    assert code != 0 and "guard_median" in output and "median cosine similarity" in output
    assert len(output.strip().splitlines()) == 1
    assert not list(Path(cache).glob("*/*/current"))  # nothing committed
    pipeline = tmp_path / "int8.toml"
    pipeline.write_text(
        tomli_w.dumps(
            {
                "datasets": [{"name": "clothing", "path": str(photos)}],
                "backbones": [
                    {"name": "mobilenet_v2", "precision": "int8"}
                    | {"guard_median": 0.9, "guard_min": 0.8}
                ],
                "cache": str(cache),
            }
        )
    )
    result = invoke("extract", pipeline, "--json")
    assert result.exit_code == 0, result.output
    [made] = json.loads(result.stdout)["extract"]
    settings = Cache(cache).attrs("clothing", made["group"])["engine_settings"]
    keys = settings["calibration_keys"]
    train = Cache(cache).read("clothing", made["group"])
    train_keys = {k for k, s in zip(train.keys, train.split, strict=True) if s == "train"}
    assert len(keys) == 36 and set(keys) <= train_keys  # every training photo here
    assert settings["precision_check"]["median_cosine"] >= 0.9
    # one calibrated model per data set (the refused --data run made its own)
    models = sorted((workspace(cache) / "engines").glob("*-int8-*.onnx"))
    before = {m: m.stat().st_mtime_ns for m in models}
    extra = sorted((photos / "test").iterdir())[0]
    new = extra / "added.jpg"  # a photo not in the data set yet
    new.symlink_to(sorted((datasets_dir / "clothing_small/test" / extra.name).iterdir())[10])
    try:
        result = invoke("extract", pipeline, "--json")
    finally:
        new.unlink()
    assert result.exit_code == 0, result.output
    [again] = json.loads(result.stdout)["extract"]
    assert again["group"] == made["group"]
    assert (again["n_reused"], again["n_extracted"]) == (48, 1)
    after = sorted((workspace(cache) / "engines").glob("*-int8-*.onnx"))
    assert {m: m.stat().st_mtime_ns for m in after} == before  # the same calibrated models


@pytest.mark.skipif(not LITE0.is_dir(), reason=f"{LITE0} is not present")
def test_efficientnet_lite0_from_keras_hub_on_onnxruntime_and_openvino(photos, tmp_path):
    cache, backbone = tmp_path / "cache", f"hub:{LITE0}"
    groups = {}
    for engine in ("keras", "onnxruntime", "openvino"):
        code, made = extract(photos, cache, "--engine", engine, backbone=backbone)
        assert code == 0, made
        groups[engine] = Cache(cache).read(made["dataset"], made["group"]).X
    assert len({id(x) for x in groups.values()}) == 3
    for engine in ("onnxruntime", "openvino"):
        assert float(np.abs(groups[engine] - groups["keras"]).max()) <= 1e-4
