"""Shared fixtures: real data from ../shared, tiny synthetic image folders.

KERAS_HOME must be set before Keras is first imported (Keras reads it at import
time), so it is set here at collection: a writable copy of ../shared/keras, whose
models/ holds the real ImageNet weight files under the names Keras looks for.

FEATURECACHE_ENGINE is set to ``keras`` for the whole run (subprocesses included): most
tests compare cached features bit for bit with the Keras model's own outputs, and the
default engine, ``auto``, may pick ONNX Runtime by timing. The default itself is tested
where it is named (tests/extraction/test_engines.py), with the variable removed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FEATURECACHE_SHARED", REPO.parent / "shared"))
DATASETS = SHARED / "datasets"

if "KERAS_HOME" not in os.environ and (SHARED / "keras" / "models").is_dir():
    _home = Path(tempfile.mkdtemp(prefix="featurecache-keras-home-"))
    shutil.copytree(SHARED / "keras" / "models", _home / "models")
    os.environ["KERAS_HOME"] = str(_home)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["FEATURECACHE_ENGINE"] = "keras"

needs_shared = pytest.mark.skipif(not DATASETS.is_dir(), reason=f"{DATASETS} is not present")


def assert_same_numbers(actual, desired) -> None:
    """Features computed in two processes are the same: bit for bit on TensorFlow, whose
    CPU kernels give the same bits for the same batch in any process. PyTorch's and JAX's
    CPU kernels do not (seen: 1e-5 apart on MobileNetV2 features between the pytest
    process and a subprocess under PyTorch), so there they agree to float32 round-off of
    the arrays' own scale."""
    from featurecache.deps import backend

    actual, desired = np.asarray(actual), np.asarray(desired)
    if backend() == "tensorflow":
        np.testing.assert_array_equal(actual, desired)
    else:
        scale = float(np.abs(desired).max()) if desired.size else 0.0
        np.testing.assert_allclose(actual, desired, rtol=1e-4, atol=1e-5 * scale)


def onnx_usable() -> bool:
    """The ONNX Runtime engine can run here: installed, and on the TensorFlow backend."""
    from featurecache.deps import backend
    from featurecache.extraction.engines import onnx_available

    return onnx_available() and backend() == "tensorflow"


needs_onnx = pytest.mark.skipif(
    not onnx_usable(),
    reason="the ONNX engine needs pip install 'featurecache[onnx]' and the TensorFlow backend",
)


def invoke(*args):
    """``featurecache ARGS`` in this process (typer's ``CliRunner``); paths are welcome."""
    from typer.testing import CliRunner

    from featurecache.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def sigkill_when(args: list[str], reached, timeout: float = 300) -> None:
    """Run ``args`` as a real process and SIGKILL it as soon as ``reached()`` is true;
    fails the test if the process ended (or the time ran out) before that."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if reached():
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the process ended before it could be killed"


def workspace(cache: Path) -> Path:
    """The cache's workspace (staging, locks, ONNX exports): a sibling of the cache."""
    cache = Path(cache).resolve()
    return cache.parent / f".{cache.name}.featurecache"


def json_or_none(path: Path) -> dict | None:
    """A JSON file another process may be rewriting: its content, or None."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def finetune_epochs_done(runs: Path) -> int:
    """Epochs a fine-tuning run under ``runs`` has checkpointed (0 before the first)."""
    found = next(runs.rglob("finetune-*dense/history.json"), None)
    doc = json_or_none(found) if found and (found.parent / "backup").exists() else None
    return len(doc["loss"]) if doc else 0


def run_json(args: list[str], timeout: float = 600, env: dict | None = None) -> dict:
    """Run ``args`` (a ``--json`` command) to the end, in ``env`` (default: this
    process's environment); its parsed output."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def link_fingers(datasets_dir: Path, root: Path, per_class: dict[str, int]) -> Path:
    """``root/<split>/<class>/``: the first ``per_class[split]`` images of every fingers
    class, as links to the real PNGs (a small real data set, nothing copied)."""
    for split, n in per_class.items():
        for class_dir in sorted((datasets_dir / "fingers" / split).iterdir()):
            target = root / split / class_dir.name
            target.mkdir(parents=True)
            for path in sorted(class_dir.iterdir())[:n]:
                (target / path.name).symlink_to(path)
    return root


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    if not DATASETS.is_dir():
        pytest.skip(f"{DATASETS} is not present")
    return DATASETS


def make_image(path: Path, color: tuple[int, int, int], size=(40, 30), pattern: int = 0) -> Path:
    """Write a small RGB image: a flat colour with a class-specific stripe pattern."""
    rng = np.random.default_rng(zlib.crc32(os.fsencode(path.name)) + pattern)
    pixels = np.empty((size[1], size[0], 3), dtype=np.uint8)
    pixels[:] = color
    pixels[:, pattern::4] = 255 - np.asarray(color, dtype=np.uint8)
    pixels = np.clip(pixels.astype(int) + rng.integers(-20, 20, pixels.shape), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


CLASSES = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """root/<class>/*.png: 3 classes x 10 images, no split folders."""
    root = tmp_path / "flat"
    for i, (name, color) in enumerate(CLASSES.items()):
        for j in range(10):
            make_image(root / name / f"{name}_{j:02d}.png", color, pattern=i)
    return root


@pytest.fixture
def split_folder(tmp_path: Path) -> Path:
    """root/<split>/<class>/*: train 8, val 2, test 3 per class (JPEG and PNG mixed)."""
    root = tmp_path / "split"
    for i, (name, color) in enumerate(CLASSES.items()):
        for split, n in (("train", 8), ("val", 2), ("test", 3)):
            for j in range(n):
                ext = "jpg" if j % 2 else "png"
                make_image(root / split / name / f"{j:02d}.{ext}", color, pattern=i)
    return root


@pytest.fixture(scope="session")
def catvnoncat_run(tmp_path_factory, datasets_dir):
    """`featurecache run pipelines/catvnoncat.toml` twice, as the README's main job does."""
    work = tmp_path_factory.mktemp("main-job")
    args = [
        "run",
        REPO / "pipelines" / "catvnoncat.toml",
        "--data-root",
        datasets_dir,
        "--cache",
        work / "cache",
        "--output",
        work / "runs",
    ]
    first = invoke(*args, "--json")
    second = invoke(*args)
    return work, first, second
