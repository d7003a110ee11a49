"""Extraction on real photos, against the Keras-guide pipeline and the pipelined limit.

For each data set, in one run on this machine:

* *decode*: featurecache's own input side (read, hash, decode, resize to 224 px,
  ``preprocess_input``) of every image on all cores (one thread per core, no backbone);
* *backbone*: MobileNetV2 (ImageNet weights, 224 px, batch 32) alone on pre-decoded,
  preprocessed batches of the same images, on all cores, per engine (measured just
  before and just after that engine's extraction; their mean);
* *limit*: ``1 / (1/backbone + 1/decode)``: on a CPU-only machine decoding and inference
  share the cores, so this is the best rate a pipeline can reach;
* *featurecache*: ``extract`` into a fresh cache, per engine and with the default engine
  (``auto``), the compute phase (images over its seconds), with the extraction's own
  profile (seconds the backbone ran, waited for decoded images, wrote);
* *Keras guide*: what the Keras guide has users write
  (https://keras.io/guides/transfer_learning/,
  https://keras.io/api/data_loading/image/): ``keras.utils.image_dataset_from_directory``
  (tf.data: parallel decode, bilinear resize) with ``preprocess_input`` mapped over it and
  ``.prefetch(AUTOTUNE)``, then ``model.predict`` of the same backbone; images/s from the
  listing call to the last prediction.

Data sets: clothing_small (3,781 JPEG photos, about 400x533); photos_hires (16 camera
JPEGs of 8-24 MP, each copied ``--repeat`` times with a distinct JPEG comment segment so
that no two files have the same content key); a CIFAR-10 subset (32x32 JPEGs); and the
same CIFAR-10 subset as arrays in a contiguous HDF5 file and in a gzip-compressed,
auto-chunked one (``h5py`` ``chunks=True, compression="gzip"``), extracted on ONNX Runtime.
On clothing_small, an ablation: ONNX Runtime extraction with 1-3 decoding threads, its idle
threads spinning or not.

Usage: python benchmarks/extraction.py [--datasets ...] [--limit N] [--repeat 16]
Prints a table and writes benchmarks/results/extraction.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import save  # benchmarks/_results.py: scripts run from this folder

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "datasets"
ENGINES = ("tensorflow", "onnxruntime")
SIZE = 224


def link_subset(source: Path, root: Path, per_class: int) -> Path:
    """``root/<class>/`` with links to the first ``per_class`` images of each class."""
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        (root / class_dir.name).mkdir(parents=True)
        for path in sorted(class_dir.iterdir())[:per_class]:
            (root / class_dir.name / path.name).symlink_to(path)
    return root


def with_comment(data: bytes, text: str) -> bytes:
    """The JPEG ``data`` with a COM segment after SOI: the same pixels, other bytes."""
    body = text.encode()
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(body) + 2) + body + data[2:]


def hires_copies(root: Path, repeat: int) -> Path:
    """``repeat`` distinct copies of each photos_hires JPEG in two class folders."""
    photos = sorted((SHARED / "photos_hires").glob("*.jpg"))
    for klass in ("a", "b"):
        (root / klass).mkdir(parents=True)
    for i, path in enumerate(photos):
        data = path.read_bytes()
        for r in range(repeat):
            target = root / "ab"[i % 2] / f"{r:03d}_{path.name}"
            target.write_bytes(with_comment(data, f"featurecache benchmark copy {r}"))
    return root


def clothing(root: Path, limit: int | None) -> Path:
    source = SHARED / "clothing_small"
    if not limit:
        return source
    for split in sorted(p for p in source.iterdir() if p.is_dir()):
        link_subset(split, root / split.name, limit // 30)
    return root


def hdf5_copies(root: Path, folder: Path) -> dict[str, Path]:
    """The images of ``folder`` (class folders) as arrays in a contiguous HDF5 file and in
    a gzip-compressed one whose chunks h5py picks (``chunks=True``)."""
    import h5py
    from PIL import Image

    files = sorted(folder.rglob("*.jpg"))
    classes = sorted({f.parent.name for f in files})
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    labels = np.array([classes.index(f.parent.name) for f in files], np.int64)
    paths = {}
    for kind, options in (("contiguous", {}), ("gzip", {"chunks": True, "compression": "gzip"})):
        paths[kind] = root / f"cifar10_{kind}.h5"
        with h5py.File(paths[kind], "w") as fh:
            chunks = fh.create_dataset("images", data=images, **options).chunks
            fh.create_dataset("labels", data=labels)
        print(f"{paths[kind].name}: {images.shape}, chunks {chunks}", flush=True)
    return paths


def decode_rate(listing, extractor) -> float:
    """Images/s of featurecache's input side alone (read, hash, decode, resize, the
    backbone's ``preprocess_input``), one thread per core, as extraction runs it."""
    from featurecache.extraction.decoding import decoded_batches

    order = list(range(len(listing.records)))

    def preprocess(index, pixels):
        return {0: extractor.preprocess(pixels[(SIZE, "pillow")])}

    start = time.perf_counter()
    sizes = dict.fromkeys(order, [(SIZE, "pillow")])
    for _ in decoded_batches(listing, order, sizes, 32, os.cpu_count(), preprocess=preprocess):
        pass
    return len(order) / (time.perf_counter() - start)


def ablation(listing, work: Path) -> list[dict]:
    """ONNX Runtime extraction of ``listing`` with 1, 2 and 3 decoding threads, each with
    ONNX Runtime's idle threads spinning (its default) and sleeping (featurecache's)."""
    import onnxruntime as ort

    from featurecache.config import BackboneConfig
    from featurecache.extraction import decoding

    rows = []
    spin = {"value": "0"}
    original = ort.SessionOptions

    class Options(original):
        def add_session_config_entry(self, key, value):
            if key == "session.intra_op.allow_spinning":
                value = spin["value"]
            super().add_session_config_entry(key, value)

    ort.SessionOptions = Options
    try:
        for workers in (1, 2, 3):
            for spinning in ("1", "0"):
                spin["value"], decoding.DECODE_WORKERS = spinning, workers
                config = BackboneConfig(name="mobilenet_v2", engine="onnxruntime")
                rate = extract(listing, config, work).images_per_second
                rows.append(
                    {"decode_threads": workers, "spinning": spinning == "1", "images_per_s": rate}
                )
                print(
                    f"  ablation: {workers} decoding threads, spinning {spinning}: {rate:.1f}",
                    flush=True,
                )
    finally:
        ort.SessionOptions, decoding.DECODE_WORKERS = original, None
    return rows


def backbone_rate(run, batches) -> float:
    run(batches[0])
    start = time.perf_counter()
    for batch in batches:
        run(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def peer_rate(root: Path, n: int) -> float:
    """Images/s of the Keras guide's pipeline over the class folders under ``root``."""
    import keras
    import tensorflow as tf

    model = keras.applications.MobileNetV2(include_top=False, pooling="avg", weights="imagenet")
    preprocess = keras.applications.mobilenet_v2.preprocess_input
    start = time.perf_counter()
    ds = keras.utils.image_dataset_from_directory(
        root, image_size=(SIZE, SIZE), batch_size=32, shuffle=False, verbose=False
    )
    ds = ds.map(lambda x, y: preprocess(x), num_parallel_calls=tf.data.AUTOTUNE)
    features = model.predict(ds.prefetch(tf.data.AUTOTUNE), verbose=0)
    seconds = time.perf_counter() - start
    assert features.shape == (n, 1280), features.shape
    return n / seconds


def extract(listing, config, work: Path):
    from featurecache.cache import Cache
    from featurecache.extraction import extract_dataset

    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=work))
    [result] = extract_dataset(Cache(cache / "cache"), listing, [config], batch_size=32)
    shutil.rmtree(cache)
    return result


def measure(name: str, listing, root: Path | None, work: Path, engines) -> dict:
    """One data set: decode, each engine alone and extracting, the default, the peer."""
    from featurecache.backbones import build_backbone
    from featurecache.cache import recipe
    from featurecache.config import BackboneConfig
    from featurecache.extraction import engines as engine_module

    n = len(listing.records)
    config = BackboneConfig(name="mobilenet_v2", engine="tensorflow")
    decode = decode_rate(listing, engine_module.Extractor(build_backbone(config), "", None))
    print(f"{name}: {n} images, decode {decode:.1f} images/s on all cores", flush=True)
    sample = [listing.read(r, SIZE)[1] for r in listing.records[:128]]
    pixels = np.stack(sample).astype(np.float32)
    row = {"dataset": name, "n_images": n, "decode_images_per_s": decode, "engines": {}}
    for engine in engines:
        config = BackboneConfig(name="mobilenet_v2", engine=engine)
        built = build_backbone(config)
        model_id = recipe.model_id(config, built.weights_sha256)
        _, run = engine_module.select(built, engine, work / "engines", model_id)
        batches = [built.preprocess(pixels[i : i + 32].copy()) for i in range(0, len(pixels), 32)]
        before = backbone_rate(run, batches)
        result = extract(listing, config, work)
        after = backbone_rate(run, batches)
        backbone = (before + after) / 2
        limit = 1 / (1 / backbone + 1 / decode)
        row["engines"][engine] = {
            "backbone_images_per_s": backbone,
            "backbone_before": before,
            "backbone_after": after,
            "limit_images_per_s": limit,
            "extraction_images_per_s": result.images_per_second,
            "of_limit": result.images_per_second / limit,
            "profile": result.profile,
            "compute_seconds": result.n_extracted / result.images_per_second,
        }
        print(
            f"  {engine}: backbone {backbone:.1f}, limit {limit:.1f}, extraction "
            f"{result.images_per_second:.1f} images/s ({result.images_per_second / limit:.2f} "
            f"of the limit); {result.profile}",
            flush=True,
        )
    os.environ.pop("FEATURECACHE_ENGINE", None)
    default = extract(listing, BackboneConfig(name="mobilenet_v2"), work)
    row["default"] = {"engine": default.engine, "images_per_s": default.images_per_second}
    print(f"  default: {default.engine} {default.images_per_second:.1f} images/s", flush=True)
    if root is not None:
        row["peer_images_per_s"] = peer_rate(root, n)
        row["default_vs_peer"] = default.images_per_second / row["peer_images_per_s"]
        if "tensorflow" in row["engines"]:
            tf_rate = row["engines"]["tensorflow"]["extraction_images_per_s"]
            row["tensorflow_vs_peer"] = tf_rate / row["peer_images_per_s"]
        print(
            f"  Keras guide: {row['peer_images_per_s']:.1f} images/s; default "
            f"{row['default_vs_peer']:.2f}x",
            flush=True,
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=["clothing_small", "photos_hires", "cifar10", "cifar10_hdf5"],
    )
    parser.add_argument("--engines", nargs="+", default=list(ENGINES))
    parser.add_argument("--limit", type=int, default=None, help="clothing_small images")
    parser.add_argument("--repeat", type=int, default=16, help="copies of each hires photo")
    parser.add_argument("--cifar", type=int, default=2000, help="CIFAR-10 test images")
    parser.add_argument("--ablation", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    from featurecache.config import dataset_from_option
    from featurecache.datasets import list_dataset

    work = Path(tempfile.mkdtemp(prefix="fc-bench-extraction-"))
    rows = []
    try:
        cifar = link_subset(SHARED / "cifar10" / "test", work / "cifar10", args.cifar // 10)
        folders = {
            "clothing_small": lambda: clothing(work / "clothing", args.limit),
            "photos_hires": lambda: hires_copies(work / "photos_hires", args.repeat),
            "cifar10": lambda: cifar,
        }
        for name in args.datasets:
            if name == "cifar10_hdf5":
                rows.append(hdf5_rows(hdf5_copies(work, cifar), work))
                continue
            root = folders[name]()
            listing = list_dataset(dataset_from_option([str(root)], name=name))
            rows.append(measure(name, listing, root, work, args.engines))
            if name == "clothing_small" and args.ablation:
                rows[-1]["ablation"] = ablation(listing, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    save(
        "extraction",
        {
            "benchmark": "extraction",
            "backbone": "mobilenet_v2 (imagenet), 224 px, batch 32",
            "cpu_count": os.cpu_count(),
            "rows": rows,
        },
    )


def hdf5_rows(paths: dict[str, Path], work: Path) -> dict:
    """The same images from a contiguous and a gzip-compressed HDF5 file, ONNX Runtime."""
    from featurecache.config import BackboneConfig, dataset_from_option
    from featurecache.datasets import list_dataset

    config = BackboneConfig(name="mobilenet_v2", engine="onnxruntime")
    rates = {}
    for kind, path in paths.items():
        listing = list_dataset(dataset_from_option([f"train={path}"], name=f"cifar10_{kind}"))
        rates[kind] = extract(listing, config, work).images_per_second
        listing.close()
        print(f"cifar10 HDF5 {kind}: {rates[kind]:.1f} images/s", flush=True)
    return {
        "dataset": "cifar10_hdf5",
        "rates": rates,
        "gzip_vs_contiguous": rates["gzip"] / rates["contiguous"],
    }


def print_table(rows: list[dict]) -> None:
    print(
        f"\n{'data set':<16}{'engine':<13}{'decode':>8}{'backbone':>10}{'limit':>8}"
        f"{'extract':>9}{'of limit':>10}"
    )
    for row in rows:
        for engine, e in row.get("engines", {}).items():
            print(
                f"{row['dataset']:<16}{engine:<13}{row['decode_images_per_s']:>8.1f}"
                f"{e['backbone_images_per_s']:>10.1f}{e['limit_images_per_s']:>8.1f}"
                f"{e['extraction_images_per_s']:>9.1f}{e['of_limit']:>10.2f}"
            )
        if "peer_images_per_s" in row:
            print(
                f"{row['dataset']:<16}Keras guide {row['peer_images_per_s']:.1f} images/s; default "
                f"({row['default']['engine']}) {row['default_vs_peer']:.2f}x, tensorflow "
                f"{row.get('tensorflow_vs_peer', float('nan')):.2f}x"
            )
        if "gzip_vs_contiguous" in row:
            print(f"{row['dataset']:<16}gzip / contiguous HDF5: {row['gzip_vs_contiguous']:.2f}")


if __name__ == "__main__":
    main()
