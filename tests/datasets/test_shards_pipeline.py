"""pipelines/scale/clothing_shards.toml, with its shards built at test time by
scripts/folder_to_shards.py (webdataset's ShardWriter) from ../shared's clothing_small."""

from __future__ import annotations

import importlib.util

from featurecache.config import load_pipeline
from featurecache.config.load import load_all
from featurecache.datasets import list_dataset
from tests.conftest import REPO


def folder_to_shards():
    spec = importlib.util.spec_from_file_location(
        "folder_to_shards", REPO / "scripts" / "folder_to_shards.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shards_pipeline_lists_the_folders_images_labels_and_splits(datasets_dir, tmp_path):
    out = tmp_path / "shards" / "clothing_small"
    patterns = folder_to_shards().write_shards(datasets_dir / "clothing_small", out)
    pipeline = load_pipeline(
        REPO / "pipelines" / "scale" / "clothing_shards.toml", data_root=tmp_path
    )
    [dataset] = pipeline.datasets
    assert {s: p[0] for s, p in dataset.files.items()} == patterns  # the file names the shards made
    shards = list_dataset(dataset)
    [folder] = load_pipeline(REPO / "pipelines" / "clothing.toml", data_root=datasets_dir).datasets
    files = list_dataset(folder)
    assert not shards.skipped and shards.class_names == files.class_names
    assert (
        shards.split_counts()
        == files.split_counts()
        == {"train": 3068, "validation": 341, "test": 372}
    )

    def rows(listing):
        return sorted(
            (listing.content_key(r), listing.class_names[r.label], r.split) for r in listing.records
        )

    assert rows(shards) == rows(files)


def test_the_default_pipelines_leave_the_scale_folder_out():
    """`featurecache refresh` with no argument runs pipelines/*.toml; the shards pipeline
    needs its shards built first, so it lives one folder down."""
    names = [p.name for p in load_all([REPO / "pipelines"])]
    assert "clothing_shards" not in names and names
