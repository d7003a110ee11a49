"""Heads: classifiers trained on cached bottleneck features, all behind scikit-learn's
estimator contract (``fit``, ``predict_proba``, fitted ``classes_``).

- :mod:`~featurecache.heads.estimators`: the registered heads, building and checking them;
- :mod:`~featurecache.heads.dense`: the Keras dense head as a scikit-learn classifier;
- :mod:`~featurecache.heads.tuning`: parameters chosen by stratified cross-validation;
- :mod:`~featurecache.heads.files`: model files on disk;
- :mod:`~featurecache.heads.freshness`: whether a trained head is up to date, which need training;
- :mod:`~featurecache.heads.train`: the stage (``featurecache train-head``).
"""

from featurecache.heads.estimators import (
    HEAD_KINDS,
    build_head,
    canonical_kind,
    check_heads,
    predict_proba,
)

__all__ = ["HEAD_KINDS", "build_head", "canonical_kind", "check_heads", "predict_proba"]
