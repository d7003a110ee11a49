"""Fine-tuning from the cache (random weights, tiny synthetic images): the tail and head
trained on cached activation maps, the assembled model, parity, resume after a kill;
and heads on pooled taps and flipped views."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from featurecache.deps import import_keras
from featurecache.finetuning.activations import activation_batches
from tests.conftest import CLASSES, finetune_epochs_done, invoke, make_image, run_json, sigkill_when

PIPELINE = """
name = "p"
cache = "{cache}"
output = "{runs}"
[[datasets]]
name = "d"
path = "{data}"
[[backbones]]
name = "mobilenet_v2"
weights = "none"
input_size = 64
finetune_from = {finetune_from}
taps = ["block_13_expand_relu"]
views = ["identity", "flip"]
[[heads]]
name = "dense"
kind = "dense"
params = {{ epochs = 3 }}
[[heads]]
name = "lr_taps"
kind = "logistic_regression"
taps = ["block_13_expand_relu"]
[finetune]
epochs = 2
batch_size = 8
optimizer = "adam"
learning_rate = 1e-3
"""


def write_pipeline(tmp_path: Path, *, n_train: int = 8, finetune_from: str = "true") -> Path:
    data = tmp_path / "data"
    for split, n in (("train", n_train), ("test", 3)):
        for pattern, (name, color) in enumerate(CLASSES.items()):
            for i in range(n):
                make_image(data / split / name / f"{i}.png", color, pattern=pattern + i % 2)
    toml = tmp_path / "p.toml"
    toml.write_text(
        PIPELINE.format(
            cache=tmp_path / "cache", runs=tmp_path / "runs", data=data, finetune_from=finetune_from
        )
    )
    return toml


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tapped extraction and its heads (`featurecache run`)."""
    work = tmp_path_factory.mktemp("cached")
    toml = write_pipeline(work)
    result = invoke("run", toml)
    assert result.exit_code == 0, result.output
    return work, toml


def test_heads_train_on_taps_and_flipped_views(trained):
    work, _ = trained
    [folder] = list((work / "runs").rglob("lr_taps"))
    info = json.loads((folder / "head.json").read_text())
    assert info["feature_dim"] == 1280 + 576 and info["taps"] == ["block_13_expand_relu"]
    assert info["views"] == ["identity", "flip"]
    result = invoke("predict", folder, work / "data" / "test" / "red", "--json")
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)
    assert len(predictions) == 3 and all(p["label"] for p in predictions)


def test_finetune_from_the_cache_assembles_a_whole_model(trained):
    work, toml = trained
    result = invoke("finetune", toml, "--from-cache", "--json")
    assert result.exit_code == 0, result.output
    [doc] = json.loads(result.stdout)["finetune"]
    assert doc["source"] == "cache" and doc["epochs_run"] == 2
    assert doc["parity_max_abs_diff"] <= 1e-2
    assert len(doc["epoch_seconds"]) == 2
    folder = Path(doc["folder"])
    info = json.loads((folder / "finetune.json").read_text())
    assert info["finetune_from"] == "block_12_add" and info["views"] == ["identity", "flip"]
    assert info["source"] == "cache"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["test"]["n_images"] == 9
    model = import_keras().models.load_model(folder / "model.keras")
    assert model.input_shape == (None, None, None, 3)  # raw pixels, resized inside
    result = invoke("predict", folder, work / "data" / "test" / "blue", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 3


def test_an_interrupted_cached_finetune_resumes_at_its_last_epoch(tmp_path):
    toml = write_pipeline(tmp_path, n_train=40)
    assert invoke("run", toml).exit_code == 0
    args = [sys.executable, "-m", "featurecache", "-q", "finetune", str(toml), "--from-cache"]
    args += ["--epochs", "4", "--json"]

    sigkill_when(args, lambda: finetune_epochs_done(tmp_path / "runs") >= 1)  # during epoch 2
    [doc] = run_json(args)["finetune"]
    assert doc["resumed_from_epoch"] >= 1 and doc["epochs_run"] == 4


def test_from_cache_without_activation_maps_says_what_to_set(tmp_path):
    toml = write_pipeline(tmp_path, finetune_from="false")
    assert invoke("run", toml).exit_code == 0
    result = invoke("finetune", toml, "--from-cache")
    assert result.exit_code != 0
    assert "finetune_from = true" in result.output and "Traceback" not in result.output


def test_activation_batches_stream_every_row_once_per_epoch(tmp_path):
    group = zarr.open_group(str(tmp_path / "g"), mode="w")
    n = 100
    values = np.arange(n, dtype=np.float16)[:, None, None, None] * np.ones((1, 2, 2, 3), np.float16)
    for name, sign in (("activations", 1), ("activations.flip", -1)):
        array = group.create_array(name, shape=(n, 2, 2, 3), dtype="float16", chunks=(8, 2, 2, 3))
        array[...] = sign * values
    rows = np.arange(0, n, 2)  # one split: every other row
    labels = rows % 3
    batches = activation_batches(
        group, rows, labels, 4, views=("identity", "flip"), shuffle=True, seed=1
    )
    for _ in range(2):
        seen, signs = [], []
        for i in range(len(batches)):
            x, y = batches[i]
            assert x.dtype == np.float32 and x.shape[1:] == (2, 2, 3)
            row = np.abs(x[:, 0, 0, 0]).astype(int)
            np.testing.assert_array_equal(y, row % 3)  # labels follow their rows
            seen += row.tolist()
            signs += np.sign(x[:, 0, 0, 0]).tolist()
        assert sorted(seen) == rows.tolist()  # each row once per epoch
        assert seen != sorted(seen)  # shuffled
        assert {-1.0, 1.0} <= set(signs)  # both views drawn
        assert len(batches.loaded) <= 2  # at most two windows in memory
        batches.on_epoch_end()
    ordered = activation_batches(group, rows, labels, 4, views=("flip",))
    first = np.concatenate([ordered[i][0] for i in range(len(ordered))])[:, 0, 0, 0]
    np.testing.assert_array_equal(first, -rows.astype(np.float32))


def test_head_inputs_leave_the_pixels_alone_so_both_views_are_right():
    """preprocess_input works in place on float32 arrays: the flipped view must not be
    computed from pixels the identity view already preprocessed."""
    from featurecache.backbones import build_backbone
    from featurecache.config import BackboneConfig
    from featurecache.prediction import head_inputs

    config = BackboneConfig(name="mobilenet_v2", weights="none", input_size=64)
    built = build_backbone(config.replace(views=("identity", "flip")))
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    before = pixels.copy()
    head_inputs(built, pixels, {}, "identity")
    flipped = head_inputs(built, pixels, {}, "flip")
    np.testing.assert_array_equal(pixels, before)
    mirrored = head_inputs(built, np.ascontiguousarray(before[:, :, ::-1]), {}, "identity")
    np.testing.assert_allclose(flipped, mirrored, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("source", ["images", "cache"])
def test_finetune_without_a_trained_head_says_to_train_one(trained, source):
    import featurecache
    from featurecache.errors import CacheError, NoTrainedHeadError

    _, toml = trained
    with pytest.raises(NoTrainedHeadError, match="run `featurecache train-head` first") as info:
        featurecache.finetune(toml, head="never_trained", source=source)
    assert isinstance(info.value, CacheError)  # older except clauses still catch it


@pytest.mark.parametrize("source", ["images", "cache"])
def test_finetune_refuses_other_weights_than_the_features(trained, source, monkeypatch):
    import dataclasses

    import featurecache
    from featurecache.backbones import build_backbone
    from featurecache.errors import WeightsChangedError

    def other_weights(config):
        return dataclasses.replace(build_backbone(config), weights_sha256="0" * 64)

    monkeypatch.setattr("featurecache.finetuning.run.build_backbone", other_weights)
    _, toml = trained
    with pytest.raises(WeightsChangedError, match="extract again before fine-tuning"):
        featurecache.finetune(toml, source=source)


@pytest.mark.parametrize(
    ("source", "tolerance"),
    [
        ("images", "featurecache.finetuning.images.PARITY_TOLERANCE"),
        ("cache", "featurecache.finetuning.cached.PARITY_TOLERANCE_ACTIVATIONS"),
    ],
)
def test_a_parity_failure_raises_parity_error(trained, source, tolerance, monkeypatch):
    import featurecache
    from featurecache.errors import ParityError

    monkeypatch.setattr(tolerance, -1.0)
    _, toml = trained
    with pytest.raises(ParityError, match="parity check failed.*with this installation") as info:
        featurecache.finetune(toml, source=source)
    assert info.value.difference > info.value.tolerance == -1.0


@pytest.mark.parametrize(
    ("source", "policies"),
    [("images", ["float32", "mixed_float16"]), ("cache", ["float32"])],
)
def test_on_a_gpu_parity_is_checked_in_float32_and_images_train_in_mixed_precision(
    trained, source, policies, monkeypatch
):
    """No GPU here: ``gpu_available`` is stood in for, and every backbone build and head
    load is counted with the Keras policy it ran under. The parity check runs on a
    float32 build; images then train on a build in mixed_float16, the cache's tail in
    float32 (one build)."""
    import featurecache
    from featurecache.backbones import build_backbone
    from featurecache.finetuning.run import load_dense_head

    keras = import_keras()
    builds, heads = [], []

    def counted_build(config):
        builds.append(keras.mixed_precision.global_policy().name)
        return build_backbone(config)

    def counted_head(folder):
        heads.append(keras.mixed_precision.global_policy().name)
        return load_dense_head(folder)

    monkeypatch.setattr("featurecache.finetuning.run.gpu_available", lambda: True)
    monkeypatch.setattr("featurecache.finetuning.run.build_backbone", counted_build)
    monkeypatch.setattr("featurecache.finetuning.run.load_dense_head", counted_head)
    _, toml = trained
    [result] = featurecache.finetune(toml, source=source, epochs=1, max_steps=1)
    assert builds == heads == policies
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    assert result.device == "GPU" and result.parity_max_abs_diff is not None


def test_when_no_epoch_improves_the_starting_weights_are_kept(trained, monkeypatch):
    """A learning rate far too high makes every epoch worse than the starting model on
    validation: the run hands back the weights it started from."""
    import featurecache
    from featurecache.finetuning.run import Run

    weights = {}
    start, finish = Run.start, Run.finish

    def recording_start(self):
        start(self)
        weights["start"] = self.model.get_weights()
        return self

    def recording_finish(self):
        weights["end"] = self.model.get_weights()
        return finish(self)

    monkeypatch.setattr(Run, "start", recording_start)
    monkeypatch.setattr(Run, "finish", recording_finish)
    _, toml = trained
    [result] = featurecache.finetune(toml, source="cache", learning_rate=1.0, epochs=2)
    assert np.isfinite(result.best_val_loss) and result.best_val_loss > result.start_val_loss
    assert result.improved is False
    for before, after in zip(weights["start"], weights["end"], strict=True):
        np.testing.assert_array_equal(before, after)
