"""Images where they live: WebDataset shards, Parquet, Hugging Face data sets, on local disk.

The same 60 clothing_small photos in every layout give the same keys, labels and
features; the stat index keeps unchanged shards from being read again; damage is
skipped and named without losing the rest. (On a real S3 server: test_s3_sources.py.)
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import pytest

from featurecache.cache import Cache
from featurecache.config import DatasetConfig, dataset_from_option
from featurecache.config.load import load_pipeline
from featurecache.datasets import ObjectIndex, list_dataset, sharded
from featurecache.errors import ConfigError, DatasetError
from featurecache.extraction import extract
from tests.conftest import assert_same_numbers, invoke
from tests.datasets import sources
from tests.datasets.sources import CLASSES, pipeline_for

SIZE = 64


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, datasets_dir):
    """The photos in every layout, and the DatasetConfig of each."""
    root = tmp_path_factory.mktemp("layouts")
    photos = sources.pick_photos(datasets_dir, {"train": 4, "test": 2})
    folder = sources.write_folder(photos, root / "folder")
    shards = sources.write_shards(photos, root / "shards")
    img2dataset = sources.write_img2dataset_parquet(photos, root / "img2dataset")
    hf_files, saved = sources.write_hf(photos, root / "hf")

    def files(by_split):
        return {
            s: [str(p) for p in (v if isinstance(v, list) else [v])] for s, v in by_split.items()
        }

    configs = {
        "folder": DatasetConfig(name="folder", path=folder),
        "webdataset": DatasetConfig(name="webdataset", files=files(shards), classes=CLASSES),
        "img2dataset": DatasetConfig(name="img2dataset", files=files(img2dataset)),
        "hf_parquet": DatasetConfig(name="hf_parquet", files=files(hf_files)),
        "hf_saved": DatasetConfig(name="hf_saved", format="huggingface", path=saved),
    }
    return photos, shards, configs


def by_key(cache, result):
    fs = Cache(cache).read(result.dataset, result.group)
    return {
        key: (fs.class_names[label], split, row)
        for key, label, split, row in zip(fs.keys, fs.y, fs.split, fs.X, strict=True)
    }


def test_every_layout_gives_the_same_keys_labels_splits_and_features(layouts, tmp_path):
    photos, _, configs = layouts
    found = {}
    for name, dataset in configs.items():
        cache = tmp_path / name  # a cache each: every layout computes its own features
        [result] = extract(pipeline_for(dataset, cache))
        assert result.n_extracted == len(photos) and not result.skipped, (name, result.skipped)
        found[name] = by_key(cache, result)
    reference = found.pop("folder")
    for name, rows in found.items():
        assert rows.keys() == reference.keys(), name
        for key, (label, split, features) in rows.items():
            assert (label, split) == reference[key][:2], (name, key)
            assert_same_numbers(features, reference[key][2])


def test_an_unchanged_shard_is_not_read_again_and_a_changed_one_is(layouts, tmp_path, monkeypatch):
    photos, shards, configs = layouts
    copies = tmp_path / "shards"
    copies.mkdir()
    for path in shards["train"]:
        (copies / path.name).write_bytes(path.read_bytes())
    dataset = DatasetConfig(name="w", files=[str(copies / "train-{000000..000002}.tar")])
    reads = []
    real = sharded.read_members
    monkeypatch.setattr(sharded, "read_members", lambda *a: reads.append(a[1]) or real(*a))
    index_file = tmp_path / "index.json.gz"

    first = list_dataset(dataset, ObjectIndex(index_file))
    assert len(reads) == 3 and len(first.records) == len(photos) * 4 // 6
    # without `classes`, the .cls integers are their own class names
    assert first.class_names == [str(i) for i in range(10)]
    reads.clear()
    again = list_dataset(dataset, ObjectIndex(index_file))
    assert reads == [] and again.fingerprint == first.fingerprint
    assert [r.key for r in again.records] == [r.key for r in first.records]

    # a shard rewritten with one sample fewer is read again, and only it
    changed = copies / "train-000001.tar"
    with tarfile.open(changed) as tar:
        first_sample = tar.getmembers()[0].name.split(".")[0]
        kept = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(changed, "w") as tar:
        for member, data in kept:
            if not member.name.startswith(first_sample + "."):
                tar.addfile(member, io.BytesIO(data))
    third = list_dataset(dataset, ObjectIndex(index_file))
    assert reads == [str(changed)]
    assert len(third.records) == len(first.records) - 1


def test_a_truncated_shard_keeps_the_images_before_the_damage_and_names_it(layouts, tmp_path):
    _, shards, _ = layouts
    whole = shards["train"][0].read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[: len(whole) // 2])
    listing = list_dataset(
        DatasetConfig(
            name="cut",
            files={"train": [str(cut)], "test": [str(shards["test"][0])]},
            classes=CLASSES,
        )
    )
    with tarfile.open(shards["train"][0]) as tar:
        complete = [m for m in tar.getmembers() if m.name.endswith(".jpg")]
    kept = [r for r in listing.records if r.source.startswith(str(cut))]
    assert 0 < len(kept) < len(complete)
    assert [r.source.rsplit("#", 1)[1] for r in kept] == [m.name for m in complete[: len(kept)]]
    [damage] = [s for s in listing.skipped if s["source"] == str(cut)]
    assert "cut short" in damage["reason"] or "damaged" in damage["reason"]
    for index, record in enumerate(listing.records):  # every kept image reads whole
        if record.source.startswith(str(cut)):
            assert listing.load(index).key == record.key


def test_a_shard_cut_at_a_header_is_named_too(layouts, tmp_path):
    """tarfile reads a tar cut exactly at a member's header as a clean end: the missing
    end-of-archive blocks tell it was cut."""
    (
        _,
        shards,
        _,
    ) = layouts
    with tarfile.open(shards["test"][0]) as tar:
        members = tar.getmembers()
    whole = shards["test"][0].read_bytes()
    for cut_at in (members[6].offset, members[6].offset + 100):
        cut = tmp_path / f"cut-{cut_at}.tar"
        cut.write_bytes(whole[:cut_at])
        listing = list_dataset(DatasetConfig(name="cut", files=[str(cut)], classes=CLASSES))
        [damage] = [s for s in listing.skipped if s["source"] == str(cut)]
        assert "cut short" in damage["reason"]
        assert len(listing.records) == 1  # samples 0-1 of 3 files each; the last one dropped


def test_a_damaged_member_is_skipped_and_named_and_the_rest_of_the_shard_kept(layouts, tmp_path):
    import webdataset as wds

    photos, _, _ = layouts
    path = tmp_path / "mixed-000000.tar"
    with wds.TarWriter(str(path)) as sink:
        for i, photo in enumerate(photos[:5]):
            data = sources.corrupt_jpeg() if i == 2 else photo.path.read_bytes()
            sink.write({"__key__": photo.key, "jpg": data, "json": {"label": photo.label}})
        sink.write({"__key__": "nolabel", "jpg": photos[5].path.read_bytes()})
        sink.write(
            {"__key__": "other_label", "jpg": photos[6].path.read_bytes(), "json": {"label": "hat"}}
        )
    cache = tmp_path / "cache"
    dataset = DatasetConfig(name="mixed", files=[str(path)], split={"validation": 0.0, "test": 0.3})
    [result] = extract(pipeline_for(dataset, cache))
    reasons = [s["reason"] for s in result.skipped]
    assert len(reasons) == 2, reasons
    assert any(f"{path}#nolabel.jpg" in r and "no label" in r for r in reasons)
    assert any(f"{path}#{photos[2].key}.jpg" in r for r in reasons)
    assert result.n_images == 5  # 4 photos and the one labelled through json
    # the CLI says so with exit code 3 (something was skipped), the rows committed
    done = invoke(
        "extract",
        "--data",
        path,
        "--weights",
        "none",
        "--input-size",
        SIZE,
        "--cache",
        tmp_path / "cli",
        "--json",
    )
    assert done.exit_code == 3, done.output
    assert json.loads(done.stdout)["extract"][0]["n_images"] == 5


def test_data_options_and_pipeline_files_name_shards_and_parquet(tmp_path):
    config = dataset_from_option(["train=s3://b/train-{000000..000009}.tar", "test=/data/test.tar"])
    assert config.format == "webdataset"
    assert config.files == {
        "train": ("s3://b/train-{000000..000009}.tar",),
        "test": ("/data/test.tar",),
    }
    assert dataset_from_option(["s3://bucket/photos"]).path == "s3://bucket/photos"
    with pytest.raises(ConfigError, match="split"):
        dataset_from_option(["a.parquet", "test=b.parquet"])
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        'name = "p"\n[[datasets]]\nname = "d"\nlabel = "category"\n'
        '[datasets.files]\ntrain = ["shards/train-{0..3}.tar"]\ntest = ["s3://b/test.tar"]\n'
        '[[backbones]]\nname = "mobilenet_v2"\n'
    )
    [dataset] = load_pipeline(pipeline).datasets
    assert dataset.format == "webdataset" and dataset.label == "category"
    assert dataset.files == {
        "train": (str(tmp_path / "shards/train-{0..3}.tar"),),
        "test": ("s3://b/test.tar",),
    }
    with pytest.raises(ConfigError, match="files"):
        DatasetConfig(name="x", format="folder", path=tmp_path, files=["a.tar"])


def test_labels_that_name_no_class_say_how_to_fix_it(layouts, tmp_path):
    _, shards, _ = layouts
    with pytest.raises(DatasetError, match="list every class in 'classes'"):
        list_dataset(
            DatasetConfig(name="w", files=[str(p) for p in shards["train"]], classes=("a", "b"))
        )
    with pytest.raises(DatasetError, match="no such file"):
        list_dataset(
            DatasetConfig(name="w", files=[str(tmp_path / "nowhere")], format="webdataset")
        )


def test_parquet_without_an_image_column_names_its_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"picture": [b"x"], "label": [1]}), path)
    with pytest.raises(DatasetError, match=r"its columns are picture, label.*image = "):
        list_dataset(DatasetConfig(name="x", files=[str(path)]))
    found = list_dataset(
        DatasetConfig(
            name="x", files=[str(path)], image="picture", label="label", classes=("a", "b")
        )
    )
    assert found.class_names == ["a", "b"] and found.records[0].label == 1


def test_a_huggingface_name_goes_through_load_dataset(layouts, tmp_path):
    """A name that is not a save_to_disk folder is passed to ``datasets.load_dataset``: a
    hub name with the internet, here (offline) a local folder of the data set's Parquet
    files, which load_dataset reads with its own builder."""
    photos, _, configs = layouts
    hub = tmp_path / "hub_like" / "data"
    hub.mkdir(parents=True)
    for split, files in configs["hf_parquet"].files.items():
        shutil.copy(files[0], hub / f"{split}-00000-of-00001.parquet")
    listing = list_dataset(DatasetConfig(name="hub", format="huggingface", path=hub.parent))
    assert listing.class_names == list(CLASSES)
    assert listing.split_counts() == {"train": 40, "test": 20}
    keys = {listing.content_key(r) for r in listing.records}
    assert keys == {r.key for r in list_dataset(configs["hf_parquet"]).records}


def test_objects_given_without_a_split_take_the_split_their_names_say(layouts):
    _, shards, configs = layouts
    flat = [str(p) for paths in shards.values() for p in paths]  # train-*.tar, test-*.tar
    listing = list_dataset(DatasetConfig(name="w", files=flat, classes=CLASSES))
    assert listing.split_counts() == {"train": 40, "test": 20}
    with pytest.raises(DatasetError, match="listed under two splits"):
        list_dataset(DatasetConfig(name="w", files={"train": flat, "test": flat[:1]}))
