"""``featurecache audit`` end to end on real photos with real MobileNetV2 features:
planted duplicates found, flipped labels ranked first, the page opened in Chromium,
refresh, and a source that is gone."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from featurecache import open_cache
from featurecache.auditing.labels import find_label_issues
from featurecache.config import AuditConfig, BackboneConfig, DatasetConfig, Pipeline
from featurecache.extraction import extract
from tests.auditing.planted import ALTERATIONS, flip_labels, plant_duplicates
from tests.conftest import invoke, link_fingers

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")


def write_pipeline(work: Path) -> Path:
    pipeline = work / "planted.toml"
    pipeline.write_text(
        f'name = "planted"\ncache = "{work / "cache"}"\noutput = "{work / "runs"}"\n'
        f'[[datasets]]\nname = "planted"\npath = "{work / "planted"}"\n'
        '[[backbones]]\nname = "mobilenet_v2"\nweights = "imagenet"\n'
        '[[heads]]\nname = "logistic_regression"\nkind = "logistic_regression"\n'
        "[audit]\nthumbnails = 40\n"
    )
    return pipeline


@pytest.fixture(scope="module")
def planted(tmp_path_factory, datasets_dir):
    """6 clothing_small photos of each class per split, and 4 altered copies of 6 test
    photos in train; `run`, then `audit --json`."""
    work = tmp_path_factory.mktemp("audit")
    copies = plant_duplicates(
        datasets_dir / "clothing_small", work / "planted", originals=6, per_class=6, seed=2
    )
    pipeline = write_pipeline(work)
    assert invoke("run", pipeline).exit_code == 0
    done = invoke("audit", pipeline, "--json")
    assert done.exit_code == 0, done.output
    [result] = json.loads(done.stdout)["audit"]
    return work, pipeline, copies, result


def relative(source: str, work: Path) -> str:
    return str(Path(source).relative_to(work / "planted"))


def test_every_planted_copy_is_found_and_no_clean_pair_is_flagged(planted):
    work, _, copies, result = planted
    found = json.loads((Path(result["folder"]) / "audit.json").read_text())
    pairs = {
        frozenset((relative(p["a"]["source"], work), relative(p["b"]["source"], work)))
        for p in found["duplicates"]["pairs"]
    }
    wanted = {frozenset(pair) for pair in copies.items()}
    missed = wanted - pairs
    assert not missed, f"planted copies not found at {AuditConfig().threshold}: {missed}"
    family = {**{c: o for c, o in copies.items()}, **{o: o for o in copies.values()}}
    for pair in pairs:
        a, b = sorted(pair)
        assert a in family and b in family and family[a] == family[b], f"clean pair {a}, {b}"
    leaked = {relative(leak["source"], work) for leak in found["leaks"]}
    assert leaked == set(copies.values())
    assert result["counts"]["leaks"] == len(leaked) == 6
    assert result["counts"]["duplicate_groups"] == 6


def test_accuracy_without_the_leak_and_the_files_beside_it(planted):
    _, _, copies, result = planted
    [head] = result["accuracy"]
    assert head["head"] == "logistic_regression" and head["n_leaked"] == 6
    assert head["n_test"] == 60 and 0 <= head["without_leak"] <= 1
    folder = Path(result["folder"])
    with (folder / "leaks.csv").open() as f:
        leaks = list(csv.DictReader(f))
    assert len(leaks) == 6 and {"source", "train_source", "similarity"} <= set(leaks[0])
    with (folder / "duplicates.csv").open() as f:
        assert len(list(csv.DictReader(f))) >= len(copies)
    for name in ("label_issues.csv", "outliers.csv", "mistakes.csv", "map.png"):
        assert (folder / name).stat().st_size > 0
    assert len(list((folder / "thumbs").glob("*.jpg"))) >= 6 * (1 + len(ALTERATIONS))
    assert not list(open_cache(planted[0] / "cache").root.rglob("*.jpg"))  # none in the cache


def test_the_report_links_the_audit_beside_the_accuracy(planted):
    work, pipeline, _, result = planted
    said = invoke("audit", pipeline)  # the same inputs: the same findings, said in words
    assert said.exit_code == 0, said.output
    assert "6 held-out images with a duplicate in train" in said.output
    assert "without the 6 leaked test images" in said.output and "audit.html" in said.output
    assert invoke("report", pipeline).exit_code == 0
    text = (work / "runs" / "planted" / "report.md").read_text()
    assert "without leaked test images" in text
    assert "[The audit page](planted/mobilenet_v2-" in text and "/audit/audit.html)" in text
    [block] = json.loads((work / "runs" / "planted" / "report.json").read_text())["blocks"]
    assert block["audit"]["counts"] == result["counts"]


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)"
)
def test_the_page_shows_its_thumbnails_and_map_in_chromium(planted):
    from playwright.sync_api import sync_playwright

    work, _, _, result = planted
    shot = work / "audit.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(Path(result["page"]).as_uri())
        page.wait_for_load_state("load")
        images = page.evaluate(
            "Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])"
        )
        text = page.inner_text("body")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    broken = [src for src, width in images if width == 0]
    assert not broken, f"images that did not load: {broken}"
    sources = [src for src, _ in images]
    assert "map.png" in sources and sum(s.startswith("thumbs/") for s in sources) >= 12
    assert "without leaked images" in text and "The leak: 6 held-out images" in text
    assert shot.stat().st_size > 50_000


def test_refresh_keeps_the_audit_and_a_gone_source_is_named(planted):
    work, pipeline, copies, result = planted
    done = invoke("refresh", pipeline, "--json")
    assert done.exit_code == 0, done.output
    [refreshed] = json.loads(done.stdout)["refresh"]
    [audit] = refreshed["audit"]
    assert audit["unchanged"] and audit["counts"] == result["counts"]
    gone = work / "planted" / next(iter(copies))
    gone.unlink()
    done = invoke("audit", pipeline, "--json")  # the cache still holds its row
    assert done.exit_code == 0, done.output
    found = json.loads((Path(result["folder"]) / "audit.json").read_text())
    named = [leak["train"] for leak in found["leaks"] if leak["train"]["source"] == str(gone)] + [
        p["a"] for p in found["duplicates"]["pairs"] if p["a"]["source"] == str(gone)
    ]
    named += [p["b"] for p in found["duplicates"]["pairs"] if p["b"]["source"] == str(gone)]
    shown = [image for image in named if "thumb" in image]
    assert shown and all(i["thumb"] is None and "gone" in i["missing"] for i in shown)


def test_flipped_labels_of_real_photos_rank_first(datasets_dir, tmp_path):
    root = link_fingers(datasets_dir, tmp_path / "fingers", {"train": 30, "test": 5})
    pipeline = Pipeline(
        name="flips",
        datasets=(DatasetConfig(name="fingers", path=root),),
        backbones=(BackboneConfig(name="mobilenet_v2", weights="imagenet"),),
        cache=tmp_path / "cache",
    )
    extract(pipeline)
    features = open_cache(tmp_path / "cache").features("fingers")
    train = np.flatnonzero(features.split == "train")
    noisy, flipped = flip_labels(features.y, train, 0.05, seed=0)
    issues = find_label_issues(features.X, noisy, cv=4)
    assert issues is not None
    ranked = train[np.argsort(issues.quality[train], kind="stable")]
    top = ranked[: len(train) // 10]
    recall = np.isin(flipped, top).mean()
    assert recall >= 0.8, f"{recall:.2f} of {len(flipped)} flips in the lowest 10%"
    assert np.isin(issues.flagged, flipped).mean() >= 0.8  # precision of cleanlab's flags


def test_a_head_retrained_after_the_audit_is_not_paired_with_its_figures(planted):
    work, pipeline, _, _ = planted
    assert invoke("train-head", pipeline).exit_code == 0  # a new model, after the audit
    assert invoke("report", pipeline).exit_code == 0
    text = (work / "runs" / "planted" / "report.md").read_text()
    assert "- (audited before this head was trained)" in text
    assert "logistic_regression (retrained since)" in text


def test_a_data_folder_is_audited_from_the_same_cache(planted):
    work, _, _, result = planted
    done = invoke(
        "audit",
        "--data",
        work / "planted",  # --data names the data set after its folder
        "--backbone",
        "mobilenet_v2",
        "--cache",
        work / "cache",
        "--output",
        work / "data-runs",
        "--json",
    )
    assert done.exit_code == 0, done.output
    [again] = json.loads(done.stdout)["audit"]
    assert again["group"] == result["group"] and again["counts"]["leaks"] == 6
    assert again["accuracy"] == []  # no head trained under that output folder
    found = json.loads((Path(again["folder"]) / "audit.json").read_text())
    assert all(leak["thumb"] for leak in found["leaks"])


def test_without_cached_features_the_audit_says_what_to_run(tmp_path, planted):
    work, pipeline, _, _ = planted
    done = invoke("audit", pipeline, "--cache", tmp_path / "empty")
    assert done.exit_code == 1
    assert "has no features for data set 'planted'" in done.output
    assert "featurecache extract" in done.output and "Traceback" not in done.output
