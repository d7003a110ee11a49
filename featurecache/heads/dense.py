"""The Keras dense head, as a scikit-learn classifier (see :mod:`featurecache.heads`)."""

from __future__ import annotations

import logging
import math
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from featurecache.config.constraints import Interval, Table, check
from featurecache.deps import import_keras

log = logging.getLogger(__name__)

#: What each parameter of :class:`DenseHead` may be; ``fit`` and
#: :func:`featurecache.heads.check_heads` check them with
#: :func:`featurecache.config.constraints.check`.
DENSE_HEAD: Table = {
    "units": [Interval(Integral, 1, None)],
    "dropout": [Interval(Real, 0, 1, closed="left", what="a fraction")],
    "learning_rate": [Interval(Real, 0, None, closed="neither")],
    "epochs": [Interval(Integral, 1, None)],
    "batch_size": [Interval(Integral, 1, None)],
    "patience": [Interval(Integral, 0, None)],
    "validation_fraction": [Interval(Real, 0, 1, closed="neither", what="a fraction")],
    "seed": [Integral],
}


class DenseHead(ClassifierMixin, BaseEstimator):
    """Keras dense head: ``Dense(units, relu) -> Dropout(dropout) -> Dense(k, softmax)``.

    The architecture and the early-stopping recipe are those of the Keras guide
    "Transfer learning & fine-tuning" (https://keras.io/guides/transfer_learning/)
    and of the Keras blog's bottleneck-feature classifier. ``k`` is the number of
    distinct labels seen by ``fit``; labels may be of any sortable type (integers,
    strings) and are mapped to output columns in the order of ``classes_``.

    Parameters
    ----------
    units : int, default 256
        Width of the hidden ``Dense`` layer; an integer >= 1.
    dropout : float, default 0.5
        Fraction of the hidden units dropped in training; in [0, 1).
    learning_rate : float, default 1e-3
        Adam's step size; > 0.
    epochs : int, default 100
        Upper bound; early stopping usually ends training sooner.
    batch_size : int, default 32
        Rows per gradient step.
    patience : int, default 10
        Epochs without improvement of validation loss before stopping; the best
        weights are restored.
    validation_fraction : float, default 0.1
        Share of the training rows held out for early stopping when ``fit`` gets no
        ``validation_data``; stratified when every class can be split (at least two
        rows of each, and as many held-out and kept rows as classes).
    seed : int, default 0
        Seeds Keras (weights, dropout, shuffling) and the hold-out split.

    Attributes
    ----------
    model_ : keras.Model
        The trained network; its output column ``j`` is the probability of ``classes_[j]``.
    classes_ : ndarray of shape (n_classes,)
        The sorted distinct labels of ``y``.
    n_features_in_ : int
        Number of features seen by ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,), dtype object
        Column names of ``X`` when it was a DataFrame with string column names.
    history_ : dict of str to list of float
        Per-epoch ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``.
    """

    def __init__(
        self,
        *,
        units: int = 256,
        dropout: float = 0.5,
        learning_rate: float = 1e-3,
        epochs: int = 100,
        batch_size: int = 32,
        patience: int = 10,
        validation_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.units = units
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.seed = seed

    def fit(self, X, y, validation_data=None):  # noqa: N803 - scikit-learn naming
        """Train the network on ``(X, y)``, stopping early on validation loss.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features, converted to float32 (bottleneck features already are).
        y : array-like of shape (n_samples,)
            Class labels, of any sortable type.
        validation_data : tuple (X_val, y_val), optional
            Rows to stop on, shapes ``(n_val, n_features)`` and ``(n_val,)``; rows whose
            label is not in ``y`` are left out (the head cannot predict it). Without it,
            ``validation_fraction`` of ``(X, y)`` is held out.

        Returns
        -------
        self : DenseHead
            Fitted.

        Raises
        ------
        ConfigError
            If a parameter is out of range (e.g. ``dropout = 1``), naming it.
        ValueError
            If ``X`` is not a finite 2-D numeric array, ``y`` is not classification labels
            (e.g. continuous values), there are fewer than two rows to hold out from, or
            no row of ``validation_data`` has a label seen in ``y``.
        """
        check(self, DENSE_HEAD)
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, y = np.unique(y, return_inverse=True)
        X, y, X_val, y_val = self._validation_split(X, y, validation_data)
        keras = import_keras()
        keras.utils.set_random_seed(self.seed)
        self.model_ = self._network(keras, X.shape[1])
        self.history_ = self._train(keras, X, y, X_val, y_val)
        log.info(
            "dense head: %d epochs, best val_loss %.4f",
            len(self.history_["loss"]),
            min(self.history_["val_loss"]),
        )
        return self

    def predict_proba(self, X):  # noqa: N803 - scikit-learn naming
        """Class probabilities, one column per entry of ``classes_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
            Features, converted to float32.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes), dtype float32
            Softmax outputs; each row sums to 1 (to float32 round-off).

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the head was not fitted.
        ValueError
            If ``X`` is not a finite 2-D numeric array with ``n_features_in_`` columns.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float32)
        return np.asarray(self.model_.predict(X, verbose=0))

    def predict(self, X):  # noqa: N803 - scikit-learn naming
        """The most probable label of each row.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
            Features, converted to float32.

        Returns
        -------
        labels : ndarray of shape (n_samples,), dtype of ``classes_``

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the head was not fitted.
        ValueError
            As :meth:`predict_proba`.
        """
        proba = self.predict_proba(X)  # first: it raises NotFittedError before classes_ would
        return self.classes_[np.argmax(proba, axis=1)]

    def _network(self, keras: Any, n_features: int) -> Any:
        """The compiled, untrained network for ``n_features`` inputs and ``classes_``."""
        model = keras.Sequential(
            [
                keras.Input(shape=(n_features,), name="features"),
                keras.layers.Dense(self.units, activation="relu", name="dense"),
                keras.layers.Dropout(self.dropout, name="dropout"),
                keras.layers.Dense(len(self.classes_), activation="softmax", name="predictions"),
            ],
            name="dense_head",
        )
        model.compile(
            optimizer=keras.optimizers.Adam(self.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model

    def _validation_split(
        self,
        X: np.ndarray,  # noqa: N803 - scikit-learn naming
        y: np.ndarray,
        validation_data: tuple | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(X, y, X_val, y_val)``: the rows to train on and the rows to stop on, either
        ``validation_data`` (its known rows) or ``validation_fraction`` of ``(X, y)``."""
        if validation_data is None:
            X, X_val, y, y_val = _holdout(X, y, self.validation_fraction, self.seed)
        else:
            X_val, y_val = self._known_rows(*validation_data)
        return X, y, X_val, y_val

    def _train(
        self,
        keras: Any,
        X: np.ndarray,  # noqa: N803 - scikit-learn naming
        y: np.ndarray,
        X_val: np.ndarray,  # noqa: N803
        y_val: np.ndarray,
    ) -> dict[str, list[float]]:
        """Train ``model_`` until validation loss stops improving for ``patience`` epochs
        (the best weights restored); the per-epoch history, as floats."""
        stop = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=self.patience, restore_best_weights=True
        )
        history = self.model_.fit(
            X,
            y,
            validation_data=(X_val, y_val),
            epochs=self.epochs,
            batch_size=self.batch_size,
            callbacks=[stop],
            verbose=0,
        )
        return {k: [float(v) for v in vals] for k, vals in history.history.items()}

    def _known_rows(self, X_val, y_val) -> tuple[np.ndarray, np.ndarray]:  # noqa: N803
        """``validation_data`` as float32 features and indices into ``classes_``, without
        the rows whose label ``fit`` did not see."""
        X_val = validate_data(self, X_val, reset=False, dtype=np.float32)
        y_val = column_or_1d(y_val)
        known = np.isin(y_val, self.classes_)
        if not known.any():
            raise ValueError(
                "validation_data has no row with a label seen in y; pass validation rows "
                "of the training classes, or leave validation_data out to hold out "
                "validation_fraction of the training rows"
            )
        if not known.all():
            log.info(
                "dense head: %d validation rows have labels not in training; left out",
                int((~known).sum()),
            )
        return X_val[known], np.searchsorted(self.classes_, y_val[known])


def _holdout(X, y, fraction, seed):  # noqa: N803
    """``train_test_split`` of ``(X, y)`` (``y``: indices 0..k-1, each present), stratified
    when every class can be split: at least two rows of each, and at least ``k`` rows on
    each side (scikit-learn's own requirement for a stratified split).

    Raises
    ------
    ValueError
        For fewer than two rows (nothing to hold out).
    """
    from sklearn.model_selection import train_test_split

    n_samples = len(y)
    if n_samples < 2:
        raise ValueError(
            f"DenseHead needs at least 2 samples to hold out validation rows for early "
            f"stopping; got {n_samples} sample"
        )
    counts = np.bincount(y)
    n_held = math.ceil(fraction * n_samples)  # train_test_split's rule for a float size
    splittable = counts.min() >= 2 and min(n_held, n_samples - n_held) >= len(counts)
    stratify = y if splittable else None
    return train_test_split(X, y, test_size=fraction, random_state=seed, stratify=stratify)
