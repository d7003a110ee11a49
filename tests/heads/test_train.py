"""Training heads from a feature set, whatever the classifier's habits."""

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from featurecache.cache import FeatureSet
from featurecache.config import HeadConfig
from featurecache.heads.train import train_one


class FitReturnsNothing(ClassifierMixin, BaseEstimator):
    """A classifier by import path whose ``fit`` does not return ``self``."""

    def fit(self, X, y):  # noqa: N803
        self.classes_ = np.unique(y)
        self.prior_ = np.bincount(y) / len(y)

    def predict_proba(self, X):  # noqa: N803
        return np.tile(self.prior_, (len(X), 1))


def test_a_classifier_whose_fit_returns_nothing_is_still_trained(tmp_path):
    n = 12
    features = FeatureSet(
        X=np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32),
        y=np.arange(n, dtype=np.int32) % 2,
        split=np.asarray(["train"] * 8 + ["test"] * 4, dtype=object),
        keys=np.asarray([f"k{i}" for i in range(n)], dtype=object),
        sources=np.asarray([f"s{i}" for i in range(n)], dtype=object),
        class_names=["a", "b"],
        provenance={
            "backbone": {"name": "mobilenet_v2"},
            "weights": {},
            "recipe_hash": "r",
            "feature_dim": 4,
        },
        dataset="d",
        group="g",
    )
    kind = f"{__name__}.FitReturnsNothing"
    result = train_one(features, HeadConfig(kind=kind), kind, tmp_path / "h", cache_root=tmp_path)
    assert result.accuracy == {"train": 0.5, "test": 0.5}
    assert (tmp_path / "h" / "metrics.json").is_file()
