"""The audit's searches on made-up features: neighbours (faiss exact, approximate,
scikit-learn), duplicate groups and the leak, label issues, outliers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featurecache.auditing import neighbours as nb
from featurecache.auditing.duplicates import find_duplicates
from featurecache.auditing.labels import find_label_issues, outlier_scores
from featurecache.config import AuditConfig, load_pipeline
from featurecache.errors import ConfigError
from tests.auditing.planted import flip_labels


def clusters(n: int, dim: int = 64, classes: int = 5, seed: int = 0, spread: float = 0.6):
    """``n`` features around ``classes`` centres (float32) and their classes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    y = rng.integers(0, classes, n)
    return (centres[y] + rng.normal(size=(n, dim)) * spread).astype(np.float32), y


def test_exact_search_finds_the_same_neighbours_with_faiss_and_scikit_learn(monkeypatch):
    x, _ = clusters(600)
    with_faiss = nb.nearest(x, 5)
    monkeypatch.setattr(nb, "_faiss", lambda: None)
    with_sklearn = nb.nearest(x, 5)
    assert "faiss" in with_faiss.method and "scikit-learn" in with_sklearn.method
    np.testing.assert_array_equal(with_faiss.index[:, 0], with_sklearn.index[:, 0])
    np.testing.assert_allclose(with_faiss.similarity, with_sklearn.similarity, atol=1e-5)
    assert not (with_faiss.index == np.arange(600)[:, None]).any()  # never itself


def test_the_approximate_search_finds_planted_copies_and_reports_exact_similarities():
    x, _ = clusters(3000, dim=256, classes=20, spread=1.0)
    copies = np.arange(0, 3000, 100)
    x[copies + 1] = x[copies] * 1.5 + 0.01  # a scaled copy: cosine ~1
    found = nb.nearest(x.astype(np.float16), 5, exact_at_most=1000)
    assert found.method.startswith("approximate")
    pairs = {tuple(p) for p in found.pairs(0.99).tolist()}
    assert {(int(c), int(c) + 1) for c in copies} <= pairs
    exact = nb.nearest(x.astype(np.float16), 5)
    assert found.similarity[copies, 0] == pytest.approx(exact.similarity[copies, 0], abs=1e-4)


def test_without_faiss_a_search_beyond_exact_at_most_says_what_to_install(monkeypatch):
    monkeypatch.setattr(nb, "_faiss", lambda: None)
    with pytest.raises(Exception, match=r"featurecache\[audit\]"):
        nb.nearest(clusters(2500)[0], 3, exact_at_most=10)


def test_duplicates_are_grouped_and_test_images_with_one_in_train_are_the_leak():
    x, _ = clusters(40)
    x[10] = x[3] * 2  # near-duplicate of 3, in test
    x[11] = x[3] + 1e-3  # and another copy, in train
    keys = np.array([f"k{i}" for i in range(40)], dtype=object)
    keys[20] = keys[5]  # the same bytes listed twice
    splits = np.array(["train"] * 30 + ["test"] * 10, dtype=object)
    splits[[10, 20]] = "test"
    found = find_duplicates(keys, splits, nb.nearest(x, 5), threshold=0.99)
    assert [3, 10, 11] in found.groups and [5, 20] in found.groups
    leaks = {(leak.row, leak.train_row, leak.exact) for leak in found.leaks}
    assert leaks == {(10, 3, False), (20, 5, True)} or leaks == {(10, 11, False), (20, 5, True)}
    assert found.leaked_rows("test").tolist() == [10, 20]


def test_flipped_labels_rank_first_and_outliers_score_highest():
    x, y = clusters(800, classes=4, spread=0.5)
    noisy, flipped = flip_labels(y, np.arange(800), 0.05, seed=1)
    issues = find_label_issues(x, noisy, cv=4)
    assert issues is not None and issues.folds == 4
    top = issues.ranking()[: len(flipped) * 2]
    assert len(np.intersect1d(top, flipped)) >= 0.9 * len(flipped)
    assert (issues.suggested[flipped] == y[flipped]).mean() > 0.9
    far = x.copy()
    far[7] = 40 * np.random.default_rng(3).normal(size=x.shape[1])  # unlike every class
    assert int(np.argmax(outlier_scores(nb.nearest(far, 5)))) == 7


def test_label_issues_are_skipped_when_a_class_has_one_image():
    x, y = clusters(30, classes=3)
    y[:] = 0
    y[0], y[1:3] = 1, 2
    assert find_label_issues(x, y, cv=5) is None


def test_the_audit_table_of_a_pipeline_is_read_and_checked(tmp_path):
    text = '[[datasets]]\nname = "d"\npath = "d"\n[[backbones]]\nname = "mobilenet_v2"\n'
    plain = tmp_path / "plain.toml"
    plain.write_text(text)
    assert load_pipeline(plain).audit is None
    audited = tmp_path / "audited.toml"
    audited.write_text(text + "[audit]\nthreshold = 0.9\nmap = 'tsne'\n")
    assert load_pipeline(audited).audit == AuditConfig(threshold=0.9, map="tsne")
    audited.write_text(text + "[audit]\nthreshold = 1.5\n")
    with pytest.raises(ConfigError, match="threshold"):
        load_pipeline(audited)


def test_every_held_out_copy_of_a_train_file_is_a_leak():
    x, _ = clusters(6)
    keys = np.array(["a", "a", "a", "b", "c", "a"], dtype=object)
    splits = np.array(["test", "train", "test", "train", "train", "validation"], dtype=object)
    found = find_duplicates(keys, splits, nb.nearest(x, 2), threshold=0.999)
    assert {(leak.row, leak.train_row, leak.exact) for leak in found.leaks} == {
        (0, 1, True),
        (2, 1, True),
        (5, 1, True),
    }
    assert found.leaked_rows("test").tolist() == [0, 2] and found.leaked_rows("x").dtype == np.int64


def feature_set(x, y, split):
    from featurecache.cache import FeatureSet

    n = len(y)
    return FeatureSet(
        X=np.asarray(x, dtype=np.float32),
        y=np.asarray(y, dtype=np.int32),
        split=np.asarray(split, dtype=object),
        keys=np.array([f"k{i}" for i in range(n)], dtype=object),
        sources=np.array([f"/nowhere/{i}.jpg" for i in range(n)], dtype=object),
        class_names=["a", "b"],
        provenance={"backbone": {"name": "made-up"}},
        dataset="tiny",
        group="g",
        generation="gen-000001",
    )


@pytest.mark.parametrize("n", [1, 3, 12])
def test_a_tiny_data_set_of_one_class_and_one_split_is_audited_without_error(tmp_path, n):
    from featurecache.auditing import audit_features

    x, _ = clusters(n)
    features = feature_set(x, np.zeros(n), ["train"] * n)
    result = audit_features(features, AuditConfig(map="tsne"), tmp_path)
    page = Path(result.page).read_text()
    assert "no test split" in page and "at least 2 classes" in page
    assert result.counts["leaks"] == 0 and result.accuracy == []
    assert (Path(result.folder) / "audit.json").is_file()
    assert not list(tmp_path.glob("audit.*"))  # no partial or old folder left


def test_non_finite_features_are_refused_with_the_fix(tmp_path):
    from featurecache.auditing import audit_features
    from featurecache.errors import CacheError

    x, y = clusters(20, classes=2)
    x[4, 3] = np.nan
    with pytest.raises(CacheError, match=r"1 cached rows hold NaN.*verify --repair"):
        audit_features(feature_set(x, y, ["train"] * 20), AuditConfig(map="none"), tmp_path)


def test_a_failed_audit_leaves_the_last_whole_audit_and_nothing_else(tmp_path, monkeypatch):
    from featurecache.auditing import audit_features, write

    x, y = clusters(12, classes=2)
    features = feature_set(x, y, ["train"] * 8 + ["test"] * 4)
    first = audit_features(features, AuditConfig(map="none"), tmp_path)
    before = (Path(first.folder) / "audit.json").read_text()

    def broken(findings):
        raise OSError("disk full")

    monkeypatch.setattr(write, "render_page", broken)
    with pytest.raises(OSError, match="disk full"):
        audit_features(features, AuditConfig(map="none", seed=1), tmp_path)
    assert (Path(first.folder) / "audit.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit"]
