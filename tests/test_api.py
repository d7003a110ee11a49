"""The public Python API (featurecache.api) on the real cat vs non-cat cache: features,
labels and splits in two lines, xarray in three, plain zarr and xarray without
featurecache, and the stages returning what the CLI prints with --json."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import zarr

import featurecache
from featurecache.errors import CacheError
from tests.conftest import REPO, invoke, workspace

xr = pytest.importorskip("xarray")


@pytest.fixture(scope="module")
def cache(catvnoncat_run):
    work, _, _ = catvnoncat_run
    return work / "cache"


def test_features_labels_and_splits_in_two_lines(cache):
    fs = featurecache.open_cache(cache).features("catvnoncat")
    assert fs.X.shape == (259, 1280) and fs.X.dtype == np.float32
    assert fs.y.dtype == np.int32 and set(fs.y.tolist()) == {0, 1}
    assert fs.class_names == ["non-cat", "cat"] and fs.backbone == "mobilenet_v2"
    assert (len(fs.train), len(fs.test)) == (209, 50) and fs.splits == ["train", "test"]
    assert set(fs.train.split) == {"train"} and fs.train.X.shape == (209, 1280)
    assert fs.provenance["weights"]["sha256"] and fs.generation == "gen-000001"
    assert len(fs.keys) == 259 and all(".h5" in s for s in fs.sources)  # (one image is there twice)
    # the same rows whichever way the backbone is named
    by_group = featurecache.open_cache(cache).features("catvnoncat", fs.group)
    np.testing.assert_array_equal(by_group.X, fs.X)
    by_name = featurecache.open_cache(cache).features("catvnoncat", "mobilenet_v2")
    np.testing.assert_array_equal(by_name.y, fs.y)
    assert "209" in repr(fs) and "1280" in repr(fs)


def test_a_backbone_name_is_matched_exactly_before_as_a_prefix():
    from featurecache.cache.features import choose_group

    groups = {"resnet50-224px-avg-aa": "resnet50", "resnet50_v2-224px-avg-bb": "resnet50_v2"}
    assert choose_group("d", "resnet50", groups) == "resnet50-224px-avg-aa"
    assert choose_group("d", "resnet50_v2", groups) == "resnet50_v2-224px-avg-bb"
    with pytest.raises(CacheError, match="several backbones"):
        choose_group("d", "resnet", groups)


def test_missing_names_say_what_is_there(cache):
    opened = featurecache.open_cache(cache)
    with pytest.raises(CacheError, match="it has: catvnoncat"):
        opened.features("cats")
    with pytest.raises(CacheError, match="mobilenet_v2-224px"):
        opened.features("catvnoncat", "resnet50")
    with pytest.raises(CacheError, match="no 'validation' images; its splits are train, test"):
        _ = opened.features("catvnoncat").validation
    with pytest.raises(CacheError, match="no generation 'gen-000009'"):
        opened.features("catvnoncat", generation="gen-000009")
    with pytest.raises(CacheError, match="no cache at"):
        featurecache.open_cache(cache.parent / "nowhere")


def test_to_xarray_has_named_dims_and_the_provenance(cache):
    fs = featurecache.open_cache(cache).features("catvnoncat")
    ds = fs.to_xarray()
    assert dict(ds.sizes) == {"image": 259, "feature": 1280}
    np.testing.assert_array_equal(ds.features.values, fs.X)
    assert (ds.class_name.values[fs.y == 1] == "cat").all()
    train = ds.where(ds.split == "train", drop=True)
    assert train.sizes["image"] == 209
    assert json.loads(ds.attrs["weights"])["sha256"] == fs.provenance["weights"]["sha256"]
    assert ds.attrs["class_names"] == ["non-cat", "cat"]


def test_plain_zarr_and_xarray_see_a_clean_hierarchy(cache, tmp_path):
    """No featurecache: zarr walks the cache without a warning (the workspace is beside
    it, not inside), and xarray reads a generation with named dims."""
    assert (workspace(cache) / "locks").is_dir()  # the bookkeeping is there, outside
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zarr warns about any non-zarr entry it meets
        root = zarr.open_group(str(cache), mode="r")
        tree = str(root.tree())
        names = [name for name, _ in root.members(max_depth=None)]
    assert "catvnoncat" in tree and not any("staging" in n or "locks" in n for n in names)
    fs = featurecache.open_cache(cache).features("catvnoncat")
    group = cache / "catvnoncat" / fs.group / "current"
    ds = xr.open_zarr(str(group), consolidated=False)
    assert ds.features.dims == ("image", "feature") and ds.sizes["image"] == 259
    np.testing.assert_array_equal(ds.features.values, fs.X)
    assert list(ds.split.values[:3]) == list(fs.split[:3])


def python_prints(code: str) -> str:
    """What ``code`` prints in a new Python process (which must exit 0)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_reading_features_does_not_import_tensorflow(cache):
    code = (
        "import sys, featurecache\n"
        f"fs = featurecache.open_cache({str(cache)!r}).features('catvnoncat')\n"
        "ds = fs.to_xarray()\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules]\n"
        "print(fs.X.shape, heavy)\n"
    )
    assert python_prints(code) == "(259, 1280) []"


def test_stages_return_what_the_command_prints_with_json(catvnoncat_run, tmp_path):
    """featurecache.train_head(pipeline) == `featurecache train-head --json` (same heads,
    same accuracies), on the cached features alone."""
    work, _, _ = catvnoncat_run
    pipeline = featurecache.load_pipeline(
        REPO / "pipelines" / "catvnoncat.toml",
        data_root=REPO.parent / "shared" / "datasets",
        cache=work / "cache",
        output=tmp_path / "api",
    )
    extracted = featurecache.extract(pipeline)
    assert [(r.cache_hit, r.n_extracted) for r in extracted] == [(True, 0)]  # nothing computed
    trained = featurecache.train_head(pipeline)
    cli = invoke(
        "train-head",
        REPO / "pipelines" / "catvnoncat.toml",
        "--data-root",
        REPO.parent / "shared" / "datasets",
        "--cache",
        work / "cache",
        "--output",
        tmp_path / "cli",
        "--json",
    )
    assert cli.exit_code == 0, cli.output
    printed = json.loads(cli.stdout)["heads"]
    mine = [h.to_dict() for h in trained]
    assert [h["head"] for h in mine] == [h["head"] for h in printed]
    for api_head, cli_head in zip(mine, printed, strict=True):
        assert set(api_head) == set(cli_head)  # the same typed result, field for field
        if api_head["kind"] != "dense":  # (the dense head's fit is not bit-reproducible)
            assert api_head["accuracy"] == cli_head["accuracy"]
        assert api_head["accuracy"]["test"] >= 0.9
    summary = featurecache.info(work / "cache")
    assert summary["groups"][0]["n_images"] == 259


def test_the_package_exports_the_api_lazily():
    code = (
        "import sys, featurecache\n"
        "assert 'featurecache.api' not in sys.modules and 'zarr' not in sys.modules\n"
        "from featurecache import open_cache, extract, train_head, finetune, FeatureSet\n"
        "import featurecache.finetuning, featurecache.prediction, featurecache.reporting\n"
        "import featurecache.backbones, featurecache.extraction\n"
        "assert all(callable(getattr(featurecache, n)) for n in ('finetune', 'predict', 'report',"
        " 'extract', 'list_backbones'))\n"
        "print(sorted(n for n in featurecache.__all__ if not hasattr(featurecache, n)))\n"
    )
    assert python_prints(code) == "[]"


def test_gc_removes_the_bookkeeping_older_versions_kept_inside_the_cache(cache, tmp_path):
    import shutil

    old = tmp_path / "old-cache"
    shutil.copytree(cache, old, symlinks=True)
    for name in (".staging/catvnoncat/g/plan", ".locks", ".engines"):
        (old / name).mkdir(parents=True)
    (old / ".locks" / "catvnoncat.lock").write_text("")
    with pytest.warns(UserWarning, match="not recognized as a component"):
        zarr.open_group(str(old), mode="r").tree()
    done = invoke("gc", "--cache", old, "--json")
    assert done.exit_code == 0, done.output
    assert {".staging", ".locks", ".engines"} <= set(json.loads(done.stdout)["removed"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zarr.open_group(str(old), mode="r").tree()
    assert featurecache.open_cache(old).features("catvnoncat").X.shape == (259, 1280)
