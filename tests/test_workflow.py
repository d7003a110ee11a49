"""Incremental refresh on a real 500-image folder: only what changed is computed."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from featurecache.cache import Cache
from featurecache.cli import app

from .conftest import make_image

SIZE = 32
N_PER_CLASS = 250


def write_pipeline(
    tmp_path: Path, data: Path, name: str = "p", heads=("logistic_regression",), datasets=None
) -> Path:
    lines = [
        f'name = "{name}"',
        f'cache = "{tmp_path / "cache"}"',
        f'output = "{tmp_path / "runs"}"',
        "batch_size = 16",
    ]
    for ds_name, path in datasets or [("photos", data)]:
        lines += ["[[datasets]]", f'name = "{ds_name}"', f'path = "{path}"']
    lines += ["[[backbones]]", 'name = "mobilenet_v2"', 'weights = "none"', f"input_size = {SIZE}"]
    for head in heads:
        lines += ["[[heads]]", f'kind = "{head}"']
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def refresh(*args):
    result = CliRunner().invoke(app, ["refresh", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["refresh"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos") / "photos"
    for c, color in enumerate([(220, 40, 40), (40, 40, 220)]):
        for j in range(N_PER_CLASS):
            make_image(root / f"class{c}" / f"{j:04d}.png", color, size=(24, 24), pattern=c)
    return root


@pytest.fixture
def folder(photos, tmp_path):
    copy = tmp_path / "photos"
    shutil.copytree(photos, copy)
    return copy


def test_refresh_computes_only_what_changed(folder, tmp_path):
    pipeline = write_pipeline(tmp_path, folder)
    [first] = refresh(pipeline)
    assert first["n_extracted"] == 500 and first["n_heads_trained"] == 1

    [noop] = refresh(pipeline)
    assert noop["n_extracted"] == 0 and noop["extract"][0]["cache_hit"]
    assert noop["n_heads_trained"] == 0 and noop["heads"][0]["trained"] is False

    for j in range(10):  # ten new images
        make_image(folder / "class0" / f"new{j}.png", (200, 60, 60), size=(24, 24), pattern=j % 3)
    [added] = refresh(pipeline)
    ex = added["extract"][0]
    assert (added["n_extracted"], ex["n_new"], ex["n_reused"], ex["n_images"]) == (10, 10, 500, 510)
    assert added["n_heads_trained"] == 1

    changed_path = folder / "class1" / "0007.png"
    make_image(changed_path, (10, 10, 10), size=(24, 24), pattern=3)  # new bytes
    [changed] = refresh(pipeline)
    assert changed["n_extracted"] == 1 and changed["extract"][0]["n_changed"] == 1

    deleted = folder / "class1" / "0011.png"
    deleted.unlink()
    [removed] = refresh(pipeline)
    ex = removed["extract"][0]
    assert (removed["n_extracted"], ex["n_removed"], ex["n_images"]) == (0, 1, 509)
    assert removed["n_heads_trained"] == 1
    fs = Cache(tmp_path / "cache").read("photos", ex["group"])
    assert str(deleted) not in set(fs.sources)
    head = Path(removed["heads"][0]["folder"])
    metrics = json.loads((head / "metrics.json").read_text())
    assert sum(m["n_images"] for m in metrics.values()) == 509


def test_incremental_result_equals_a_clean_extraction(folder, tmp_path):
    pipeline = write_pipeline(tmp_path, folder)
    refresh(pipeline)
    for j in range(5):
        make_image(folder / "class1" / f"late{j}.png", (50, 50, 200), size=(24, 24), pattern=1)
    (folder / "class0" / "0003.png").unlink()
    [inc] = refresh(pipeline)
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    clean = write_pipeline(clean_dir, folder)
    [fresh] = refresh(clean)
    a = Cache(tmp_path / "cache").read("photos", inc["extract"][0]["group"])
    b = Cache(clean_dir / "cache").read("photos", fresh["extract"][0]["group"])
    assert list(a.sources) == list(b.sources) and list(a.keys) == list(b.keys)
    # Rows computed in batches of another composition may differ in the last bits
    # (oneDNN's summation order); a resumed run uses the same batches (test_crash.py).
    scale = float(np.abs(b.X).max())
    np.testing.assert_allclose(a.X, b.X, rtol=1e-4, atol=1e-5 * scale)


def test_an_image_in_two_data_sets_is_computed_once(folder, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(folder / "class0", other / "class0")  # same bytes, other paths
    shutil.copytree(folder / "class1", other / "class1")
    make_image(other / "class1" / "extra.png", (0, 0, 255), size=(24, 24), pattern=1)
    pipeline = write_pipeline(tmp_path, folder, datasets=[("a", folder), ("b", other)])
    [result] = refresh(pipeline)
    a, b = result["extract"]
    assert a["n_extracted"] == 500
    assert (b["n_extracted"], b["n_reused"]) == (1, 500)


def test_gc_frees_superseded_generations_and_unreferenced_groups(folder, tmp_path):
    pipeline = write_pipeline(tmp_path, folder)
    refresh(pipeline)
    make_image(folder / "class0" / "x.png", (1, 2, 3), size=(24, 24))
    refresh(pipeline)
    runner = CliRunner()
    cache = tmp_path / "cache"
    dry = json.loads(
        runner.invoke(app, ["gc", "--cache", str(cache), "--dry-run", "--json"]).stdout
    )
    assert dry["dry_run"] and len(dry["removed"]) == 1 and dry["freed_bytes"] > 0
    assert "gen-000001" in dry["removed"][0]
    done = runner.invoke(app, ["gc", "--cache", str(cache)])
    assert done.exit_code == 0 and "removed 1 entries" in done.output
    other = write_pipeline(tmp_path, folder, name="other", datasets=[("elsewhere", folder)])
    scoped = json.loads(
        runner.invoke(app, ["gc", str(other), "--cache", str(cache), "--json"]).stdout
    )
    assert scoped["removed"] == [f"photos/{refresh(pipeline)[0]['extract'][0]['group']}"]


def test_an_invalid_head_parameter_fails_before_any_extraction(folder, tmp_path, monkeypatch):
    pipeline = write_pipeline(tmp_path, folder, heads=())
    with pipeline.open("a") as fh:
        fh.write('[[heads]]\nname = "lr"\nkind = "logistic_regression"\nparams = { C = "lots" }\n')

    def boom(*args, **kwargs):
        raise AssertionError(
            "the backbone was built: extraction started before the heads were checked"
        )

    monkeypatch.setattr("featurecache.extraction.job.build_backbone", boom)
    result = CliRunner().invoke(app, ["run", str(pipeline)])
    assert result.exit_code == 1, result.output
    assert "head 'lr'" in result.output and "'C' parameter" in result.output
    assert "Traceback" not in result.output and result.output.strip().count("\n") == 0
    assert not (tmp_path / "cache").exists()
    refreshed = CliRunner().invoke(app, ["refresh", str(pipeline)])  # the same, for cron
    assert refreshed.exit_code == 1 and "head 'lr'" in refreshed.output, refreshed.output
    assert "'C' parameter" in refreshed.output and "Traceback" not in refreshed.output
    assert not (tmp_path / "cache").exists()


def forbid_extraction(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the backbone was built: extraction started before the heads")

    monkeypatch.setattr("featurecache.extraction.job.build_backbone", boom)


@pytest.mark.parametrize(
    ("head", "words"),
    [
        ('kind = "logistic_regresion"', "unknown head 'logistic_regresion'"),
        ('kind = "sklearn.ensemble.NoSuchForest"', "cannot import head estimator"),
        ('kind = "knn"\nparams = { n_neighbours = 3 }', "unexpected keyword argument"),
        ('kind = "knn"\ntaps = ["block_13_expand_relu"]', "heads[0].taps: no backbone caches"),
    ],
)
def test_a_refresh_checks_every_head_before_extracting(
    class_folder, tmp_path, monkeypatch, head, words
):
    """Kind, parameters and taps: a typo fails in seconds, before the backbone is built."""
    pipeline = write_pipeline(tmp_path, class_folder, heads=())
    with pipeline.open("a") as fh:
        fh.write(f'[[heads]]\nname = "h"\n{head}\n')
    forbid_extraction(monkeypatch)
    result = CliRunner().invoke(app, ["refresh", str(pipeline)])
    assert result.exit_code == 1, result.output
    assert words in result.output and result.output.strip().count("\n") == 0, result.output
    assert not (tmp_path / "cache").exists()


def test_a_head_edited_between_refreshes_is_checked_before_new_images_are_extracted(
    class_folder, tmp_path, monkeypatch
):
    pipeline = write_pipeline(tmp_path, class_folder)
    [first] = refresh(pipeline)
    make_image(class_folder / "red" / "new.png", (200, 10, 10), pattern=1)
    text = pipeline.read_text().replace(
        'kind = "logistic_regression"', 'kind = "logistic_regression"\nparams = { C = -1 }'
    )
    pipeline.write_text(text)
    forbid_extraction(monkeypatch)
    result = CliRunner().invoke(app, ["refresh", str(pipeline)])
    assert result.exit_code == 1 and "'C' parameter" in result.output, result.output
    group = first["extract"][0]["group"]
    assert Cache(tmp_path / "cache").read("photos", group).X.shape[0] == 30  # not 31


def test_a_refresh_with_nothing_to_do_imports_neither_tensorflow_nor_scikit_learn(folder, tmp_path):
    """The cron path: nothing changed, so nothing heavy is imported (about a second each)."""
    pipeline = write_pipeline(tmp_path, folder)
    refresh(pipeline)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "featurecache", "refresh", str(pipeline)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines()}
    heavy = {"tensorflow", "keras", "jax", "torch", "sklearn"}
    assert not imported & heavy, imported & heavy


def test_an_invalid_search_candidate_or_dense_parameter_fails_before_any_extraction(
    folder, tmp_path
):
    for head, words in (
        ('kind = "knn"\nsearch = { n_neighbors = [3, -1] }', "n_neighbors"),
        ('kind = "dense"\nparams = { units = 0 }', "units must be an integer >= 1"),
    ):
        pipeline = write_pipeline(tmp_path, folder, heads=())
        with pipeline.open("a") as fh:
            fh.write(f'[[heads]]\nname = "h"\n{head}\n')
        result = CliRunner().invoke(app, ["run", str(pipeline)])
        assert result.exit_code == 1 and "head 'h'" in result.output, result.output
        assert words in result.output
        assert not (tmp_path / "cache").exists()
