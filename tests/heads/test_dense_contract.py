"""The dense head keeps scikit-learn's estimator contract: one ``parametrize_with_checks``.

The head is built tiny (8 units, 5 epochs, a large step) so that the learning checks
(e.g. ``check_classifiers_train``'s accuracy > 0.83 on three blobs) pass with little
training. Each of the ~50 checks still builds and traces a fresh Keras network (about
1 s of CPU each, whatever the epochs), so the set takes about a minute: marked slow.
"""

from __future__ import annotations

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from featurecache.heads.dense import DenseHead

#: Checks the dense head is known to fail, each with why: none. Even
#: ``check_fit_idempotent`` and ``check_methods_subset_invariance`` pass, since ``fit``
#: seeds Keras and TensorFlow's CPU kernels give the same bits for the same rows.
EXPECTED_FAILURES: dict[str, str] = {}


def expected_failures(estimator: DenseHead) -> dict[str, str]:
    return EXPECTED_FAILURES


@pytest.mark.slow
@parametrize_with_checks(
    [DenseHead(units=8, epochs=5, learning_rate=0.05, patience=5)],
    expected_failed_checks=expected_failures,
)
def test_dense_head_is_a_scikit_learn_classifier(estimator, check):
    check(estimator)
