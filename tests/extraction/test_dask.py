"""Scale-out: extraction on a real Dask LocalCluster, caches on S3 (moto) and memory://.

The cluster tests start real worker processes (each imports TensorFlow and
builds the backbone with the real ImageNet weights), so they are a couple of
minutes in all.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from featurecache.cache import Cache
from featurecache.config import load_pipeline
from featurecache.extraction.cluster import Cluster
from featurecache.extraction.dask import MAX_SHARD_BATCHES, shard_batches
from tests.conftest import assert_same_numbers, invoke, link_fingers, workspace

pytestmark = pytest.mark.real_weights

PER_CLASS = {"train": 20, "test": 6}  # x 6 classes, plus one corrupt file: 157 files
BATCH = 8
BUCKET = "featurecache-test"


@pytest.fixture(scope="module")
def fingers(tmp_path_factory, datasets_dir) -> Path:
    """A fingers subset (links to the real PNGs) with one corrupt image among them."""
    root = link_fingers(datasets_dir, tmp_path_factory.mktemp("fingers"), PER_CLASS)
    (root / "train" / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


@pytest.fixture(scope="module")
def pipeline_file(tmp_path_factory, fingers) -> Path:
    path = tmp_path_factory.mktemp("pipeline") / "fingers.toml"
    path.write_text(
        f"""name = "fingers-subset"
batch_size = {BATCH}
[[datasets]]
name = "fingers"
path = "{fingers}"
[[backbones]]
name = "mobilenet_v2"
weights = "imagenet"
[[heads]]
name = "logistic_regression"
kind = "logistic_regression"
"""
    )
    return path


@pytest.fixture(scope="module")
def local_run(pipeline_file, tmp_path_factory):
    """The reference: the same extraction in this process, no Dask."""
    cache = tmp_path_factory.mktemp("local") / "cache"
    result = invoke("extract", pipeline_file, "--cache", cache, "--no-progress", "--json")
    assert result.exit_code == 3, result.output  # 3: done, one image skipped
    extracted = json.loads(result.stdout)["extract"][0]
    return cache, extracted, Cache(cache).read(extracted["dataset"], extracted["group"])


def same_features(a, b) -> None:
    assert_same_numbers(a.X, b.X)  # bit for bit on TensorFlow
    for name in ("keys", "sources", "split", "y"):
        assert list(getattr(a, name)) == list(getattr(b, name)), name


def test_shards_are_whole_batches_of_bounded_size():
    assert shard_batches(1, 2) == 1
    assert shard_batches(16, 2) == 2  # 4 shards per worker
    assert shard_batches(20, 1) == 5
    assert shard_batches(10_000, 8) == MAX_SHARD_BATCHES
    assert shard_batches(3, 0) == 1


def test_local_cluster_of_two_worker_processes_gives_the_local_features(
    local_run, pipeline_file, tmp_path
):
    _, local, reference = local_run
    cache = tmp_path / "cache"
    result = invoke(
        "extract", pipeline_file, "--cache", cache, "--workers", 2, "--no-progress", "--json"
    )
    assert result.exit_code == 3, result.output
    extracted = json.loads(result.stdout)["extract"][0]
    assert extracted["execution"] == "dask (LocalCluster, 2 workers)"
    assert extracted["group"] == local["group"]
    assert extracted["n_extracted"] == local["n_extracted"] == 156
    assert extracted["skipped"] == local["skipped"]
    assert extracted["skipped"][0]["source"].endswith("broken.png")
    same_features(Cache(cache).read(extracted["dataset"], extracted["group"]), reference)
    assert not list((workspace(cache) / "staging").rglob("zarr.json"))  # the stage is removed
    # Nothing new: a cache hit, without starting any worker's backbone.
    again = invoke("extract", pipeline_file, "--cache", cache, "--workers", 2, "--json")
    assert json.loads(again.stdout)["extract"][0]["cache_hit"] is True


def stage_batches(cache: Path) -> int:
    for meta in workspace(cache).glob("staging/*/*/*/zarr.json"):
        try:
            return len(json.loads(meta.read_text())["attributes"]["progress"]["batches"])
        except (OSError, ValueError, KeyError):
            return 0
    return 0


def test_a_killed_worker_costs_only_its_shard(local_run, pipeline_file, tmp_path):
    from distributed import Client, LocalCluster

    _, local, reference = local_run
    cache = tmp_path / "cache"
    n_batches = -(-157 // BATCH)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        pipeline = load_pipeline(pipeline_file, cache=cache)
        outcome: dict = {}

        def extract() -> None:
            from featurecache.extraction import extract as run_extract

            try:
                outcome["results"] = run_extract(
                    pipeline, cluster=Cluster(scheduler=cluster.scheduler_address)
                )
            except BaseException as exc:  # reported by the assertion below
                outcome["error"] = exc

        thread = threading.Thread(target=extract)
        thread.start()
        deadline = time.monotonic() + 300
        while stage_batches(cache) < 2 and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        recorded_at_kill = stage_batches(cache)
        pids = client.run(os.getpid)
        os.kill(next(iter(pids.values())), signal.SIGKILL)
        thread.join(timeout=300)
        assert "error" not in outcome, outcome.get("error")
        assert 2 <= recorded_at_kill < n_batches, "the kill came after the last shard"
        log = client.run_on_scheduler(
            lambda dask_scheduler: [
                (t.key, t.finish)
                for t in dask_scheduler.transition_log
                if str(t.key).startswith("featurecache-")
            ]
        )
    finished: dict[str, int] = {}
    for key, state in log:
        finished[key] = finished.get(key, 0) + (state == "memory")
    # Every shard finished exactly once: the killed worker's shard was rerun
    # elsewhere, and no shard that had finished was computed again.
    assert finished and set(finished.values()) == {1}
    result = outcome["results"][0]
    assert result.n_extracted == local["n_extracted"]
    same_features(Cache(cache).read(result.dataset, result.group), reference)


@pytest.fixture
def s3(monkeypatch):
    """moto's S3 server on loopback, with credentials in the usual environment
    variables (which the Dask worker processes inherit)."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }.items():
        monkeypatch.setenv(name, value)
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield boto3.client("s3")
    server.stop()


def test_extract_on_workers_then_train_head_against_s3(local_run, pipeline_file, tmp_path, s3):
    _, local, reference = local_run
    url = f"s3://{BUCKET}/features"
    result = invoke(
        "extract", pipeline_file, "--cache", url, "--workers", 2, "--no-progress", "--json"
    )
    assert result.exit_code == 3, result.output
    extracted = json.loads(result.stdout)["extract"][0]
    same_features(Cache(url).read(extracted["dataset"], extracted["group"]), reference)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    group = f"features/fingers/{local['group']}"
    assert f"{group}/current" in keys and f"{group}/gen-000001/features/zarr.json" in keys
    # the stage (in the workspace .features.featurecache/, beside the cache) is removed
    assert not [k for k in keys if "staging/" in k]
    current = s3.get_object(Bucket=BUCKET, Key=f"{group}/current")["Body"].read()
    assert current == b"gen-000001"

    runs = tmp_path / "runs"
    trained = invoke("train-head", pipeline_file, "--cache", url, "--output", runs, "--json")
    assert trained.exit_code == 0, trained.output
    head = json.loads(trained.stdout)["heads"][0]
    assert head["accuracy"]["test"] > 0.8
    info = json.loads((Path(head["folder"]) / "head.json").read_text())
    assert info["cache"]["root"] == url
    described = invoke("info", "--cache", url, "--json")
    assert described.exit_code == 0, described.output
    summary = json.loads(described.stdout)
    assert summary["cache"] == url and summary["groups"][0]["n_images"] == 156
    # The local engine reads and writes the same store: nothing left to compute.
    again = invoke("extract", pipeline_file, "--cache", url, "--json")
    assert json.loads(again.stdout)["extract"][0]["cache_hit"] is True


def test_memory_store_round_trip_and_gc(class_folder, tmp_path):
    url = "memory://featurecache-test-cache"
    common = ["--data", class_folder, "--weights", "none", "--input-size", 32, "--cache", url]
    done = invoke(
        "run", *common, "--head", "logistic_regression", "--output", tmp_path / "runs", "--json"
    )
    assert done.exit_code == 0, done.output
    extracted = json.loads(done.stdout)["extract"][0]
    assert extracted["n_extracted"] == 30
    cache = Cache(url)
    assert cache.read(extracted["dataset"], extracted["group"]).X.shape[0] == 30
    # A second generation; gc then removes the first (superseded) one.
    (class_folder / "red" / "red_00.png").unlink()
    assert invoke("extract", *common).exit_code == 0
    assert len(cache.generations(extracted["dataset"], extracted["group"])) == 2
    collected = invoke("gc", "--cache", url, "--json")
    assert collected.exit_code == 0, collected.output
    assert len(cache.generations(extracted["dataset"], extracted["group"])) == 1
    assert cache.read(extracted["dataset"], extracted["group"]).X.shape[0] == 29


def test_cluster_options_fail_clearly(class_folder):
    common = ["extract", "--data", class_folder, "--weights", "none", "--input-size", 32]
    both = invoke(*common, "--workers", 2, "--scheduler", "tcp://127.0.0.1:1")
    assert both.exit_code == 1 and "either --scheduler" in both.output
    memory = invoke(*common, "--cache", "memory://nowhere", "--workers", 2)
    assert memory.exit_code == 1 and "Dask workers cannot reach" in memory.output
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there
    down = invoke(
        *common, "--cache", class_folder.parent / "c", "--scheduler", f"tcp://127.0.0.1:{port}"
    )
    assert down.exit_code == 1 and "cannot reach the Dask scheduler" in down.output
