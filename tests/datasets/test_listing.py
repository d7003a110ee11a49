import os
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from featurecache.config import DatasetConfig, Hdf5Source, SplitRatios, dataset_from_option
from featurecache.datasets import list_dataset, stratified_split
from featurecache.errors import DatasetError, ImageDecodeError
from tests.conftest import CLASSES, make_image


def folder(path: Path, **kw) -> DatasetConfig:
    return DatasetConfig(name="d", format="folder", path=path, **kw)


def test_class_folder_gets_exact_stratified_split(class_folder):
    listing = list_dataset(folder(class_folder, split=SplitRatios(validation=0.2, test=0.3)))
    assert listing.class_names == sorted(CLASSES)
    per = Counter((r.label, r.split) for r in listing.records)
    for label in range(3):
        assert (per[(label, "test")], per[(label, "validation")], per[(label, "train")]) == (
            3,
            2,
            5,
        )


def test_split_depends_on_seed_not_on_listing_order(class_folder):
    a = list_dataset(folder(class_folder))
    b = list_dataset(folder(class_folder))
    c = list_dataset(folder(class_folder, split=SplitRatios(seed=7)))
    assert [r.split for r in a.records] == [r.split for r in b.records]
    assert [r.split for r in a.records] != [r.split for r in c.records]


def test_adding_images_keeps_most_existing_splits(class_folder):
    before = {r.locator: r.split for r in list_dataset(folder(class_folder)).records}
    for j in range(10, 12):
        make_image(class_folder / "red" / f"red_{j:02d}.png", CLASSES["red"])
    after = {r.locator: r.split for r in list_dataset(folder(class_folder)).records}
    moved = [k for k in before if before[k] != after[k]]
    assert len(after) == len(before) + 2
    assert len(moved) <= 2


def test_stratified_split_handles_tiny_classes():
    splits = stratified_split(["a", "b", "c"], [0, 1, 1], SplitRatios(test=0.5, validation=0.0))
    assert splits[0] == "train"  # a class of one keeps its image for training
    assert sorted(splits[1:]) == ["test", "train"]


def test_split_folders_with_val_alias(split_folder):
    listing = list_dataset(folder(split_folder))
    assert listing.split_counts() == {"train": 24, "validation": 6, "test": 9}
    assert listing.class_names == sorted(CLASSES)


def test_fingerprint_changes_when_a_file_changes(class_folder):
    first = list_dataset(folder(class_folder)).fingerprint
    assert list_dataset(folder(class_folder)).fingerprint == first
    target = class_folder / "red" / "red_00.png"
    os.utime(target, ns=(1, 1))
    assert list_dataset(folder(class_folder)).fingerprint != first


def test_read_returns_content_key_and_pixels(class_folder):
    listing = list_dataset(folder(class_folder))
    key, pixels = listing.read(listing.records[0], 24)
    assert len(key) == 32 and pixels.shape == (24, 24, 3)


def test_corrupt_file_is_an_image_decode_error_naming_it(class_folder):
    (class_folder / "red" / "broken.png").write_bytes(b"\x89PNG not really")
    listing = list_dataset(folder(class_folder))
    record = next(r for r in listing.records if r.source.endswith("broken.png"))
    with pytest.raises(ImageDecodeError, match="broken.png"):
        listing.read(record, 8)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        list_dataset(folder(tmp_path / "nope"))


def test_empty_class_folder_is_named(class_folder):
    (class_folder / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        list_dataset(folder(class_folder))


def test_one_class_is_refused(tmp_path):
    make_image(tmp_path / "only" / "a.png", (1, 2, 3))
    with pytest.raises(DatasetError, match="at least two classes"):
        list_dataset(folder(tmp_path))


def test_non_image_files_are_ignored(class_folder):
    (class_folder / "red" / "notes.txt").write_text("hello")
    (class_folder / "red" / ".DS_Store").write_bytes(b"\0")
    sources = [r.source for r in list_dataset(folder(class_folder)).records]
    assert not any(s.endswith((".txt", ".DS_Store")) for s in sources)


def test_csv_manifest_with_and_without_split(tmp_path, class_folder):
    rows = ["path,label,split"] + [
        f"{p.relative_to(tmp_path)},{p.parent.name},{'test' if i % 3 == 0 else 'train'}"
        for i, p in enumerate(sorted(class_folder.rglob("*.png")))
    ]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    listing = list_dataset(DatasetConfig(name="m", format="csv", path=manifest))
    assert listing.split_counts() == {"test": 10, "train": 20}
    no_split = tmp_path / "nosplit.csv"
    no_split.write_text("\n".join(",".join(r.split(",")[:2]) for r in rows[1:]) + "\n")
    assert set(
        list_dataset(DatasetConfig(name="m", format="csv", path=no_split)).split_counts()
    ) == {"train", "validation", "test"}


def test_csv_with_unknown_split_names_the_line(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("a.png,cat,holdout\n")
    with pytest.raises(DatasetError, match=r"m.csv:1: unknown split 'holdout'"):
        list_dataset(DatasetConfig(name="m", format="csv", path=manifest))


def test_real_catvnoncat_hdf5(datasets_dir):
    base = datasets_dir / "catvnoncat"
    config = DatasetConfig(
        name="catvnoncat",
        format="hdf5",
        hdf5={
            "train": Hdf5Source(
                path=base / "train_catvnoncat.h5",
                images="train_set_x",
                labels="train_set_y",
                classes="list_classes",
            ),
            "test": Hdf5Source(
                path=base / "test_catvnoncat.h5",
                images="test_set_x",
                labels="test_set_y",
                classes="list_classes",
            ),
        },
    )
    listing = list_dataset(config)
    try:
        assert listing.class_names == ["non-cat", "cat"]
        assert listing.split_counts() == {"train": 209, "test": 50}
        assert Counter(r.label for r in listing.records if r.split == "test") == {1: 33, 0: 17}
        key, pixels = listing.read(listing.records[0], 64)
        assert pixels.shape == (64, 64, 3)
        with h5py.File(base / "train_catvnoncat.h5") as fh:
            np.testing.assert_array_equal(pixels, fh["train_set_x"][0])
    finally:
        listing.close()


def test_hdf5_keys_are_found_automatically(datasets_dir):
    config = dataset_from_option(
        [
            f"train={datasets_dir}/catvnoncat/train_catvnoncat.h5",
            f"test={datasets_dir}/catvnoncat/test_catvnoncat.h5",
        ],
        name="cats",
    )
    listing = list_dataset(config)
    assert listing.class_names == ["non-cat", "cat"]
    assert listing.split_counts() == {"train": 209, "test": 50}
    listing.close()


def test_wrong_hdf5_key_lists_the_keys(datasets_dir):
    config = DatasetConfig(
        name="c",
        format="hdf5",
        hdf5={
            "train": Hdf5Source(
                path=datasets_dir / "catvnoncat/train_catvnoncat.h5", images="images", labels="y"
            )
        },
    )
    with pytest.raises(DatasetError, match=r"no array 'images'.*train_set_x"):
        list_dataset(config)


def test_classes_keeps_and_relabels_only_the_named_classes(split_folder):
    listing = list_dataset(folder(split_folder, classes=("red", "blue")))
    assert listing.class_names == ["red", "blue"]
    assert Counter(r.label for r in listing.records) == {0: 13, 1: 13}
    assert all("/green/" not in r.source for r in listing.records)
    assert all(("/red/" in r.source) == (r.label == 0) for r in listing.records)
    with pytest.raises(DatasetError, match="no class 'purple'.*its classes are blue, green, red"):
        list_dataset(folder(split_folder, classes=("red", "purple")))


def test_resplit_pools_the_split_folders_and_splits_again(split_folder):
    given = list_dataset(folder(split_folder))
    pooled = list_dataset(
        folder(split_folder, resplit=True, split=SplitRatios(validation=0.0, test=0.3))
    )
    assert {r.source for r in pooled.records} == {r.source for r in given.records}
    counts = Counter((r.label, r.split) for r in pooled.records)
    for label in range(3):  # 13 images per class: round(13 * 0.3) = 4 test
        assert counts[(label, "test")] == 4 and counts[(label, "train")] == 9
    assert pooled.fingerprint != given.fingerprint


def test_gzip_chunked_hdf5_reads_each_chunk_once(datasets_dir, tmp_path, monkeypatch):
    """A compressed, auto-chunked copy of catvnoncat: every row read back equals the
    file's, and each slab of rows costs one HDF5 read, not one per row."""
    from concurrent.futures import ThreadPoolExecutor

    from featurecache.datasets import hdf5

    with h5py.File(datasets_dir / "catvnoncat" / "train_catvnoncat.h5") as fh:
        images, labels = fh["train_set_x"][()], fh["train_set_y"][()]
    path = tmp_path / "gz.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("x", data=images, chunks=True, compression="gzip")
        fh.create_dataset("y", data=labels)
    monkeypatch.setattr(hdf5, "SLAB_BYTES", 16 * images[0].nbytes)  # several slabs
    listing = list_dataset(dataset_from_option([f"train={path}"], name="gz"))
    try:
        [reader] = listing._arrays.values()
        calls = []
        dataset = reader.dataset
        reader.dataset = type(
            "Counting", (), {"__getitem__": lambda _, k: calls.append(k) or dataset[k]}
        )()
        with ThreadPoolExecutor(2) as pool:
            rows = list(pool.map(lambda r: listing.read(r, 64)[1], listing.records))
        np.testing.assert_array_equal(np.stack(rows), images)
        assert reader.slab == 16 < dataset.chunks[0]
        assert len(calls) <= 2 * -(-len(images) // reader.slab)  # about one read per slab
    finally:
        listing.close()


def test_one_folder_lists_the_same_however_its_path_is_spelled(class_folder, tmp_path, monkeypatch):
    (tmp_path / "link").symlink_to(class_folder)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    spellings = [class_folder, tmp_path / "link", Path("../flat"), Path("../sub/../link")]
    listings = [list_dataset(folder(p)) for p in spellings]
    assert {x.fingerprint for x in listings} == {listings[0].fingerprint}
    assert all(
        [r.source for r in x.records] == [r.source for r in listings[0].records] for x in listings
    )
    assert listings[0].records[0].source.startswith(str(class_folder.resolve()) + "/")


def test_a_linked_image_keeps_its_path_inside_the_data_set(class_folder, tmp_path):
    """A link inside the folder is an image of the data set: its source is the link."""
    outside = make_image(tmp_path / "outside" / "extra.png", CLASSES["red"])
    (class_folder / "red" / "linked.png").symlink_to(outside)
    listing = list_dataset(folder(class_folder))
    sources = {r.source for r in listing.records}
    assert str(class_folder.resolve() / "red" / "linked.png") in sources
    assert str(outside) not in sources


def test_one_csv_lists_the_same_however_it_and_its_rows_are_spelled(class_folder, tmp_path):
    images = sorted(class_folder.rglob("*.png"))
    (tmp_path / "m").mkdir()
    plain = tmp_path / "m" / "plain.csv"
    plain.write_text("".join(f"../flat/{p.parent.name}/{p.name},{p.parent.name}\n" for p in images))
    dotted = tmp_path / "m" / "dotted.csv"  # the same rows, spelled through '..' and links
    (tmp_path / "m" / "link").symlink_to(class_folder)
    dotted.write_text(
        "".join(
            f"link/{p.parent.name}/../{p.parent.name}/{p.name},{p.parent.name}\n" for p in images
        )
    )
    a = list_dataset(DatasetConfig(name="d", path=plain))
    b = list_dataset(DatasetConfig(name="d", path=tmp_path / "m" / ".." / "m" / "plain.csv"))
    c = list_dataset(DatasetConfig(name="d", path=dotted))
    assert a.fingerprint == b.fingerprint
    assert [r.source for r in a.records] == [r.source for r in b.records]
    assert sorted(r.source for r in c.records) == sorted(str(p.resolve()) for p in images)
    assert sorted(r.source for r in a.records) == sorted(str(p.resolve()) for p in images)


def test_one_hdf5_file_lists_the_same_through_a_link(tmp_path):
    file = tmp_path / "real" / "train.h5"
    file.parent.mkdir()
    with h5py.File(file, "w") as fh:
        fh["x"] = np.zeros((4, 8, 8, 3), dtype=np.uint8)
        fh["y"] = np.array([0, 1, 0, 1])
    (tmp_path / "link.h5").symlink_to(file)
    listings = [
        list_dataset(
            DatasetConfig(name="d", hdf5={"train": Hdf5Source(path=p, images="x", labels="y")})
        )
        for p in (file, tmp_path / "link.h5", tmp_path / "real" / ".." / "real" / "train.h5")
    ]
    assert {x.fingerprint for x in listings} == {listings[0].fingerprint}
    assert {x.records[0].source for x in listings} == {f"{file.resolve()}[0]"}
    for x in listings:
        x.close()
