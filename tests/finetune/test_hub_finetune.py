"""EfficientNet-Lite0 (a keras-hub preset with real ImageNet weights) takes taps and a
cache point, and fine-tunes from the cache and from images: on real clothing photos."""

import json
from pathlib import Path

import pytest
import tomli_w

from featurecache.deps import import_keras
from tests.conftest import invoke

LITE0 = Path(__file__).resolve().parents[3] / "shared/keras-hub/efficientnet_lite0_imagenet"
pytestmark = [
    pytest.mark.real_weights,
    pytest.mark.skipif(not LITE0.is_dir(), reason=f"{LITE0} is not present"),
]


@pytest.fixture(scope="module")
def trained(datasets_dir, tmp_path_factory):
    """3 clothing classes (8 train, 3 validation, 3 test photos each, linked), Lite0 with a
    tap and its default cache point, a dense head and a taps head (`featurecache run`)."""
    work = tmp_path_factory.mktemp("lite0")
    for split, n in (("train", 8), ("validation", 3), ("test", 3)):
        for class_dir in sorted((datasets_dir / "clothing_small" / split).iterdir())[:3]:
            (work / "data" / split / class_dir.name).mkdir(parents=True)
            for path in sorted(class_dir.iterdir())[:n]:
                (work / "data" / split / class_dir.name / path.name).symlink_to(path)
    toml = work / "lite0.toml"
    toml.write_text(
        tomli_w.dumps(
            {
                "cache": str(work / "cache"),
                "output": str(work / "runs"),
                "datasets": [{"name": "clothing", "path": str(work / "data")}],
                "backbones": [
                    {"name": f"hub:{LITE0}", "finetune_from": True, "taps": ["block6a_"]}
                ],
                "heads": [
                    {"name": "dense", "kind": "dense", "params": {"epochs": 3}},
                    {"name": "lr_taps", "kind": "logistic_regression", "taps": ["block6a_"]},
                ],
                "finetune": {"epochs": 1, "batch_size": 8, "optimizer": "adam"},
            }
        )
    )
    result = invoke("run", toml, "--json")
    assert result.exit_code == 0, result.output
    return work, toml


def test_lite0_caches_its_tap_and_its_cache_point(trained):
    work, _ = trained
    [folder] = list((work / "runs").rglob("lr_taps"))
    info = json.loads((folder / "head.json").read_text())
    assert info["feature_dim"] == 1280 + 192 and info["taps"] == ["block6a_"]


@pytest.mark.parametrize("source", ["--from-cache", "--from-images"])
def test_lite0_fine_tunes_and_the_whole_model_reproduces_the_cache(trained, source):
    work, toml = trained
    result = invoke("finetune", toml, source, "--json")
    assert result.exit_code == 0, result.output
    [doc] = json.loads(result.stdout)["finetune"]
    assert doc["epochs_run"] == 1 and doc["parity_max_abs_diff"] <= 1e-2
    folder = Path(doc["folder"])
    info = json.loads((folder / "finetune.json").read_text())
    if source == "--from-cache":
        assert info["finetune_from"] == "block5c_"
    assert doc["trainable_layers"] > 0
    model = import_keras().models.load_model(folder / "model.keras")
    assert model.input_shape == (None, None, None, 3)
    result = invoke("predict", folder, work / "data" / "test", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 9
