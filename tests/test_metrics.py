import numpy as np
import pytest

from featurecache.metrics import evaluate


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
