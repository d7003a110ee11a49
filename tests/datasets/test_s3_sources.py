"""Images on a real S3-compatible server (moto on loopback, behind a counting, faulty
proxy: tests/s3server.py): WebDataset shards, Parquet and image folders at s3:// URLs.

Requests go over HTTP, so the server counts them: a no-op refresh makes no GET of image
bytes, and each shard is fetched whole once per process. Faults are real too: dropped
connections, objects deleted after listing, truncated shards, the server going down.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from featurecache.cache import Cache
from featurecache.config import BackboneConfig, DatasetConfig
from featurecache.datasets import fetching, list_dataset, objects
from featurecache.extraction import extract
from tests.conftest import assert_same_numbers, invoke, json_or_none, sigkill_when, workspace
from tests.datasets import sources
from tests.datasets.sources import CLASSES, pipeline_for
from tests.s3server import s3_fixture

BUCKET = "images"
SIZE = 64

s3server = s3_fixture(BUCKET)


@pytest.fixture(scope="module")
def photos(datasets_dir):
    return sources.pick_photos(datasets_dir, {"train": 4, "test": 2})


@pytest.fixture(scope="module")
def local(tmp_path_factory, photos):
    """The photos as a local folder and local shards, and the folder's features."""
    root = tmp_path_factory.mktemp("s3-sources")
    folder = sources.write_folder(photos, root / "folder")
    shards = sources.write_shards(photos, root / "shards")
    cache = root / "reference-cache"
    [result] = extract(pipeline_for(DatasetConfig(name="folder", path=folder), cache))
    fs = Cache(cache).read(result.dataset, result.group)
    reference = dict(zip(fs.keys, fs.X, strict=True))
    labels = {k: fs.class_names[y] for k, y in zip(fs.keys, fs.y, strict=True)}
    return folder, shards, reference, labels


def upload(server, local_files: dict[str, list[Path]], prefix: str) -> dict[str, list[str]]:
    client = server.client()
    urls: dict[str, list[str]] = {}
    for split, paths in local_files.items():
        for path in paths:
            client.put_object(Bucket=BUCKET, Key=f"{prefix}/{path.name}", Body=path.read_bytes())
            urls.setdefault(split, []).append(f"s3://{BUCKET}/{prefix}/{path.name}")
    return urls


def shard_dataset(urls: dict[str, list[str]]) -> DatasetConfig:
    return DatasetConfig(name="shards", files=urls, classes=CLASSES)


def write_pipeline(
    path: Path, urls: dict[str, list[str]], weights: str = "none", size: int = SIZE
) -> Path:
    """A pipeline file for the shards at ``urls`` (by split), as a user would write it."""
    import tomli_w

    doc = {
        "name": "shards",
        "batch_size": 8,
        "datasets": [{"name": "shards", "classes": list(CLASSES), "files": urls}],
        "backbones": [{"name": "mobilenet_v2", "weights": weights, "input_size": size}],
    }
    path.write_text(tomli_w.dumps(doc))
    return path


def features_by_key(cache, result):
    fs = Cache(cache).read(result.dataset, result.group)
    return dict(zip(fs.keys, fs.X, strict=True)), {
        k: fs.class_names[y] for k, y in zip(fs.keys, fs.y, strict=True)
    }


def test_shards_on_s3_give_the_folders_keys_and_features_and_a_noop_refresh_gets_nothing(
    s3server, local, tmp_path
):
    _, shards, reference, labels = local
    # a prefix of its own: this process keeps the objects it fetched (same URL and ETag)
    urls = upload(s3server, shards, "once")
    cache = tmp_path / "cache"
    [result] = extract(pipeline_for(shard_dataset(urls), cache))
    found, found_labels = features_by_key(cache, result)
    assert found.keys() == reference.keys() and found_labels == labels
    for key, row in found.items():
        assert_same_numbers(row, reference[key])
    # each shard was fetched whole, once: listing and extracting share the local copy
    gets = s3server.object_gets(f"{BUCKET}/once/")
    assert sorted(r.key for r in gets) == sorted(
        u.split("/", 3)[3] for v in urls.values() for u in v
    )
    assert all(r.range is None for r in gets)

    s3server.clear()
    [again] = extract(pipeline_for(shard_dataset(urls), cache))
    assert again.cache_hit
    assert s3server.object_gets() == []  # not one GET of image bytes: the stat index


def test_connections_dropped_mid_shard_are_retried_and_give_the_same_result(
    s3server, local, tmp_path
):
    _, shards, reference, _ = local
    urls = upload(s3server, shards, "drops")  # a prefix of its own: not fetched before
    # s3fs resumes a cut download itself, 5 tries in all; 6 drops in a row outlast it,
    # so featurecache's own retry (a whole new fetch, checked against the listing) is needed
    s3server.drop_after("drops/train-000001.tar", n_bytes=10_000, times=6)
    cache = tmp_path / "cache"
    [result] = extract(pipeline_for(shard_dataset(urls), cache))
    assert not result.skipped
    found, _ = features_by_key(cache, result)
    assert found.keys() == reference.keys()
    for key, row in found.items():
        assert_same_numbers(row, reference[key])
    gets = [r for r in s3server.object_gets() if r.key.endswith("train-000001.tar")]
    assert len(gets) >= 7  # six cut short, then whole


def test_an_object_deleted_after_listing_is_skipped_and_named_with_exit_code_3(
    s3server, local, tmp_path, monkeypatch
):
    _, shards, reference, _ = local
    urls = upload(s3server, shards, "deleted")
    gone = urls["train"][2]
    real = objects.stat_objects

    def list_then_delete(found):
        stats = real(found)
        s3server.client().delete_object(Bucket=BUCKET, Key=gone.split("/", 3)[3])
        return stats

    monkeypatch.setattr("featurecache.datasets.sharded.stat_objects", list_then_delete)
    pipeline = write_pipeline(tmp_path / "shards.toml", urls)
    done = invoke("extract", pipeline, "--cache", tmp_path / "cache", "--json")
    assert done.exit_code == 3, done.output
    [result] = json.loads(done.stdout)["extract"]
    assert [s["source"] for s in result["skipped"]] == [gone]
    assert "gone since it was listed" in result["skipped"][0]["reason"]
    with tarfile.open(shards["train"][2]) as tar:
        in_shard = sum(1 for name in tar.getnames() if name.endswith(".jpg"))
    assert result["n_images"] == len(reference) - in_shard


def test_a_folder_on_s3_lists_with_stats_and_reads_each_image_once(s3server, local, tmp_path):
    folder, _, reference, labels = local
    client = s3server.client()
    for path in sorted(folder.rglob("*.jpg")):
        client.put_object(
            Bucket=BUCKET, Key=f"folder/{path.relative_to(folder)}", Body=path.read_bytes()
        )
    dataset = DatasetConfig(name="remote", path=f"s3://{BUCKET}/folder")
    listing = list_dataset(dataset)
    assert s3server.object_gets() == []  # listing reads no image
    assert listing.split_counts() == {"train": 40, "test": 20}
    cache = tmp_path / "cache"
    [result] = extract(pipeline_for(dataset, cache))
    found, found_labels = features_by_key(cache, result)
    assert found.keys() == reference.keys() and found_labels == labels
    assert len(s3server.object_gets(f"{BUCKET}/folder/")) == len(reference)
    s3server.clear()
    [again] = extract(pipeline_for(dataset, cache))
    assert again.cache_hit and s3server.object_gets() == []


def test_a_truncated_shard_on_s3_keeps_the_images_before_the_damage(s3server, local, tmp_path):
    _, shards, _, _ = local
    urls = upload(s3server, {"test": shards["test"]}, "cut")
    whole = shards["train"][0].read_bytes()
    s3server.client().put_object(Bucket=BUCKET, Key="cut/cut.tar", Body=whole[: len(whole) // 3])
    urls["train"] = [f"s3://{BUCKET}/cut/cut.tar"]
    [result] = extract(pipeline_for(shard_dataset(urls), tmp_path / "cache"))
    [damage] = [s for s in result.skipped if s["source"] == urls["train"][0]]
    assert "cut short" in damage["reason"] or "damaged" in damage["reason"]
    assert 0 < result.split_counts["train"] < 16


def test_missing_credentials_say_which_variables_to_set(s3server, local, monkeypatch, tmp_path):
    _, shards, _, _ = local
    urls = upload(s3server, shards, "creds")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    pipeline = write_pipeline(tmp_path / "shards.toml", urls)
    done = invoke("extract", pipeline, "--cache", tmp_path / "cache")
    assert done.exit_code not in (0, 3), done.output
    line = done.output.strip().splitlines()[-1]
    assert "AWS_ACCESS_KEY_ID" in line and "AWS_SECRET_ACCESS_KEY" in line, done.output
    assert "Traceback" not in done.output


def test_the_server_down_stops_with_one_line_and_a_rerun_resumes(
    s3server, local, tmp_path, monkeypatch
):
    _, shards, reference, _ = local
    urls = upload(s3server, shards, "down")
    pipeline = write_pipeline(tmp_path / "shards.toml", urls)
    cache = tmp_path / "cache"
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries: fail in seconds

    s3server.stop()  # down before the run: listing fails, nothing is written
    done = invoke("extract", pipeline, "--cache", cache)
    assert done.exit_code == 1 and "cannot reach the storage server" in done.output
    assert len(done.output.strip().splitlines()) == 1 and "Traceback" not in done.output
    assert not Cache(cache).exists() or not Cache(cache).datasets()

    # down in the middle: the run stops when a shard cannot be fetched, after the
    # shards already read, and commits nothing
    s3server.start()
    monkeypatch.setattr(fetching, "FETCH_ATTEMPTS", 2)
    real = fetching.FETCHED.open
    fetched = []

    def stop_after_two(stat):
        if len(fetched) == 2:
            s3server.stop()
        fetched.append(stat.url)
        return real(stat)

    monkeypatch.setattr(fetching.FETCHED, "open", stop_after_two)
    done = invoke("extract", pipeline, "--cache", cache)
    assert done.exit_code == 1, done.output
    assert "cannot reach the storage server" in done.output.strip().splitlines()[-1]
    assert not Cache(cache).datasets()

    s3server.start()
    again = invoke("extract", pipeline, "--cache", cache, "--json")
    assert again.exit_code == 0, again.output
    [result] = json.loads(again.stdout)["extract"]
    found, _ = features_by_key(cache, _Result(result))
    assert found.keys() == reference.keys()
    for key, row in found.items():
        assert_same_numbers(row, reference[key])


class _Result:
    def __init__(self, doc):
        self.dataset, self.group = doc["dataset"], doc["group"]


def test_sigkill_mid_run_then_rerun_resumes_by_shard_and_is_bit_identical(
    s3server, local, tmp_path
):
    _, shards, reference, _ = local
    urls = upload(s3server, shards, "killed")
    pipeline = write_pipeline(tmp_path / "shards.toml", urls)
    cache = tmp_path / "cache"
    args = [sys.executable, "-m", "featurecache", "-q", "extract", str(pipeline)]
    args += ["--cache", str(cache), "--no-progress", "--json"]

    def staged() -> bool:
        for meta in workspace(cache).glob("staging/*/*/*/zarr.json"):
            doc = json_or_none(meta)
            if doc and doc["attributes"].get("progress", {}).get("records_done", 0) >= 16:
                return True
        return False

    sigkill_when(args, staged)
    assert not Cache(cache).datasets()  # nothing committed
    s3server.clear()
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)["extract"]
    assert (
        result["n_resumed"] >= 16 and result["n_extracted"] == len(reference) - result["n_resumed"]
    )
    found, _ = features_by_key(cache, _Result(result))
    assert found.keys() == reference.keys()
    for key, row in found.items():
        assert_same_numbers(row, reference[key])
    # the killed run had indexed every shard: the rerun listed none of them again, and
    # fetched only the shards whose images it still had to compute
    gets = {r.key for r in s3server.object_gets()}
    assert len(gets) < sum(len(v) for v in urls.values())


@pytest.mark.real_weights
def test_shards_on_s3_on_two_dask_workers_match_the_local_folder(s3server, local, tmp_path):
    """The acceptance run, scaled down: shards on the S3 server, a 2-worker LocalCluster,
    the real ImageNet weights (as tests/extraction/test_dask.py: random weights are not
    made alike in every process), against the local folder in this process."""
    folder, shards, _, labels = local
    reference_cache = tmp_path / "reference"
    [ref] = extract(
        dataclasses.replace(
            pipeline_for(DatasetConfig(name="folder", path=folder), reference_cache),
            backbones=(BackboneConfig(name="mobilenet_v2", weights="imagenet", input_size=224),),
        )
    )
    reference, _ = features_by_key(reference_cache, ref)
    urls = upload(s3server, shards, "cluster")
    pipeline = write_pipeline(tmp_path / "shards.toml", urls, weights="imagenet", size=224)
    cache = tmp_path / "cache"
    done = invoke("extract", pipeline, "--cache", cache, "--workers", 2, "--json")
    assert done.exit_code == 0, done.output
    [result] = json.loads(done.stdout)["extract"]
    assert result["execution"].startswith("dask")
    found, found_labels = features_by_key(cache, _Result(result))
    assert found.keys() == reference.keys() and found_labels == labels
    for key, row in found.items():
        assert_same_numbers(row, reference[key])
    # the workers read the shards (for the index, then for the pixels); this process none
    assert not [u for u, _ in fetching.FETCHED._files if "/cluster/" in u]
    assert {r.key for r in s3server.object_gets()} == {
        u.split("/", 3)[3] for v in urls.values() for u in v
    }


def test_a_csv_manifest_on_s3_whose_rows_are_urls(s3server, local, tmp_path):
    folder, _, reference, labels = local
    client = s3server.client()
    rows = ["path,label,split"]
    for path in sorted(folder.rglob("*.jpg")):
        split, label = path.relative_to(folder).parts[:2]
        key = f"manifest/{split}/{label}/{path.name}"
        client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
        # half the rows as full URLs, half relative to the manifest
        rows.append(
            f"{f's3://{BUCKET}/{key}' if len(rows) % 2 else key.split('/', 1)[1]},{label},{split}"
        )
    client.put_object(Bucket=BUCKET, Key="manifest/images.csv", Body="\n".join(rows).encode())
    dataset = DatasetConfig(name="manifest", path=f"s3://{BUCKET}/manifest/images.csv")
    assert dataset.format == "csv"
    cache = tmp_path / "cache"
    [result] = extract(pipeline_for(dataset, cache))
    found, found_labels = features_by_key(cache, result)
    assert found.keys() == reference.keys() and found_labels == labels
    assert result.split_counts == {"train": 40, "test": 20}


def test_objects_with_the_same_name_in_two_folders_stay_apart(s3server, local):
    """Fetched copies are named by URL and version: train/000000.tar and test/000000.tar
    are two objects, whatever is fetched or evicted in between."""
    _, shards, _, _ = local
    client = s3server.client()
    urls: dict[str, list[str]] = {}
    expected = {}
    for split, paths in shards.items():
        for number, path in enumerate(paths):
            key = f"same/{split}/{number:06d}.tar"
            client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
            urls.setdefault(split, []).append(f"s3://{BUCKET}/{key}")
        expected[split] = {
            r.key for r in list_dataset(shard_dataset({split: [str(p) for p in paths]})).records
        }
    listing = list_dataset(shard_dataset(urls))
    for split, keys in expected.items():
        assert {r.key for r in listing.records if r.split == split} == keys
        for index, record in enumerate(listing.records):
            if record.split == split:
                assert listing.load(index).key == record.key


def test_a_folder_is_listed_as_a_tree_of_class_folders_side_by_side(s3server):
    client = s3server.client()
    keys = ["tree/top.jpg", "tree/train/cat/a.jpg", "tree/train/cat/deep/b.jpg"]
    keys += [f"tree/{split}/dog/{i}.jpg" for split in ("train", "test") for i in range(3)]
    for key in keys:
        client.put_object(Bucket=BUCKET, Key=key, Body=key.encode())
    stats = objects.list_stats(f"s3://{BUCKET}/tree")
    assert sorted(stats) == sorted(f"s3://{BUCKET}/{key}" for key in keys)
    assert all(s.size == len(url.removeprefix(f"s3://{BUCKET}/")) for url, s in stats.items())
    assert s3server.object_gets() == []
    lists = [r for r in s3server.requests() if r.method == "GET" and not r.key]
    assert len(lists) == 1 + 2 + 3  # the root; train/ and test/; their 3 class folders
