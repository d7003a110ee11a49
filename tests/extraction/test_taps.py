"""Activation maps, pooled taps and flipped views: stored from one pass, with the
same guarantees as the features (content keys, refresh, crash-safe commit, Dask, gc)."""

import json
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import zarr

from featurecache.backbones import build_backbone
from featurecache.backbones.taps import prefix_model, tail_model
from featurecache.cache import Cache
from featurecache.cache.recipe import request_hash
from featurecache.config import Augmentation, BackboneConfig, DatasetConfig, Pipeline, registry
from featurecache.deps import import_keras
from featurecache.errors import ConfigError
from featurecache.extraction import extract
from featurecache.finetuning.cached import train_model
from featurecache.finetuning.model import build_model
from tests.conftest import (
    CLASSES,
    assert_same_numbers,
    json_or_none,
    make_image,
    needs_onnx,
    sigkill_when,
    workspace,
)

TAPPED = dict(
    name="mobilenet_v2",
    weights="none",
    input_size=64,
    finetune_from=True,
    taps=("block_13_expand_relu",),
    views=("identity", "flip"),
)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    for split, n in (("train", 6), ("test", 2)):
        for pattern, (name, color) in enumerate(CLASSES.items()):
            for i in range(n):
                make_image(root / split / name / f"{name}_{i}.png", color, pattern=pattern + i)
    return root


def pipe(folder, cache, **backbone):
    """A pipeline extracting ``folder`` (data set ``d``) with the tapped backbone."""
    return Pipeline(
        name="p",
        datasets=(DatasetConfig(name="d", path=folder),),
        backbones=(BackboneConfig(**{**TAPPED, **backbone}),),
        cache=cache,
        batch_size=5,
    )


def generation(cache_dir, dataset="d"):
    cache = Cache(cache_dir)
    [(ds, group, _)] = [g for g in cache.groups() if g[0] == dataset]
    return zarr.open_group(str(cache_dir / ds / group / "current"), mode="r"), group


def test_one_pass_stores_activations_taps_and_flips_with_their_shapes(folder, tmp_path):
    [result] = extract(pipe(folder, tmp_path / "c"))
    backbone = BackboneConfig(**TAPPED)
    gen, group = generation(tmp_path / "c")
    n = result.n_images
    assert n == 24
    assert gen["activations"].shape == (n, 4, 4, 96) and gen["activations"].dtype == np.float16
    assert gen["activations"].chunks[1:] == (4, 4, 96)  # chunked along images only
    assert gen["activations"].metadata.dimension_names == ("image", "y", "x", "channel")
    assert gen["pooled.block_13_expand_relu"].shape == (n, 576)
    for name in ("features", "pooled.block_13_expand_relu", "activations"):
        assert gen[f"{name}.flip"].shape == gen[name].shape
        assert not np.array_equal(gen[f"{name}.flip"][...], gen[name][...])
    assert (
        json.loads((tmp_path / "c" / "d" / group / "current" / "zarr.json").read_text())[
            "attributes"
        ]["backbone"]["finetune_from"]
        == "block_12_add"
    )

    # The same pass: the tail on the stored activations gives the stored features (to
    # float16's precision), and the identity features are the plain extraction's.
    built = build_backbone(backbone)
    tail = tail_model(built.model, "block_12_add")
    again = np.asarray(tail.predict(gen["activations"][...].astype(np.float32), verbose=0))
    np.testing.assert_allclose(again, gen["features"][...], atol=2e-2, rtol=2e-2)
    extract(pipe(folder, tmp_path / "plain", finetune_from=None, taps=(), views=("identity",)))
    plain_gen, _ = generation(tmp_path / "plain")
    np.testing.assert_allclose(plain_gen["features"][...], gen["features"][...], atol=1e-6)


def test_taps_views_and_the_activation_map_are_part_of_the_recipe():
    plain = BackboneConfig(name="mobilenet_v2", weights="none")
    assert "finetune_from" not in plain.describe()  # old groups keep their hash
    hashes = {
        request_hash(plain),
        request_hash(plain.replace(finetune_from="block_12_add")),
        request_hash(plain.replace(taps=("block_13_expand_relu",))),
        request_hash(plain.replace(views=("identity", "flip"))),
    }
    assert len(hashes) == 4


def test_refresh_reuses_every_array_and_gc_drops_the_old_generation(folder, tmp_path):
    extract(pipe(folder, tmp_path / "c"))
    before, group = generation(tmp_path / "c")
    old = {name: array[...] for name, array in before.arrays()}
    make_image(folder / "train" / "red" / "red_new.png", (90, 10, 10), pattern=3)
    [result] = extract(pipe(folder, tmp_path / "c"))
    assert (result.n_extracted, result.n_reused) == (1, 24)
    after, _ = generation(tmp_path / "c")
    sources = list(after["sources"][...])
    new_row = next(i for i, s in enumerate(sources) if s.endswith("red_new.png"))
    kept = [i for i in range(len(sources)) if i != new_row]
    old_sources = list(before["sources"][...])
    for name in ("activations", "activations.flip", "pooled.block_13_expand_relu.flip"):
        moved = after[name][...][kept]
        np.testing.assert_array_equal(
            moved, old[name][[old_sources.index(sources[i]) for i in kept]]
        )
    from featurecache.cache.admin import collect_garbage

    collect_garbage(tmp_path / "c")
    gens = [p.name for p in (tmp_path / "c" / "d" / group).iterdir() if p.name.startswith("gen-")]
    assert len(gens) == 1


def test_a_sigkilled_extraction_resumes_to_the_same_arrays(folder, tmp_path):
    """The activation maps go through the staging area batch by batch like the features:
    a real process killed after its first batches resumes and commits the same numbers."""
    for i in range(40):  # enough batches to be killed in the middle
        make_image(folder / "train" / "blue" / f"more_{i}.png", (20, 20, 180), pattern=i % 4)
    toml = tmp_path / "p.toml"
    toml.write_text(
        f'name = "p"\ncache = "{tmp_path / "c"}"\nbatch_size = 4\n'
        f'[[datasets]]\nname = "d"\npath = "{folder}"\n'
        '[[backbones]]\nname = "mobilenet_v2"\nweights = "none"\ninput_size = 64\n'
        'finetune_from = true\ntaps = ["block_13_expand_relu"]\nviews = ["identity", "flip"]\n'
    )
    args = [sys.executable, "-m", "featurecache", "-q", "extract", str(toml), "--json"]

    def twelve_images_staged() -> bool:
        metas = (json_or_none(m) for m in workspace(tmp_path / "c").glob("staging/*/*/*/zarr.json"))
        progress = [m.get("attributes", {}).get("progress", {}) for m in metas if m]
        return any(p.get("records_done", 0) >= 12 for p in progress)

    sigkill_when(args, twelve_images_staged)
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [doc] = json.loads(done.stdout)["extract"]
    assert doc["n_resumed"] >= 12 and doc["n_images"] == 64
    whole = pipe(folder, tmp_path / "whole")
    extract(replace(whole, batch_size=4))
    a, _ = generation(tmp_path / "whole")
    b, _ = generation(tmp_path / "c")
    for name in ("features", "activations", "activations.flip", "pooled.block_13_expand_relu"):
        assert_same_numbers(a[name][...], b[name][...])


@pytest.mark.real_weights
def test_dask_shards_store_the_same_arrays(folder, tmp_path):
    pytest.importorskip("distributed")
    from featurecache.extraction import Cluster

    # ImageNet weights (random weights are seeded per build, not per process)
    real = dict(weights="imagenet", input_size=224)
    extract(pipe(folder, tmp_path / "local", **real))
    extract(pipe(folder, tmp_path / "dask", **real), cluster=Cluster(workers=1))
    local_gen, _ = generation(tmp_path / "local")
    dask_gen, _ = generation(tmp_path / "dask")
    assert list(local_gen["keys"][...]) == list(dask_gen["keys"][...])
    for name in ("features.flip", "activations", "activations.flip"):
        a, b = (g[name][...].astype(np.float32) for g in (local_gen, dask_gen))
        # A worker runs TensorFlow on one thread: same numbers up to summation order.
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * np.abs(a).max())


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50", "vgg16", "efficientnet_b0"])
def test_the_default_cache_point_cuts_the_backbone_in_two(name):
    """The layers after the registry's cache point run on its activation map alone and
    give the backbone's own features (random weights)."""
    config = BackboneConfig(name=name, weights="none", input_size=64, finetune_from=True)
    built = build_backbone(config)
    layer = registry.REGISTRY[name].cache_point
    assert config.finetune_from == layer
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    whole = np.asarray(built.model(x))
    cut = np.asarray(tail_model(built.model, layer)(prefix_model(built.model, layer)(x)))
    np.testing.assert_allclose(cut, whole, rtol=1e-5, atol=1e-5)

    # One training step of the tail and a head on the cached maps moves the assembled
    # model too: it shares the tail's layers (BatchNormalization stays frozen).
    keras = import_keras()
    head = keras.Sequential([keras.layers.Dense(3, activation="softmax")])
    model = train_model(built, head, layer)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    maps = np.asarray(prefix_model(built.model, layer)(x))
    before = built.model.get_weights()
    model.train_on_batch(maps, np.array([0, 1]))
    assert any(
        not np.array_equal(a, b) for a, b in zip(before, built.model.get_weights(), strict=True)
    )
    bn = [w for w in built.model.layers if isinstance(w, keras.layers.BatchNormalization)]
    assert not any(w.trainable for w in bn)  # VGG16 has none
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    whole_model = build_model(built, head, Augmentation.off())
    via_cache = model.predict(prefix_model(built.model, layer)(built.preprocess(pixels)), verbose=0)
    np.testing.assert_allclose(whole_model.predict(pixels, verbose=0), via_cache, atol=1e-4)


def test_every_family_but_nasnet_names_a_cache_point():
    missing = [n for n, s in registry.REGISTRY.items() if s.cache_point is None]
    assert missing == ["nasnet_mobile"]
    with pytest.raises(ConfigError, match="no default cache point"):
        BackboneConfig(name="nasnet_mobile", weights="none", finetune_from=True)


def test_bad_taps_and_views_are_named():
    with pytest.raises(ConfigError, match="views must start with 'identity'"):
        BackboneConfig(name="mobilenet_v2", views=["flip"])
    with pytest.raises(ConfigError, match="unknown view 'rotate'"):
        BackboneConfig(name="mobilenet_v2", views=["identity", "rotate"])
    with pytest.raises(ConfigError, match="has no layer 'block_99'"):
        build_backbone(BackboneConfig(name="mobilenet_v2", weights="none", taps=["block_99"]))
    # block_14_add also reads block_13's output: no model runs on block_14's map alone
    with pytest.raises(ConfigError, match="later layers also read earlier ones"):
        build_backbone(
            BackboneConfig(
                name="mobilenet_v2",
                weights="none",
                input_size=64,
                finetune_from="block_14_expand_relu",
            )
        )


@needs_onnx
def test_the_onnx_engine_stores_the_same_arrays(folder, tmp_path):
    extract(pipe(folder, tmp_path / "tf"))
    extract(pipe(folder, tmp_path / "onnx", engine="onnxruntime"))
    a, _ = generation(tmp_path / "tf")
    b, _ = generation(tmp_path / "onnx")
    for name in ("features", "pooled.block_13_expand_relu.flip"):
        np.testing.assert_allclose(a[name][...], b[name][...], atol=1e-4)
    np.testing.assert_allclose(
        a["activations"][...].astype(np.float32),
        b["activations"][...].astype(np.float32),
        atol=1e-2,
        rtol=1e-2,
    )
    shutil.rmtree(tmp_path / "onnx")
