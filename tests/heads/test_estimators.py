import numpy as np
import pytest

from featurecache.errors import ConfigError
from featurecache.heads import build_head, canonical_kind, predict_proba
from featurecache.heads.dense import DenseHead
from featurecache.heads.files import load_model, save_model
from featurecache.heads.tuning import tune
from featurecache.runs import HeadRecord


@pytest.fixture(scope="module")
def blobs():
    """Three well separated Gaussian blobs in 32 dimensions (float32)."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 4, (3, 32))
    y = np.repeat(np.arange(3), 60)
    X = (centers[y] + rng.normal(0, 1, (180, 32))).astype(np.float32)
    order = rng.permutation(180)
    return X[order], y[order]


@pytest.mark.parametrize(
    "kind",
    [
        "logistic_regression",
        "linear_svm",
        "knn",
        "random_forest",
        "sklearn.ensemble.ExtraTreesClassifier",
    ],
)
def test_sklearn_heads_fit_and_give_probabilities(kind, blobs):
    X, y = blobs
    head = build_head(kind).fit(X[:120], y[:120])
    proba = predict_proba(head, X[120:], 3)
    assert proba.shape == (60, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert (proba.argmax(axis=1) == y[120:]).mean() > 0.95


def test_aliases_and_unknown_kinds():
    assert canonical_kind("LogReg") == "logistic_regression"
    assert canonical_kind("svm") == "linear_svm"
    with pytest.raises(ConfigError, match="unknown head 'xgb'"):
        canonical_kind("xgb")
    with pytest.raises(ConfigError, match="cannot import"):
        build_head("sklearn.nothing.Here")
    with pytest.raises(ConfigError, match="not a scikit-learn classifier"):
        build_head("sklearn.preprocessing.StandardScaler")
    with pytest.raises(ConfigError, match="bad parameter"):
        build_head("knn", {"neighbours": 3})


def test_params_override_defaults():
    head = build_head("logistic_regression", {"C": 0.5})
    assert head[-1].C == 0.5 and head[-1].max_iter == 5000


def test_missing_training_class_gets_a_zero_column(blobs):
    X, y = blobs
    keep = y != 2
    head = build_head("logistic_regression").fit(X[keep], y[keep])
    proba = predict_proba(head, X, 3)
    assert proba.shape == (180, 3) and np.all(proba[:, 2] == 0)


def test_dense_head_learns_and_records_curves(blobs, tmp_path):
    X, y = blobs
    head = DenseHead(epochs=30, patience=5).fit(X[:150], y[:150])
    assert set(head.history_) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert (head.predict(X[150:]) == y[150:]).mean() > 0.95
    layers = [type(layer).__name__ for layer in head.model_.layers]
    assert layers == ["Dense", "Dropout", "Dense"]
    assert head.model_.layers[0].units == 256 and head.model_.layers[1].rate == 0.5
    name = save_model(head, tmp_path / "dense")
    assert name == "model.keras"
    loaded = load_model(tmp_path / "dense" / name)
    np.testing.assert_allclose(
        loaded.predict_proba(X[150:]), head.predict_proba(X[150:]), atol=1e-6
    )


def test_sklearn_head_save_and_load(blobs, tmp_path):
    X, y = blobs
    head = build_head("knn").fit(X, y)
    name = save_model(head, tmp_path / "knn")
    assert name == "model.skops"
    loaded = load_model(tmp_path / "knn" / name)
    np.testing.assert_array_equal(loaded.predict(X), head.predict(X))


def test_reading_a_head_from_a_wrong_folder(tmp_path):
    with pytest.raises(ConfigError, match="not a trained head"):
        HeadRecord.read(tmp_path)


def test_tune_chooses_by_stratified_cross_validation_and_refits(blobs):
    X, y = blobs
    head, summary = tune(build_head("logistic_regression"), {"C": [1e-6, 1.0]}, X, y, cv=4)
    assert summary["grid"] == {"logisticregression__C": [1e-6, 1.0]}
    assert len(summary["candidates"]) == 2 and summary["cv"] == 4
    best = max(summary["candidates"], key=lambda c: c["mean_accuracy"])
    assert summary["best_params"] == best["params"]
    assert summary["best_cv_accuracy"] == best["mean_accuracy"]
    assert head.get_params()["logisticregression__C"] == best["params"]["C"]
    assert head.predict(X).tolist() == y.tolist()  # refitted on all of the training data
    svm, found = tune(build_head("linear_svm"), {"C": [0.01]}, X, y, cv=3)
    assert list(found["grid"]) == ["calibratedclassifiercv__estimator__C"]


def test_tune_explains_a_bad_parameter_or_too_few_images(blobs):
    X, y = blobs
    with pytest.raises(ConfigError, match="no parameter 'k'.*n_neighbors"):
        tune(build_head("knn"), {"k": [1]}, X, y)
    with pytest.raises(ConfigError, match="cv = 5 needs at least 5 training images per class"):
        tune(build_head("knn"), {"n_neighbors": [1]}, X[:13], np.array([0] * 10 + [1] * 3))


def test_tune_on_a_sample_refits_on_everything(blobs):
    X, y = blobs
    head, summary = tune(build_head("knn"), {"n_neighbors": [1, 3]}, X, y, cv=3, max_samples=60)
    assert summary["n_searched"] == 60
    assert head[-1].n_samples_fit_ == len(y)  # the refit saw all 180 images
    assert (
        head.get_params()["kneighborsclassifier__n_neighbors"]
        == (summary["best_params"]["n_neighbors"])
    )


def test_dense_head_missing_a_class_saves_a_column_per_class_index(blobs, tmp_path):
    X, y = blobs
    keep = y != 1
    head = DenseHead(units=8, epochs=3).fit(X[keep], y[keep])
    assert head.classes_.tolist() == [0, 2]
    assert head.predict_proba(X).shape == (180, 2)
    loaded = load_model(tmp_path / "dense" / save_model(head, tmp_path / "dense"))
    assert loaded.classes_.tolist() == [0, 1, 2]
    np.testing.assert_allclose(
        loaded.predict_proba(X), predict_proba(head, X, 3), rtol=1e-6, atol=1e-7
    )


def test_dense_head_takes_labels_of_any_type_and_skips_unseen_validation_labels(blobs):
    X, y = blobs
    names = np.array(["cat", "dog", "owl"])[y]
    y_val = names[150:].copy()
    y_val[:10] = "emu"  # no training row has it: left out of the validation rows
    head = DenseHead(units=8, epochs=20, learning_rate=0.01)
    head.fit(X[:150], names[:150], validation_data=(X[150:], y_val))
    assert head.classes_.tolist() == ["cat", "dog", "owl"] and head.n_features_in_ == 32
    assert (head.predict(X[150:]) == names[150:]).mean() > 0.9
    with pytest.raises(ValueError, match="no row with a label seen in y"):
        head.fit(X[:150], names[:150], validation_data=(X[150:], ["emu"] * 30))
