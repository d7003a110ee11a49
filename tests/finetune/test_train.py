"""Fine-tuning MobileNetV2 with its real ImageNet weights on catvnoncat, on the CPU."""

import json
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from featurecache.backbones import build_backbone
from featurecache.config import BackboneConfig
from featurecache.deps import import_keras
from featurecache.finetuning.images import PARITY_TOLERANCE
from tests.conftest import finetune_epochs_done, invoke, run_json, sigkill_when

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.real_weights


@pytest.fixture(scope="module")
def trained(tmp_path_factory, datasets_dir):
    """`featurecache run pipelines/catvnoncat.toml` into a fresh cache and output."""
    work = tmp_path_factory.mktemp("finetune")
    common = ["--data-root", datasets_dir, "--cache", work / "cache", "--output", work / "runs"]
    result = invoke("run", REPO / "pipelines" / "catvnoncat.toml", *common)
    assert result.exit_code == 0, result.output
    return work, common


def finetune_steps(common: list, steps: int) -> dict:
    """``featurecache finetune`` of catvnoncat for one epoch of ``steps`` steps: its JSON."""
    result = invoke(
        "finetune",
        REPO / "pipelines" / "catvnoncat.toml",
        *common,
        "--epochs",
        1,
        "--max-steps",
        steps,
        "--json",
    )
    assert result.exit_code == 0, result.output
    [doc] = json.loads(result.stdout)["finetune"]
    return doc


def test_finetune_checks_parity_trains_and_predict_uses_the_model(trained, datasets_dir, tmp_path):
    work, common = trained
    doc = finetune_steps(common, 2)
    assert doc["parity_max_abs_diff"] <= 1e-4
    assert doc["device"] == "CPU" and doc["trainable_layers"] == 4
    assert (doc["epochs_run"], doc["steps_per_epoch"]) == (1, 2)
    folder = Path(doc["folder"])
    for name in ("model.keras", "metrics.json", "curves.png", "comparison.md", "history.json"):
        assert (folder / name).exists(), name
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics) == {"train", "test"} and metrics["test"]["n_images"] == 50
    assert doc["finetuned_accuracy"]["test"] == metrics["test"]["accuracy"]
    assert "| test |" in (folder / "comparison.md").read_text()

    model = import_keras().models.load_model(folder / "model.keras")
    assert model.input_shape == (None, None, None, 3)
    with h5py.File(datasets_dir / "catvnoncat" / "test_catvnoncat.h5") as fh:
        images, labels = fh["test_set_x"][:10], fh["test_set_y"][:10]
    for i, pixels in enumerate(images):
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    predicted = invoke("predict", folder, tmp_path, "--json")
    assert predicted.exit_code == 0, predicted.output
    rows = json.loads(predicted.stdout)
    names = ["non-cat", "cat"]
    assert sum(r["label"] == names[y] for r, y in zip(rows, labels, strict=True)) >= 9


def test_a_parity_failure_stops_with_a_clear_message(trained, monkeypatch):
    work, common = trained
    monkeypatch.setattr("featurecache.finetuning.images.PARITY_TOLERANCE", -1.0)
    result = invoke(
        "finetune", REPO / "pipelines" / "catvnoncat.toml", *common, "--epochs", 1, "--max-steps", 1
    )
    assert result.exit_code == 1
    assert "parity check failed" in result.output and "Traceback" not in result.output


def test_finetune_needs_a_dense_head(trained):
    work, common = trained
    result = invoke(
        "finetune",
        REPO / "pipelines" / "catvnoncat.toml",
        *common,
        "--head-name",
        "logistic_regression",
    )
    assert result.exit_code == 1 and "needs a dense head" in result.output


def test_an_interrupted_finetune_resumes_at_its_last_epoch(trained, tmp_path):
    work, common = trained
    args = [
        sys.executable,
        "-m",
        "featurecache",
        "-q",
        "finetune",
        str(REPO / "pipelines" / "catvnoncat.toml"),
        *map(str, common),
        "--epochs",
        "3",
        "--max-steps",
        "2",
        "--no-augment",
        "--head-name",
        "dense",
        "--json",
    ]
    history = next((work / "runs").rglob("finetune-dense"), None)
    if history is not None:
        (history / "history.json").unlink(missing_ok=True)

    sigkill_when(args, lambda: finetune_epochs_done(work / "runs") >= 1)  # during epoch 2
    [doc] = run_json(args)["finetune"]
    assert doc["resumed_from_epoch"] >= 1
    assert doc["epochs_run"] == 3


def test_sigterm_stops_finetuning_after_a_step_and_the_rerun_resumes(trained):
    import os
    import signal
    import subprocess
    import time

    from featurecache.errors import EXIT_SIGTERM

    work, common = trained
    args = [
        sys.executable, "-m", "featurecache", "-q", "finetune",
        str(REPO / "pipelines" / "catvnoncat.toml"), *map(str, common),
        "--epochs", "3", "--max-steps", "2", "--no-augment", "--json",
    ]  # fmt: skip
    history = next((work / "runs").rglob("finetune-dense"), None)
    if history is not None:
        shutil.rmtree(history / "backup", ignore_errors=True)  # a fresh run, not a resumption
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if finetune_epochs_done(work / "runs") >= 1:
            os.kill(proc.pid, signal.SIGTERM)  # in epoch 2: epoch 1 is checkpointed
            break
        time.sleep(0.01)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_SIGTERM, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("stopped by SIGTERM after ") and line.endswith(
        " of 3 epochs (checkpointed); run again to resume"
    )
    assert out == "" and "Traceback" not in err
    checkpointed = int(line.split("after ")[1].split(" of")[0])
    assert checkpointed >= 1
    [doc] = run_json(args)["finetune"]
    assert doc["resumed_from_epoch"] == checkpointed and doc["epochs_run"] == 3


def test_unfreeze_opens_only_the_last_block_and_keeps_batchnorm_frozen():
    from featurecache.finetuning.model import unfreeze

    built = build_backbone(BackboneConfig(name="mobilenet_v2", weights="none", input_size=96))
    opened = unfreeze(built)
    assert opened and all(n.startswith(("block_16_", "Conv_1")) for n in opened)
    keras = import_keras()
    trainable_bn = [
        layer.name
        for layer in built.model.layers
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    assert trainable_bn == []
    assert not built.model.get_layer("block_15_project").trainable
    with pytest.raises(ValueError, match="no trainable layer"):
        unfreeze(
            built.__class__(
                config=built.config.replace(name="vgg16"),
                model=built.model,
                preprocess=built.preprocess,
                weights_file=None,
                weights_sha256=None,
            )
        )


def test_the_gpu_branch_trains_in_mixed_precision_and_restores_the_policy(trained, monkeypatch):
    """No GPU here: the GPU branch is taken on the CPU (``gpu_available`` stood in for),
    so what runs is the same Keras code as on a GPU, in float16 with loss scaling."""
    work, common = trained
    keras = import_keras()
    monkeypatch.setattr("featurecache.finetuning.run.gpu_available", lambda: True)
    doc = finetune_steps(common, 1)
    assert doc["device"] == "GPU"
    # checked on the float32 build, at float32's tolerance, before the mixed build
    assert 0 < doc["parity_max_abs_diff"] <= PARITY_TOLERANCE
    assert keras.mixed_precision.global_policy().name == "float32"
    history = json.loads((Path(doc["folder"]) / "history.json").read_text())
    assert all(np.isfinite(history["loss"]))
    model = keras.models.load_model(Path(doc["folder"]) / "model.keras")
    backbone = next(layer for layer in model.layers if hasattr(layer, "layers"))
    convolutions = [layer for layer in backbone.layers if "Conv" in type(layer).__name__]
    assert {layer.dtype_policy.name for layer in convolutions} == {"mixed_float16"}
