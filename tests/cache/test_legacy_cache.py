"""A cache written by featurecache at 7d434e0 (tests/data/cache_7d434e0, made by its
make.py) stays readable bit for bit, keeps its group name, is reused and kept by gc."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import featurecache
from featurecache.cache import recipe

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "cache_7d434e0"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


def sha256(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    """A copy of the fixture (images, pipeline file and cache) in a scratch folder."""
    shutil.copytree(FIXTURE, tmp_path / "legacy", symlinks=True)
    return tmp_path / "legacy"


def test_the_old_cache_reads_bit_identically(legacy):
    cache = featurecache.open_cache(legacy / "cache")
    fs = cache.features("swatches")
    assert fs.group == EXPECTED["group"]
    full = cache.read("swatches", fs.group, taps=("block_13_expand_relu",), flipped=True)
    arrays = {"X": fs.X, "y": fs.y, "X_taps": full.X, "X_flip": full.flipped}
    for name, values in arrays.items():
        assert list(values.shape) == EXPECTED["shapes"][name], name
        assert str(values.dtype) == EXPECTED["dtypes"][name], name
        assert sha256(values) == EXPECTED["sha256"][name], name
    assert fs.split.tolist() == EXPECTED["split"]
    assert fs.keys.tolist() == EXPECTED["keys"]
    # the sources name the folder the fixture was made in (7d434e0 stored absolute paths)
    assert len(fs.sources) == len(EXPECTED["sources"])
    for source, relative in zip(fs.sources, EXPECTED["sources"], strict=True):
        assert Path(source).as_posix().endswith(f"/tests/data/cache_7d434e0/{relative}")


def same_versions() -> bool:
    recorded = EXPECTED["versions"]
    now = recipe.versions()
    return all(now.get(name) == recorded.get(name) for name in ("keras", "backend", "tensorflow"))


@pytest.mark.skipif(
    not same_versions(),
    reason="the fixture's group names hold Keras's and TensorFlow's versions of 7d434e0's "
    f"install ({EXPECTED['versions']}); another install makes other groups by design",
)
def test_the_old_cache_keeps_its_group_is_reused_and_kept_by_gc(legacy):
    pipeline = featurecache.load_pipeline(legacy / "pipeline.toml", cache=legacy / "cache")
    (backbone,) = pipeline.backbones
    assert recipe.request_hash(backbone) == EXPECTED["request_hash"]

    (result,) = featurecache.extract(pipeline)
    # the images moved with the copy: found again by content, nothing computed
    assert result.group == EXPECTED["group"]
    assert (result.n_extracted, result.n_reused) == (0, 12)
    fs = featurecache.open_cache(legacy / "cache").features("swatches")
    assert sha256(fs.X) == EXPECTED["sha256"]["X"]

    removed = featurecache.gc(legacy / "cache", [legacy / "pipeline.toml"])
    assert not [path for path in removed.removed if path.rstrip("/").endswith(EXPECTED["group"])]
    assert featurecache.open_cache(legacy / "cache").features("swatches").group == EXPECTED["group"]
