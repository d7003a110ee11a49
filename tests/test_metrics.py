import numpy as np
import pytest

from featurecache.metrics import accuracy_interval, evaluate


def test_evaluate_on_a_known_case():
    y = np.array([0, 0, 1, 1, 2])
    proba = np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.1, 0.9, 0], [0, 1, 0], [0, 0, 1.0]])
    m = evaluate(y, proba, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    assert m["per_class"]["b"] == {
        "precision": pytest.approx(2 / 3),
        "recall": 1.0,
        "f1": pytest.approx(0.8),
        "support": 2,
    }
    expected = -np.mean(np.log([0.9, 0.2, 0.9, 1 - 1e-15, 1 - 1e-15]))
    assert m["log_loss"] == pytest.approx(expected, rel=1e-6)
    assert m["n_images"] == 5


def test_a_class_absent_from_the_split_still_has_a_row():
    m = evaluate(np.array([0, 0]), np.array([[1.0, 0, 0], [1.0, 0, 0]]), ["a", "b", "c"])
    assert m["per_class"]["c"]["support"] == 0
    assert len(m["confusion_matrix"]) == 3


def test_bootstrap_interval_brackets_the_accuracy_and_narrows_with_more_images():
    rng = np.random.default_rng(3)
    small = rng.random(100) < 0.8
    large = rng.random(10_000) < 0.8
    low, high = accuracy_interval(small)
    assert low < small.mean() < high
    assert accuracy_interval(small) == (low, high)  # seeded: the same every time
    # the normal approximation's half-width, 1.96 * sqrt(p (1 - p) / n), within 25%
    assert (high - low) / 2 == pytest.approx(1.96 * np.sqrt(0.8 * 0.2 / 100), rel=0.25)
    large_low, large_high = accuracy_interval(large)
    assert large_high - large_low < (high - low) / 5


def test_bootstrap_interval_of_a_perfect_score_is_that_score():
    assert accuracy_interval(np.ones(50, bool)) == (1.0, 1.0)
    assert accuracy_interval(np.zeros(7, bool)) == (0.0, 0.0)
    m = evaluate(np.array([0, 1, 1]), np.eye(2)[[0, 1, 1]], ["a", "b"])
    assert m["accuracy_ci95"] == [1.0, 1.0] and m["bootstrap"]["method"] == "percentile"
