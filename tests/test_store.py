import json
import os

import numpy as np
import pytest
import zarr

from featurecache.errors import CacheError
from featurecache.store import STAGING, Cache, chunk_rows


def write_group(cache: Cache, n: int, dim: int = 8, batch: int = 7, name: str = "g"):
    writer = cache.writer("ds", name, feature_dim=dim, dataset_attrs={"name": "ds"})
    features = np.arange(n * dim, dtype=np.float32).reshape(n, dim)
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        writer.append(
            features[start:stop],
            labels=[i % 3 for i in range(start, stop)],
            split=["train" if i % 4 else "test" for i in range(start, stop)],
            keys=[f"k{i}" for i in range(start, stop)],
            sources=[f"/img/é_{i}.jpg" for i in range(start, stop)],
        )
    writer.commit({"recipe_hash": "r", "class_names": ["a", "b", "c"]})
    return features


def test_chunks_hold_at_least_one_mebibyte():
    for dim in (256, 576, 1280, 2048, 2560):
        rows = chunk_rows(dim)
        assert rows * dim * 4 >= 1 << 20
        assert (rows // 2) * dim * 4 < 1 << 20


def test_round_trip_across_chunk_boundaries(tmp_path):
    cache = Cache(tmp_path / "c")
    dim = 4096  # 64 rows per chunk, so 150 rows span three chunks
    features = write_group(cache, 150, dim=dim, batch=37)
    fs = cache.read("ds", "g")
    np.testing.assert_array_equal(fs.features, features)
    assert fs.features.dtype == np.float32 and fs.labels.dtype == np.int32
    assert fs.keys[149] == "k149" and fs.sources[3] == "/img/é_3.jpg"
    assert fs.class_names == ["a", "b", "c"]
    assert fs.attrs["n_images"] == 150
    x, y = fs.subset("test")
    assert len(x) == len(y) == 38
    assert fs.splits == ["train", "test"]


def test_plain_zarr_can_read_the_layout(tmp_path):
    cache = Cache(tmp_path / "c")
    write_group(cache, 10)
    group = zarr.open_group(tmp_path / "c" / "ds" / "g", mode="r")
    assert group["features"].shape == (10, 8)
    assert list(group["split"][:2]) == ["test", "train"]
    assert group.attrs["class_names"] == ["a", "b", "c"]
    root = json.loads((tmp_path / "c" / "zarr.json").read_text())
    assert root["zarr_format"] == 3


def test_nothing_is_visible_before_commit_and_abort_cleans_up(tmp_path):
    cache = Cache(tmp_path / "c")
    writer = cache.writer("ds", "g", feature_dim=4, dataset_attrs={})
    writer.append(np.ones((3, 4)), [0, 1, 0], ["train"] * 3, ["a", "b", "c"], ["x", "y", "z"])
    assert list(cache.groups()) == []
    writer.abort()
    assert not any((tmp_path / "c" / STAGING).iterdir())


def test_stale_staging_from_a_dead_process_is_removed(tmp_path):
    cache = Cache(tmp_path / "c")
    write_group(cache, 5)
    dead = tmp_path / "c" / STAGING / "999999999-deadbeef"
    dead.mkdir(parents=True)
    live = tmp_path / "c" / STAGING / f"{os.getppid()}-cafecafe"
    live.mkdir()
    cache.writer("ds", "h", feature_dim=2, dataset_attrs={}).abort()
    assert not dead.exists()
    assert live.exists()


def test_commit_replaces_an_older_group_of_the_same_name(tmp_path):
    cache = Cache(tmp_path / "c")
    write_group(cache, 5)
    write_group(cache, 9)
    assert cache.read("ds", "g").features.shape == (9, 8)
    assert [g for _, g, _ in cache.groups()] == ["g"]


def test_a_folder_that_is_not_a_cache_is_refused(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    with pytest.raises(CacheError, match="not a featurecache cache"):
        Cache(tmp_path / "photos").writer("ds", "g", feature_dim=2, dataset_attrs={})
    with pytest.raises(CacheError, match="no cache"):
        Cache(tmp_path / "missing").check()


def test_missing_group_is_a_clear_error(tmp_path):
    cache = Cache(tmp_path / "c")
    write_group(cache, 3)
    with pytest.raises(CacheError, match="no group ds/other"):
        cache.read("ds", "other")
    assert cache.nbytes("ds", "g") > 0
