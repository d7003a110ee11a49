"""Reading images where they live: a local folder vs WebDataset shards, local and on S3.

Two parts, in one run on this machine, against a real S3 server on loopback (moto behind
the counting proxy of tests/s3server.py, in this process: it shares the cores and the GIL
with the extraction, as no remote server would):

1. *Sources.* The same photos (all of clothing_small by default: 3,781 JPEGs in
   train/validation/test class folders) extracted from (a) the local folder (links to the
   photos), (b) local WebDataset shards (``webdataset.ShardWriter``, 128 photos per shard,
   one set of shards per split, as tests/datasets/sources.py writes them) and (c) the
   same shards on the S3 server, named by brace patterns
   (``s3://bench/shards-0/train-{000000..000023}.tar``), each into a fresh cache, in this
   process (no Dask): MobileNetV2 with its ImageNet weights, 224 px, Keras engine, batch
   32. An untimed extraction of a few photos first imports Keras and builds the model
   once, so no source pays for it. The speed of this (shared, virtual) machine drifts by
   up to 1.8x over minutes, so the three sources run in ``--rounds`` rounds, the order
   rotated each round, and the figures are medians over the rounds; each round's (c)
   reads its own copy of the shards (``shards-<round>/``), since a process keeps the
   objects it fetched. "wall s" is the whole ``extract`` call (listing and indexing
   included); "img/s" is images over the median wall, "vs folder" that rate over the
   folder's (also per round, and best wall against best wall). Where the time goes: the
   extraction's own profile (backbone, waiting for decoded images, writing) and,
   timed apart, ``list_dataset`` with a fresh stat index (for (c) on yet another copy of
   the shards, so that it fetches them as the extraction did). Bytes fetched are the
   sizes of the objects the server was asked for (each object GET counted at the
   proxy). Every cache must hold the folder's keys, labels and splits, and bit-identical
   features (``np.array_equal``, rows matched by key). Bar: (c) >= 0.8x the folder's rate.
2. *No-op refresh.* ``--objects`` tiny JPEGs (32x32 random pixels, Pillow) on the
   server as a folder of 10 class folders (``s3://bench/folder/<class>/``, one object per
   image), and ``--shards`` shards of 128 such JPEGs (train/validation/test by brace
   patterns). Each is extracted once into a local cache with MobileNetV2 with *random
   weights at 32 px* (the backbone's speed does not matter here), then the same
   extraction again: a cache hit. Per no-op: wall seconds (median of ``--repeats``), the
   object GETs it made at the server (image bytes) and all its requests (listings),
   ``list_dataset`` alone (with the cache's stat index) and the rest (planning: reading
   the cache's group attributes, comparing the fingerprint), plus a cProfile of one
   no-op by phase. The server's own time for one listing of every key (boto3's
   paginator, through the proxy and to moto directly) is the floor. Bar: <= 3 s, 0 GETs.

Usage: python benchmarks/sources.py [--images N] [--rounds 3] [--objects 10000]
[--shards 80] [--repeats 3] (run from the repository root, with ../shared beside it;
KERAS_HOME is pointed at a writable copy of ../shared/keras/models unless set). Prints a
Markdown table per part and writes benchmarks/results/sources.json.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import logging
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from _results import save  # benchmarks/_results.py: scripts run from this folder

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: What ``--server`` runs; the proxy that counts requests is always in this process.
SERVERS = {
    "process": "moto's server in its own process, behind tests/s3proxy.py, on loopback",
    "thread": "moto's ThreadedMotoServer in this process, behind tests/s3proxy.py, on loopback",
}
RESULTS = REPO / "benchmarks" / "results" / "sources.json"
SHARED = REPO.parent / "shared"
BUCKET = "bench"
PER_SHARD = 128
SPLITS = ("train", "validation", "test")
#: Phases of a no-op extraction in its cProfile: (label, file, function), cumulative.
PHASES = (
    ("extract (all)", "extraction/extract.py", "extract"),
    ("list_dataset", "datasets/listing.py", "list_dataset"),
    ("- recursive listing (folder)", "datasets/files.py", "list_folder_url"),
    ("- brace expansion (shards)", "datasets/objects.py", "expand"),
    ("- stat_objects (ls per folder)", "datasets/objects.py", "stat_objects"),
    ("- read stat index (shards)", "datasets/index.py", "_read"),
    ("- records from index (shards)", "datasets/sharded.py", "_records"),
    ("- fingerprint", "datasets/listing.py", "fingerprint"),
    ("plan_backbone (cache lookup)", "extraction/job.py", "plan_backbone"),
)


def prepare_keras() -> None:
    """Point KERAS_HOME at a writable copy of ../shared/keras/models (Keras writes there);
    quiet TensorFlow's retracing warnings (each extraction builds its model anew)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if "KERAS_HOME" not in os.environ:
        home = Path(tempfile.mkdtemp(prefix="fc-bench-keras-home-"))
        shutil.copytree(SHARED / "keras" / "models", home / "models")
        os.environ["KERAS_HOME"] = str(home)


def spread(items: Sequence[Any], n: int) -> list[Any]:
    """``n`` of ``items`` evenly spread (every split and class kept), in their order."""
    if n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def upload(client: Any, objects: dict[str, Path | bytes]) -> None:
    """Put each local file (or bytes) at its key, directly to moto (not counted), on 8
    threads."""

    def put(key: str, body: Path | bytes) -> None:
        data = body.read_bytes() if isinstance(body, Path) else body
        client.put_object(Bucket=BUCKET, Key=key, Body=data)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, objects, objects.values()))


def brace_urls(prefix: str, shards: dict[str, list[Path]]) -> dict[str, list[str]]:
    """``{split: ["s3://bench/<prefix>/<split>-{000000..NNNNNN}.tar"]}``."""
    return {
        split: [f"s3://{BUCKET}/{prefix}/{split}-{{000000..{len(paths) - 1:06d}}}.tar"]
        for split, paths in shards.items()
    }


def shard_keys(prefix: str, shards: dict[str, list[Path]]) -> dict[str, Path]:
    return {f"{prefix}/{p.name}": p for paths in shards.values() for p in paths}


def traffic(server: Any, sizes: dict[str, int]) -> dict[str, int]:
    """What reached the server since the last clear(): object GETs, their bytes (by the
    objects' sizes; whole objects only), listings and every request."""
    requests = server.requests()
    gets = [r for r in requests if r.is_object_get]
    return {
        "object_gets": len(gets),
        "ranged_gets": sum(r.range is not None for r in gets),
        "bytes_fetched": sum(sizes.get(r.key, 0) for r in gets if r.range is None),
        "list_requests": sum(r.method == "GET" and not r.key for r in requests),
        "requests": len(requests),
    }


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = function()
    return out, time.perf_counter() - start


def by_key(cache: Path, result: Any) -> dict[str, Any]:
    """A cache's rows sorted by content key: keys, labels (names), splits, features."""
    from featurecache.cache import Cache

    fs = Cache(cache).read(result.dataset, result.group)
    order = np.argsort(fs.keys.astype(str), kind="stable")
    return {
        "keys": fs.keys[order].astype(str),
        "labels": np.asarray(fs.class_names, dtype=object)[fs.y[order]],
        "split": fs.split[order],
        "X": fs.X[order],
    }


def pipeline_for(name: str, dataset: Any, cache: Path, *, weights: str, size: int, batch: int):
    from featurecache.config import BackboneConfig, Pipeline

    backbone = BackboneConfig(name="mobilenet_v2", weights=weights, input_size=size, engine="keras")
    return Pipeline(
        name=name,
        datasets=(dataset,),
        backbones=(backbone,),
        heads=(),
        cache=cache,
        output=cache.parent / "runs",
        batch_size=batch,
    )


# -- part 1: the same photos from three sources ------------------------------------------------

FOLDER, LOCAL_SHARDS, S3_SHARDS = "local folder", "local shards", "shards on S3"
SOURCES = (FOLDER, LOCAL_SHARDS, S3_SHARDS)


def extract_source(label: str, dataset: Any, cache: Path, server: Any, sizes: dict[str, int]):
    """Extract ``dataset`` into the fresh ``cache``: what the run took, and its rows by key."""
    from featurecache.extraction import extract

    pipeline = pipeline_for("sources", dataset, cache, weights="imagenet", size=224, batch=32)
    server.clear()
    [result], wall = timed(lambda: extract(pipeline))
    profile = result.profile
    compute = sum(profile.get(k, 0.0) for k in ("backbone", "waiting", "writing"))
    run = {
        "images": result.n_extracted,
        "skipped": len(result.skipped),
        "wall_seconds": wall,
        "compute_images_per_second": result.images_per_second,
        "profile_seconds": profile,
        "outside_compute_seconds": wall - compute,
        "server": traffic(server, sizes),
    }
    print(f"{label}: {wall:.1f} s, {result.n_extracted / wall:.1f} img/s, {profile}", flush=True)
    return run, by_key(cache, result)


def time_listing(dataset: Any, server: Any, sizes: dict[str, int]) -> dict[str, Any]:
    """``list_dataset`` alone with a fresh (in-memory) stat index: seconds and traffic."""
    from featurecache.datasets import ObjectIndex, list_dataset

    server.clear()
    listing, seconds = timed(lambda: list_dataset(dataset, ObjectIndex()))
    listing.close()
    return {"seconds": seconds, "records": len(listing.records), **traffic(server, sizes)}


def compare(rows: dict[str, Any], reference: dict[str, Any]) -> dict[str, bool]:
    same_keys = np.array_equal(rows["keys"], reference["keys"])
    return {
        "same_keys": bool(same_keys),
        "same_labels_and_splits": bool(
            same_keys
            and np.array_equal(rows["labels"], reference["labels"])
            and np.array_equal(rows["split"], reference["split"])
        ),
        "identical_features": bool(same_keys and np.array_equal(rows["X"], reference["X"])),
    }


def summarize(label: str, runs: list[dict[str, Any]], folder: list[dict[str, Any]]):
    """One source's row: medians over its rounds, and its rate against the folder's
    (ratio of median walls; per round; best against best)."""
    walls = [r["wall_seconds"] for r in runs]
    base = [r["wall_seconds"] for r in folder]
    images = runs[0]["images"]
    return {
        "source": label,
        "images": images,
        "wall_seconds": walls,
        "wall_seconds_median": statistics.median(walls),
        "images_per_second": images / statistics.median(walls),
        "vs_folder": statistics.median(base) / statistics.median(walls),
        "vs_folder_per_round": [f / w for f, w in zip(base, walls, strict=True)],
        "vs_folder_best": min(base) / min(walls),
        "compute_images_per_second": statistics.median(
            r["compute_images_per_second"] for r in runs
        ),
        "profile_seconds": {
            k: statistics.median(r["profile_seconds"].get(k, 0.0) for r in runs)
            for k in ("backbone", "waiting", "writing")
        },
        "outside_compute_seconds": statistics.median(r["outside_compute_seconds"] for r in runs),
        "server": runs[0]["server"],
        "object_gets_max": max(r["server"]["object_gets"] for r in runs),
        "same_keys": all(r["same_keys"] and r["same_labels_and_splits"] for r in runs),
        "identical_features": all(r["identical_features"] for r in runs),
        "runs": runs,
    }


def part_sources(n_images: int, rounds: int, server: Any, work: Path) -> dict[str, Any]:
    from featurecache.config import DatasetConfig
    from featurecache.extraction import extract
    from tests.datasets import sources

    everything = sources.pick_photos(SHARED / "datasets", {s: 1 << 30 for s in SPLITS})
    photos = spread(everything, n_images)
    folder = sources.write_folder(photos, work / "folder")  # links to the photos
    shards = sources.write_shards(photos, work / "shards", per_shard=PER_SHARD)
    # A copy of the shards per round, and one to list: this process keeps what it fetched
    # (same URL and ETag), so each S3 extraction must read objects it never fetched.
    prefixes = [f"shards-{r}" for r in range(rounds)] + ["listing"]
    sizes = {}
    for prefix in prefixes:
        upload(server.client(), dict(shard_keys(prefix, shards)))
        sizes |= {k: p.stat().st_size for k, p in shard_keys(prefix, shards).items()}

    def dataset(label: str, prefix: str) -> DatasetConfig:
        if label == FOLDER:
            return DatasetConfig(name="sources", path=folder)
        files = {s: [str(p) for p in ps] for s, ps in shards.items()}
        if label == S3_SHARDS:
            files = brace_urls(prefix, shards)
        # the shards' .cls are indices into CLASSES (the folder's sorted class names)
        return DatasetConfig(name="sources", files=files, classes=sources.CLASSES)

    warm = sources.write_folder(photos[:: max(1, len(photos) // 48)], work / "warmup")
    warmup = DatasetConfig(name="warmup", path=warm)
    extract(
        pipeline_for("w", warmup, work / "warmup-cache", weights="imagenet", size=224, batch=32)
    )
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in SOURCES}
    reference = None
    for r in range(rounds):  # the order rotates: each source runs first, second and third
        for label in SOURCES[r % 3 :] + SOURCES[: r % 3]:
            cache = work / f"cache-{r}-{SOURCES.index(label)}"
            run, found = extract_source(label, dataset(label, prefixes[r]), cache, server, sizes)
            reference = reference if reference is not None else found
            runs[label].append({"round": r, **run, **compare(found, reference)})
    rows = [summarize(label, runs[label], runs[FOLDER]) for label in SOURCES]
    for row in rows:
        row["listing"] = time_listing(dataset(row["source"], "listing"), server, sizes)
    return {
        "photos": len(photos),
        "photos_bytes": sum(p.path.stat().st_size for p in photos),
        "shards": {s: len(p) for s, p in shards.items()},
        "shards_bytes": sum(p.stat().st_size for ps in shards.values() for p in ps),
        "rounds": rounds,
        "rows": rows,
        "bar_s3_vs_folder": 0.8,
        "bar_met": rows[2]["vs_folder"] >= 0.8,
    }


# -- part 2: a no-op refresh over many objects on the server --------------------------------


def tiny_jpegs(n: int, seed: int) -> list[bytes]:
    """``n`` distinct 32x32 JPEGs of random pixels (quality 90)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            buf, format="JPEG", quality=90
        )
        out.append(buf.getvalue())
    return out


def tiny_folder(n: int, server: Any) -> tuple[Any, dict[str, int], str]:
    """``n`` tiny JPEGs at ``s3://bench/folder/<class>/NNNNNN.jpg``: the data set, sizes."""
    from featurecache.config import DatasetConfig
    from tests.datasets.sources import CLASSES

    objects = {
        f"folder/{CLASSES[i % len(CLASSES)]}/{i:06d}.jpg": data
        for i, data in enumerate(tiny_jpegs(n, seed=0))
    }
    upload(server.client(), dict(objects))
    sizes = {k: len(v) for k, v in objects.items()}
    return DatasetConfig(name="folder", path=f"s3://{BUCKET}/folder"), sizes, "folder/"


def tiny_shards(n_shards: int, server: Any, root: Path) -> tuple[Any, dict[str, int], str]:
    """``n_shards`` shards of 128 tiny JPEGs (a tenth each for validation and test) at
    ``s3://bench/tiny/<split>-NNNNNN.tar``: the data set, sizes."""
    import webdataset as wds

    from featurecache.config import DatasetConfig
    from tests.datasets.sources import CLASSES

    held_out = max(1, n_shards // 10)
    counts = {"train": n_shards - 2 * held_out, "validation": held_out, "test": held_out}
    images = iter(enumerate(tiny_jpegs(n_shards * PER_SHARD, seed=1)))
    root.mkdir(parents=True)
    shards: dict[str, list[Path]] = {}
    for split, count in counts.items():
        with wds.ShardWriter(str(root / f"{split}-%06d.tar"), maxcount=PER_SHARD, verbose=0) as w:
            for i, data in (next(images) for _ in range(count * PER_SHARD)):
                w.write({"__key__": f"{i:06d}", "jpg": data, "cls": i % len(CLASSES)})
        shards[split] = sorted(root.glob(f"{split}-*.tar"))
    keys = shard_keys("tiny", shards)
    upload(server.client(), dict(keys))
    sizes = {k: p.stat().st_size for k, p in keys.items()}
    dataset = DatasetConfig(name="tiny", files=brace_urls("tiny", shards), classes=CLASSES)
    return dataset, sizes, "tiny/"


def raw_listing(client: Any, prefix: str) -> tuple[float, int]:
    """The server's own time to list every key under ``prefix`` once (boto3's paginator,
    1,000 keys a page): seconds and pages."""
    start = time.perf_counter()
    pages = list(client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix))
    return time.perf_counter() - start, len(pages)


def profile_phases(function: Callable[[], Any]) -> dict[str, float]:
    """Cumulative seconds of each of :data:`PHASES` in a cProfile of ``function()``."""
    profiler = cProfile.Profile()
    profiler.runcall(function)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    out = {}
    for label, file, name in PHASES:
        found = [v[3] for (f, _, n), v in stats.items() if f.endswith(file) and n == name]
        if found:
            out[label] = max(found)
    return out


def noop(label: str, made: tuple[Any, dict[str, int], str], server: Any, work: Path, repeats: int):
    """Extract once, then time the no-op extraction (a cache hit) ``repeats`` times."""
    import boto3

    from featurecache.cache import Cache
    from featurecache.datasets import ObjectIndex, list_dataset
    from featurecache.extraction import extract

    dataset, sizes, prefix = made
    cache = work / f"noop-{dataset.name}"
    pipeline = pipeline_for("noop", dataset, cache, weights="none", size=32, batch=32)
    server.clear()
    [first], first_wall = timed(lambda: extract(pipeline))
    first_traffic = traffic(server, sizes)
    print(f"{label}: first extraction {first_wall:.1f} s, {first_traffic}", flush=True)
    walls, seen = [], []
    for _ in range(repeats):
        server.clear()
        [again], wall = timed(lambda: extract(pipeline))
        if not again.cache_hit:
            raise SystemExit(f"{label}: the second extraction was not a cache hit")
        walls.append(wall)
        seen.append(traffic(server, sizes))
    index_url = Cache(cache).object_index_url(dataset.name)
    lists = [
        timed(lambda: list_dataset(dataset, ObjectIndex(index_url)))[1] for _ in range(repeats)
    ]
    floor, pages = raw_listing(boto3.client("s3"), prefix)  # the proxy: AWS_ENDPOINT_URL
    moto, _ = raw_listing(server.client(), prefix)  # moto itself, past the proxy
    row = {
        "variant": label,
        "objects": len(sizes),
        "images": first.n_images,
        "first_extract_seconds": first_wall,
        "first_extract_server": first_traffic,
        "noop_seconds": walls,
        "noop_seconds_median": statistics.median(walls),
        "noop_server": seen,
        "list_dataset_seconds_median": statistics.median(lists),
        "rest_seconds": statistics.median(walls) - statistics.median(lists),
        "raw_listing_seconds": floor,
        "raw_listing_pages": pages,
        "raw_listing_seconds_moto_direct": moto,
        "profile_cumulative_seconds": profile_phases(lambda: extract(pipeline)),
    }
    row["bar_met"] = row["noop_seconds_median"] <= 3.0 and all(t["object_gets"] == 0 for t in seen)
    print(f"{label}: no-op {walls} s, {seen[0]}", flush=True)
    return row


# -- tables and main ------------------------------------------------------------------------------


Column = tuple[str, Callable[[dict[str, Any]], Any]]

SOURCE_COLUMNS: tuple[Column, ...] = (
    ("source", lambda r: r["source"]),
    ("images", lambda r: r["images"]),
    ("wall s by round", lambda r: ", ".join(f"{w:.1f}" for w in r["wall_seconds"])),
    ("img/s (median wall)", lambda r: f"{r['images_per_second']:.1f}"),
    ("vs folder", lambda r: f"{r['vs_folder']:.2f}"),
    ("vs folder by round", lambda r: ", ".join(f"{v:.2f}" for v in r["vs_folder_per_round"])),
    ("best vs best", lambda r: f"{r['vs_folder_best']:.2f}"),
    ("compute img/s", lambda r: f"{r['compute_images_per_second']:.1f}"),
    ("backbone s", lambda r: f"{r['profile_seconds']['backbone']:.1f}"),
    ("waiting s", lambda r: f"{r['profile_seconds']['waiting']:.1f}"),
    ("writing s", lambda r: f"{r['profile_seconds']['writing']:.2f}"),
    ("outside compute s", lambda r: f"{r['outside_compute_seconds']:.1f}"),
    ("list_dataset s", lambda r: f"{r['listing']['seconds']:.2f}"),
    ("object GETs", lambda r: r["server"]["object_gets"]),
    ("MB fetched", lambda r: f"{r['server']['bytes_fetched'] / 1e6:.1f}"),
    ("same keys", lambda r: "yes" if r["same_keys"] else "NO"),
    ("identical features", lambda r: "yes" if r["identical_features"] else "NO"),
)

NOOP_COLUMNS: tuple[Column, ...] = (
    ("variant", lambda r: r["variant"]),
    ("objects", lambda r: r["objects"]),
    ("images", lambda r: r["images"]),
    ("first extract s", lambda r: f"{r['first_extract_seconds']:.1f}"),
    ("first GETs", lambda r: r["first_extract_server"]["object_gets"]),
    ("no-op s", lambda r: f"{r['noop_seconds_median']:.2f}"),
    ("no-op GETs", lambda r: max(t["object_gets"] for t in r["noop_server"])),
    ("no-op LISTs", lambda r: r["noop_server"][0]["list_requests"]),
    ("no-op requests", lambda r: r["noop_server"][0]["requests"]),
    ("list_dataset s", lambda r: f"{r['list_dataset_seconds_median']:.2f}"),
    ("rest s", lambda r: f"{r['rest_seconds']:.2f}"),
    (
        "one raw listing s (pages; moto alone)",
        lambda r: (
            f"{r['raw_listing_seconds']:.2f} ({r['raw_listing_pages']}; "
            f"{r['raw_listing_seconds_moto_direct']:.2f})"
        ),
    ),
    ("bar", lambda r: "met" if r["bar_met"] else "NOT met"),
)


def table(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table: one row per item of ``rows``, one column per ``(header, cell)``."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell(r)) for _, cell in columns) + " |" for r in rows]
    return "\n".join(lines)


def print_sources(part: dict[str, Any]) -> None:
    print(
        f"\nPart 1: {part['photos']} clothing_small photos ({part['photos_bytes'] / 1e6:.1f} MB;"
        f" shards {part['shards']}, {part['shards_bytes'] / 1e6:.1f} MB), MobileNetV2 "
        f"ImageNet 224 px, Keras engine, batch 32, in this process; {part['rounds']} rounds, "
        "the order rotated each round; medians over the rounds\n"
    )
    print(table(SOURCE_COLUMNS, part["rows"]))
    verdict = "met" if part["bar_met"] else "NOT met"
    print(f"\nBar: shards on S3 >= 0.8x the folder's rate: {verdict}")


def print_noop(part: dict[str, Any]) -> None:
    print(
        "\nPart 2: no-op refresh on the S3 server (MobileNetV2 with RANDOM weights at 32 px, "
        f"Keras engine, batch 32: the backbone does not matter); median of {part['repeats']}\n"
    )
    print(table(NOOP_COLUMNS, part["rows"]))
    print("\nWhere one no-op's time goes (cProfile, cumulative s, profiler overhead included)\n")
    variants = [r["variant"] for r in part["rows"]]
    columns: list[Column] = [("phase", lambda p: p["phase"])]
    columns += [(v, lambda p, v=v: f"{p[v]:.2f}") for v in variants]
    phases = [
        {
            "phase": label,
            **{r["variant"]: r["profile_cumulative_seconds"].get(label, 0.0) for r in part["rows"]},
        }
        for label, _, _ in PHASES
    ]
    print(table(columns, phases))


def part_noop(args: argparse.Namespace, server: Any, work: Path) -> dict:
    """Part 2: the tiny objects made and uploaded, then each variant's no-op timed."""
    (folder, shards), upload_seconds = timed(
        lambda: (
            tiny_folder(args.objects, server),
            tiny_shards(args.shards, server, work / "tiny"),
        )
    )
    print(f"made and uploaded the tiny objects in {upload_seconds:.0f} s", flush=True)
    noops = {
        "repeats": args.repeats,
        "rows": [
            noop(label, made, server, work, args.repeats)
            for label, made in (("folder", folder), ("shards", shards))
        ],
    }
    print_noop(noops)
    return noops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None, help="default: all of clothing_small")
    parser.add_argument("--rounds", type=int, default=3, help="part 1: rounds of 3 sources")
    parser.add_argument("--objects", type=int, default=10_000, help="part 2: the folder's")
    parser.add_argument("--shards", type=int, default=80, help="part 2: shards of 128")
    parser.add_argument("--repeats", type=int, default=3, help="part 2: no-ops timed")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=("sources", "noop"),
        default=["sources", "noop"],
        help="parts to run; a part not run keeps its figures from the saved results",
    )
    parser.add_argument(
        "--server",
        choices=("process", "thread"),
        default="process",
        help="moto in a process of its own (as a real server is), or a thread of this one",
    )
    args = parser.parse_args()
    saved = RESULTS.read_text() if RESULTS.exists() else "{}"
    previous = json.loads(saved)
    prepare_keras()
    sys.path.insert(0, str(REPO))  # featurecache and tests/ of this checkout
    from featurecache.deps import backend
    from tests.s3server import S3Server, moto_process

    work = Path(tempfile.mkdtemp(prefix="fc-bench-sources-"))
    with contextlib.ExitStack() as stack:
        moto = stack.enter_context(moto_process()) if args.server == "process" else None
        server = stack.enter_context(S3Server(moto))
        os.environ.update(server.env)
        server.client().create_bucket(Bucket=BUCKET)
        sources = previous.get("sources")
        if "sources" in args.parts:
            sources = part_sources(args.images or 1 << 30, args.rounds, server, work)
            sources["server"] = SERVERS[args.server]
            print_sources(sources)
        noops = previous.get("noop")
        if "noop" in args.parts:
            noops = part_noop(args, server, work)
            noops["server"] = SERVERS[args.server]
    save(
        "sources",
        {
            "benchmark": "sources",
            "keras_backend": backend(),
            "part1_backbone": "mobilenet_v2 (imagenet, 224 px), keras engine, batch 32, local",
            "part2_backbone": "mobilenet_v2 (random weights, 32 px), keras engine, batch 32",
            "sources": sources,
            "noop": noops,
            "cpu_count": os.cpu_count(),
        },
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
