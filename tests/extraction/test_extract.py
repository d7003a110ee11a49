"""Extract -> train-head -> predict on tiny synthetic images with random weights."""

import json
from dataclasses import replace

import numpy as np
import pytest

from featurecache import backbones
from featurecache.backbones import build_backbone
from featurecache.cache import Cache
from featurecache.cache.admin import describe_cache
from featurecache.config import BackboneConfig, DatasetConfig, HeadConfig, Pipeline
from featurecache.datasets import list_dataset
from featurecache.errors import CacheError, DatasetError
from featurecache.extraction import extract
from featurecache.heads.train import train_heads
from featurecache.images import content_key
from featurecache.prediction import predict
from tests.conftest import CLASSES, make_image

SIZE = 64


@pytest.fixture
def pipeline(tmp_path, split_folder):
    return Pipeline(
        name="tiny",
        datasets=(DatasetConfig(name="tiny", format="folder", path=split_folder),),
        backbones=(BackboneConfig(name="mobilenet_v2", weights="none", input_size=SIZE),),
        heads=(
            HeadConfig(name="logreg", kind="logistic_regression"),
            HeadConfig(name="dense", kind="dense", params={"epochs": 5}),
        ),
        cache=tmp_path / "cache",
        output=tmp_path / "runs",
        batch_size=8,
    )


def forbid_backbone(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the backbone must not be built")

    monkeypatch.setattr(backbones, "build_backbone", boom)
    monkeypatch.setattr("featurecache.extraction.job.build_backbone", boom)
    monkeypatch.setattr("featurecache.extraction.dask.build_backbone", boom)


def test_extract_writes_features_equal_to_the_backbone(pipeline):
    [result] = extract(pipeline)
    assert not result.cache_hit
    assert result.n_extracted == 39 and result.split_counts == {
        "train": 24,
        "validation": 6,
        "test": 9,
    }
    fs = Cache(pipeline.cache).read("tiny", result.group)
    assert fs.X.shape == (39, 1280) and fs.X.dtype == np.float32
    listing = list_dataset(pipeline.datasets[0])
    first = listing.records[0]
    row = list(fs.sources).index(first.source)
    with open(first.source, "rb") as fh:
        assert fs.keys[row] == content_key(fh.read())
    # Recompute one image directly: same model, same preprocessing.
    from featurecache.deps import import_keras

    import_keras().utils.set_random_seed(0)
    built = build_backbone(pipeline.backbones[0])
    _, pixels = listing.read(first, SIZE)
    direct = built.model.predict_on_batch(built.preprocess(pixels[None].astype(np.float32)))
    np.testing.assert_allclose(fs.X[row], np.asarray(direct)[0], atol=1e-5)
    attrs = fs.provenance
    assert attrs["weights"] == {"spec": "none", "file": None, "sha256": None, "random_seed": 0}
    assert attrs["preprocessing"] == "keras.applications.mobilenet_v2.preprocess_input"
    assert attrs["versions"]["keras"] and attrs["dataset"]["fingerprint"] == listing.fingerprint
    # where the compute pass's time went: the backbone ran, the rest is waiting
    assert set(result.profile) == {"waiting", "backbone", "writing"}
    assert result.profile["backbone"] > 0 and min(result.profile.values()) >= 0
    assert sum(result.profile.values()) <= result.seconds


def test_second_extract_is_a_cache_hit_without_building(pipeline, monkeypatch):
    first = extract(pipeline)[0]
    forbid_backbone(monkeypatch)
    [again] = extract(pipeline)
    assert again.cache_hit and again.n_extracted == 0 and again.group == first.group


def test_auto_keeps_the_group_of_the_keras_engine_and_gc_keeps_it(
    pipeline, split_folder, monkeypatch
):
    """Caches made with the default of earlier releases (engine keras) are still found by
    the default engine auto: a cache hit, no backbone built, gc keeps the group, heads
    train from it; a changed data set extends that same group's recipe."""
    from featurecache.cache.admin import collect_garbage
    from featurecache.config import ENGINE_ENV

    first = extract(pipeline)[0]  # engine keras (tests/conftest.py)
    monkeypatch.delenv(ENGINE_ENV)
    auto = replace(pipeline, backbones=(replace(pipeline.backbones[0], engine="auto"),))
    assert auto.backbones[0].engine == "auto"
    with monkeypatch.context() as m:
        forbid_backbone(m)
        [again] = extract(auto)
        assert again.cache_hit and again.group == first.group
        assert collect_garbage(pipeline.cache, [auto], dry_run=True).removed == []
        assert train_heads(auto)
    make_image(split_folder / "train" / "red" / "red_new.png", CLASSES["red"])
    [grown] = extract(auto)
    assert (grown.n_extracted, grown.n_reused, grown.group) == (1, 39, first.group)


def test_other_pooling_or_size_goes_to_another_group(pipeline):
    a = extract(pipeline)[0]
    b = extract(replace(pipeline, backbones=(pipeline.backbones[0].replace(pooling="max"),)))[0]
    c = extract(replace(pipeline, backbones=(pipeline.backbones[0].replace(input_size=96),)))[0]
    assert len({a.group, b.group, c.group}) == 3
    assert not b.cache_hit and not c.cache_hit
    assert len(describe_cache(pipeline.cache)) == 3


def test_changed_input_recomputes(pipeline, split_folder):
    extract(pipeline)
    (split_folder / "train" / "red" / "00.png").write_bytes(
        (split_folder / "train" / "blue" / "00.png").read_bytes()
    )
    again = extract(pipeline)[0]
    assert not again.cache_hit


def test_bad_images_are_skipped_recorded_and_the_rest_kept(pipeline, split_folder):
    (split_folder / "train" / "red" / "zero.jpg").write_bytes(b"")
    (split_folder / "train" / "blue" / "text.jpg").write_text("not an image")
    [result] = extract(pipeline)
    assert result.n_images == 39
    assert sorted(s["source"].rsplit("/", 1)[1] for s in result.skipped) == ["text.jpg", "zero.jpg"]
    assert "empty file" in next(s["reason"] for s in result.skipped if "zero" in s["source"])
    info = describe_cache(pipeline.cache)[0]
    assert len(info["skipped"]) == 2


def test_a_data_set_where_nothing_decodes_fails_and_commits_nothing(pipeline, tmp_path):
    root = tmp_path / "junk"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        (root / cls / "x.jpg").write_bytes(b"junk")
    bad = replace(pipeline, datasets=(DatasetConfig(name="junk", format="folder", path=root),))
    with pytest.raises(DatasetError, match="none of its 2 images"):
        extract(bad)
    assert describe_cache(pipeline.cache) == []


def test_train_heads_from_the_cache_alone(pipeline, monkeypatch):
    extract(pipeline)
    forbid_backbone(monkeypatch)
    results = train_heads(pipeline)
    assert [r.head for r in results] == ["logreg", "dense"]
    for r in results:
        folder = pipeline.output / "tiny" / "tiny" / r.group / r.head
        metrics = json.loads((folder / "metrics.json").read_text())
        assert list(metrics) == ["train", "validation", "test"]
        for split in metrics.values():
            assert {"accuracy", "log_loss", "per_class", "confusion_matrix"} <= set(split)
            assert set(split["per_class"]) == {"blue", "green", "red"}
        assert (folder / "confusion_matrix_test.png").stat().st_size > 1000
    assert (pipeline.output / "tiny" / "tiny" / results[1].group / "dense" / "curves.png").exists()
    assert results[0].accuracy["train"] == 1.0


def test_train_heads_without_features_says_to_extract(pipeline):
    with pytest.raises(CacheError, match="run `featurecache extract`"):
        train_heads(pipeline)


def test_predict_with_a_trained_head(pipeline, split_folder):
    extract(pipeline)
    [logreg, _] = train_heads(pipeline)
    folder = pipeline.output / "tiny" / "tiny" / logreg.group / "logreg"
    (split_folder / "test" / "red" / "bad.png").write_bytes(b"nope")
    results = predict(folder, [split_folder / "test"])
    assert len(results) == 10
    bad = [p for p in results if p.error]
    assert len(bad) == 1 and "bad.png" in bad[0].source
    good = [p for p in results if not p.error]
    assert all(0 <= p.probability <= 1 for p in good)
    truth = [p.source.split("/")[-2] for p in good]
    assert np.mean([p.label == t for p, t in zip(good, truth, strict=True)]) >= 0.8


def test_weights_from_a_local_file_are_hashed_into_the_recipe(pipeline, tmp_path):
    from featurecache.backbones import sha256_file
    from featurecache.deps import import_keras

    keras = import_keras()
    path = tmp_path / "mine.weights.h5"

    def save_random_weights(seed):
        keras.utils.set_random_seed(seed)
        keras.applications.MobileNetV2(
            include_top=False, weights=None, pooling="avg", input_shape=(SIZE, SIZE, 3)
        ).save_weights(path)

    save_random_weights(3)
    config = BackboneConfig(name="mobilenet_v2", weights=str(path), input_size=SIZE)
    [first] = extract(replace(pipeline, backbones=(config,)))
    attrs = Cache(pipeline.cache).attrs("tiny", first.group)
    assert attrs["weights"]["file"] == str(path.resolve())
    assert attrs["weights"]["sha256"] == sha256_file(path)
    assert extract(replace(pipeline, backbones=(config,)))[0].cache_hit
    save_random_weights(4)  # the same file name, other weights: never a silent mix
    [second] = extract(replace(pipeline, backbones=(config,)))
    assert not second.cache_hit and second.group != first.group


@pytest.mark.real_weights
def test_float16_storage_halves_the_features_and_reads_back_as_float32(pipeline):
    import zarr

    # Real weights: random-weight features are ~1e-13 and would underflow in float16.
    real = BackboneConfig(name="mobilenet_v2")
    pipeline = replace(pipeline, backbones=(real,))
    half = real.replace(dtype="float16")
    [full] = extract(pipeline)
    [small] = extract(replace(pipeline, backbones=(half,)))
    assert small.group != full.group and "-f16-" in small.group
    cache = Cache(pipeline.cache)
    stored = zarr.open_group(cache.current("tiny", small.group), mode="r")["features"]
    assert stored.dtype == np.float16
    a, b = cache.read("tiny", full.group), cache.read("tiny", small.group)
    assert b.X.dtype == np.float32
    scale = float(np.abs(a.X).max())
    np.testing.assert_allclose(b.X, a.X, rtol=1e-3, atol=1e-3 * scale)
    results = train_heads(replace(pipeline, backbones=(half,), heads=pipeline.heads[:1]))
    assert results[0].accuracy["train"] == 1.0


def test_several_backbones_decode_each_image_once_and_match_solo_runs(
    pipeline, monkeypatch, tmp_path
):
    from featurecache.datasets import Listing
    from featurecache.extraction import decoding

    backbones = (
        BackboneConfig(name="mobilenet_v2", weights="none", input_size=SIZE),
        BackboneConfig(name="mobilenet", weights="none", input_size=SIZE, args={"alpha": 0.25}),
        BackboneConfig(name="mobilenet_v2", weights="none", input_size=96),
    )
    reads, decodes = [], []
    original_load, original_decode = Listing.load, decoding.decode

    def counting_load(self, index):
        reads.append(index)
        return original_load(self, index)

    def counting_decode(data, size, *, source, decoder):
        decodes.append((source, size))
        return original_decode(data, size, source=source, decoder=decoder)

    monkeypatch.setattr(Listing, "load", counting_load)
    monkeypatch.setattr(decoding, "decode", counting_decode)
    together = extract(replace(pipeline, backbones=backbones))
    assert [r.n_extracted for r in together] == [39, 39, 39]
    assert len(reads) == 39  # one read per image for all three backbones
    assert sorted(size for _, size in decodes) == [SIZE] * 39 + [96] * 39  # once per size
    monkeypatch.undo()
    for backbone, joint in zip(backbones, together, strict=True):
        solo_pipeline = replace(
            pipeline,
            backbones=(backbone,),
            cache=tmp_path / backbone.name / str(backbone.input_size),
        )
        [solo] = extract(solo_pipeline)
        a = Cache(pipeline.cache).read("tiny", joint.group)
        b = Cache(solo_pipeline.cache).read("tiny", solo.group)
        np.testing.assert_array_equal(a.X, b.X)


def test_a_changed_search_retrains_the_head(tmp_path):
    """refresh keeps a head only if its search (grid, folds, sample) is the one asked for."""
    from featurecache.config import HeadConfig
    from featurecache.heads.freshness import fresh_record

    head = HeadConfig(name="lr", kind="logistic_regression", search={"C": (0.1, 1.0)}, cv=5)
    attrs = {"content_hash": "c", "recipe_hash": "r", "backbone": {"name": "mobilenet_v2"}}
    (tmp_path / "model.joblib").write_bytes(b"")
    (tmp_path / "metrics.json").write_text('{"test": {"accuracy": 0.9}}')
    info = {
        "content_hash": "c",
        "recipe_hash": "r",
        "kind": "logistic_regression",
        "params": {},
        "model_file": "model.joblib",
        "cache": {"dataset": "d", "group": "g"},
        "search": {"cv": 5, "grid_given": {"C": [0.1, 1.0], "search_samples": 0}},
    }
    (tmp_path / "head.json").write_text(json.dumps(info))
    assert fresh_record(tmp_path, head, "logistic_regression", attrs) is not None
    for changed in (
        HeadConfig(name="lr", kind="logistic_regression", search={"C": (0.1, 1.0)}, cv=3),
        HeadConfig(name="lr", kind="logistic_regression", search={"C": (1.0,)}, cv=5),
        HeadConfig(
            name="lr", kind="logistic_regression", search={"C": (0.1, 1.0)}, search_samples=9
        ),
        HeadConfig(name="lr", kind="logistic_regression"),
    ):
        assert fresh_record(tmp_path, changed, "logistic_regression", attrs) is None


def test_the_same_folder_through_a_link_or_dots_is_a_cache_hit(pipeline, split_folder, tmp_path):
    """One folder, three spellings: one listing, so the second and third extract are cache
    hits (nothing hashed again) and the cache records one canonical path."""
    first = extract(pipeline)[0]
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(split_folder)
    for spelled in (tmp_path / "link", tmp_path / "elsewhere" / ".." / split_folder.name):
        dataset = replace(pipeline.datasets[0], path=spelled)
        [again] = extract(replace(pipeline, datasets=(dataset,)))
        assert again.cache_hit and again.n_extracted == 0 and again.group == first.group
    attrs = Cache(pipeline.cache).read("tiny", first.group).provenance
    assert attrs["dataset"]["path"] == str(split_folder.resolve())
