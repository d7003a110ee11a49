"""A head's parameters are checked before any work: featurecache's table for the dense
head, scikit-learn's constraints (through its one private hook) for the others."""

from __future__ import annotations

import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression

from featurecache.config import HeadConfig
from featurecache.errors import ConfigError
from featurecache.heads import check_heads
from featurecache.heads.estimators import _sklearn_check_params


def test_good_heads_pass_and_give_their_kinds():
    heads = [
        HeadConfig(kind="dense", params={"units": 8}, search={"dropout": [0.0, 0.5]}),
        HeadConfig(kind="svm", search={"C": [0.1, 1.0]}),
    ]
    assert check_heads(heads) == ["dense", "linear_svm"]


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (HeadConfig(kind="dense", params={"dropout": 1.0}), "dropout must be a fraction"),
        (HeadConfig(kind="dense", search={"units": [8, 0]}), "units must be an integer >= 1"),
        (HeadConfig(kind="logreg", params={"C": -1.0}), "'C' parameter of LogisticRegression"),
        (HeadConfig(kind="svm", search={"C": [1.0, "big"]}), "'C' parameter of LinearSVC"),
    ],
)
def test_a_bad_value_names_the_head_and_the_parameter(head, message):
    with pytest.raises(ConfigError, match=f"head '{head.name}': .*{message}"):
        check_heads([head])


class _Unconstrained(ClassifierMixin, BaseEstimator):
    """A third-party classifier that declares no ``_parameter_constraints``."""

    def __init__(self, depth=-1):
        self.depth = depth


def test_sklearn_check_params_uses_scikit_learns_own_constraints():
    _sklearn_check_params(LogisticRegression(C=2.0))
    with pytest.raises(ValueError, match="'C' parameter of LogisticRegression must be"):
        _sklearn_check_params(LogisticRegression(C=0.0))
    _sklearn_check_params(_Unconstrained())  # nothing declared: left to its fit
