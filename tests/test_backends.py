"""The quick subset under every Keras backend on the CPU: TensorFlow, JAX and PyTorch.

Each backend runs in its own process (Keras fixes its backend when first imported),
with ``KERAS_BACKEND`` set, on the real cat vs non-cat images and the real MobileNetV2
ImageNet weights: extract + a dense head (``featurecache run``), one fine-tuning
epoch of two steps, and predict with the fine-tuned model (and with TensorFlow's: a
saved model moves between backends). All three share one cache and one runs folder, so
the test also sees that a cache made under one backend is never reused under another,
and compares the three backends' features.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from featurecache.cache.layout import Cache
from featurecache.deps import BACKENDS
from tests.conftest import run_json

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)
pytestmark = pytest.mark.real_weights

#: Largest absolute difference allowed between two backends' bottleneck features (the
#: MobileNetV2 features of these images range over 0-6). Measured on 2026-11-24 on the
#: team's 2-core x86-64 machine: JAX 3.1e-5, PyTorch 1.9e-5 against TensorFlow.
TOLERANCE = 5e-4

PIPELINE = """
name = "backends"
data_root = "{data_root}"
[[datasets]]
name = "catvnoncat"
format = "hdf5"
[datasets.hdf5.train]
path = "catvnoncat/train_catvnoncat.h5"
images = "train_set_x"
labels = "train_set_y"
classes = "list_classes"
[datasets.hdf5.test]
path = "catvnoncat/test_catvnoncat.h5"
images = "test_set_x"
labels = "test_set_y"
classes = "list_classes"
[[backbones]]
name = "mobilenet_v2"
weights = "imagenet"
[[heads]]
name = "dense"
kind = "dense"
"""


def installed(backend: str) -> bool:
    return all(importlib.util.find_spec(m) for m in ("keras", backend))


def featurecache(backend: str, *args) -> dict:
    """``featurecache ARGS --json`` in a process of its own on ``backend``."""
    env = {**os.environ, "KERAS_BACKEND": backend}
    command = [sys.executable, "-m", "featurecache", *map(str, args), "--json"]
    return run_json(command, env=env)


@pytest.fixture(scope="module")
def flows(tmp_path_factory, datasets_dir) -> tuple[Path, dict[str, dict]]:
    """Every installed backend's run, fine-tune and predict, in turn, on one cache."""
    work = tmp_path_factory.mktemp("backends")
    pipeline = work / "pipeline.toml"
    pipeline.write_text(PIPELINE.format(data_root=datasets_dir))
    images = work / "images"
    images.mkdir()
    with h5py.File(datasets_dir / "catvnoncat" / "test_catvnoncat.h5") as fh:
        pixels, labels = fh["test_set_x"][:8], fh["test_set_y"][:8]
        classes = [c.decode() for c in fh["list_classes"][:]]
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(images / f"{i}.png")
    common = ["--cache", work / "cache", "--output", work / "runs"]

    def flow(backend: str, tf_folder: str | None) -> dict:
        run = featurecache(backend, "run", pipeline, *common)
        finetuned = featurecache(
            backend, "finetune", pipeline, *common, "--epochs", 1, "--max-steps", 2
        )
        [ft] = finetuned["finetune"]
        predicted = featurecache(backend, "predict", ft["folder"], images)
        out = {"run": run, "finetune": ft, "predict": predicted}
        if tf_folder is not None:
            out["predict_tf_model"] = featurecache(backend, "predict", tf_folder, images)
        return out

    # TensorFlow first (the others predict with its fine-tuned model), then the others
    # side by side: their processes spend much of their time importing and building,
    # and they share the cache through its writer lock, as two cron jobs would
    backends = [b for b in BACKENDS if installed(b)]
    done = {b: flow(b, None) for b in backends if b == "tensorflow"}
    tf_folder = done["tensorflow"]["finetune"]["folder"] if done else None
    others = [b for b in backends if b != "tensorflow"]
    with ThreadPoolExecutor(max_workers=max(1, len(others))) as pool:
        done.update(zip(others, pool.map(lambda b: flow(b, tf_folder), others), strict=True))
    return work, {"labels": [classes[i] for i in labels], "done": done}


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_quick_subset_runs_on_each_backend(flows, backend):
    if not installed(backend):
        pytest.skip(f"no {backend}: pip install 'featurecache[{BACKENDS[backend][1]}]'")
    work, seen = flows
    flow = seen["done"][backend]
    [extract] = flow["run"]["extract"]
    assert extract["engine"] == backend
    assert extract["n_extracted"] == extract["n_images"] == 259  # nothing reused across
    [head] = flow["run"]["heads"]
    assert head["accuracy"]["test"] >= 0.9
    attrs = Cache(work / "cache").attrs("catvnoncat", extract["group"])
    assert attrs["versions"]["backend"] == backend and attrs["versions"][backend]
    assert attrs["engine"] == backend

    ft = flow["finetune"]
    assert ft["device"] in ("CPU", "GPU") and ft["parity_max_abs_diff"] <= 1e-4
    assert (ft["epochs_run"], ft["steps_per_epoch"]) == (1, 2)
    recorded = json.loads((Path(ft["folder"]) / "finetune.json").read_text())
    assert recorded["versions"]["backend"] == backend
    labels = [row["label"] for row in flow["predict"]]
    assert sum(a == b for a, b in zip(labels, seen["labels"], strict=True)) >= 7
    if "predict_tf_model" in flow:  # TensorFlow's fine-tuned model.keras, on this backend
        here = np.array([row["probability"] for row in flow["predict_tf_model"]])
        there = np.array([row["probability"] for row in seen["done"]["tensorflow"]["predict"]])
        np.testing.assert_allclose(here, there, atol=1e-3)
        assert [row["label"] for row in flow["predict_tf_model"]] == [
            row["label"] for row in seen["done"]["tensorflow"]["predict"]
        ]


def test_backends_get_their_own_groups_and_agree_on_the_features(flows):
    work, seen = flows
    done = seen["done"]
    if len(done) < 2:
        pytest.skip("fewer than two Keras backends are installed")
    groups = {b: flow["run"]["extract"][0]["group"] for b, flow in done.items()}
    assert len(set(groups.values())) == len(groups), groups
    cache = Cache(work / "cache")
    features = {b: np.asarray(cache.read("catvnoncat", g).X) for b, g in groups.items()}
    reference, first = next(iter(features.items()))
    for backend, values in list(features.items())[1:]:
        largest = float(np.abs(values - first).max())
        log.warning("features %s vs %s: largest difference %.2e", backend, reference, largest)
        assert largest <= TOLERANCE, (backend, largest)


def test_gc_under_one_backend_keeps_the_groups_of_the_others(flows):
    work, seen = flows
    if len(seen["done"]) < 2:
        pytest.skip("fewer than two Keras backends are installed")
    before = set(Cache(work / "cache").group_names("catvnoncat"))
    assert len(before) == len(seen["done"])
    gc = featurecache("tensorflow", "gc", work / "pipeline.toml", "--cache", work / "cache")
    assert not [p for p in gc["removed"] if "mobilenet_v2" in p], gc
    assert set(Cache(work / "cache").group_names("catvnoncat")) == before
