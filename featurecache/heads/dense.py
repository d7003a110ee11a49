"""The Keras dense head, as a scikit-learn classifier (see :mod:`featurecache.heads`)."""

from __future__ import annotations

import logging
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from featurecache.config.constraints import Interval, check
from featurecache.deps import import_keras

log = logging.getLogger(__name__)

#: What each parameter of :class:`DenseHead` may be (checked before ``fit``).
DENSE_HEAD = {
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
    and of the Keras blog's bottleneck-feature classifier.

    Parameters
    ----------
    units : int, default 256
    dropout : float, default 0.5
    learning_rate : float, default 1e-3
        Adam's step size.
    epochs : int, default 100
        Upper bound; early stopping usually ends training sooner.
    batch_size : int, default 32
    patience : int, default 10
        Epochs without improvement of validation loss before stopping; the best
        weights are restored.
    validation_fraction : float, default 0.1
        Share of the training rows held out (stratified) for early stopping when
        ``fit`` gets no ``validation_data``.
    seed : int, default 0

    Attributes
    ----------
    model_ : keras.Model
    classes_ : ndarray of shape (n_classes,)
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

    def _validate_params(self) -> None:
        """Check the parameters against :data:`DENSE_HEAD` (scikit-learn's hook, which
        :func:`featurecache.heads.estimators.check_heads` also calls).

        Raises
        ------
        ConfigError
            Naming the parameter and what it must be.
        """
        check(self, DENSE_HEAD)

    def fit(self, X, y, validation_data=None):  # noqa: N803 - scikit-learn naming
        self._validate_params()
        keras = import_keras()
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y).astype(np.int64)
        self.classes_ = np.arange(int(y.max()) + 1)
        if validation_data is None:
            X, X_val, y, y_val = _holdout(X, y, self.validation_fraction, self.seed)
        else:
            X_val = np.asarray(validation_data[0], dtype=np.float32)
            y_val = np.asarray(validation_data[1]).astype(np.int64)
        keras.utils.set_random_seed(self.seed)
        model = keras.Sequential(
            [
                keras.Input(shape=(X.shape[1],), name="features"),
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
        stop = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=self.patience, restore_best_weights=True
        )
        history = model.fit(
            X,
            y,
            validation_data=(X_val, y_val),
            epochs=self.epochs,
            batch_size=self.batch_size,
            callbacks=[stop],
            verbose=0,
        )
        self.model_ = model
        self.history_ = {k: [float(v) for v in vals] for k, vals in history.history.items()}
        log.info(
            "dense head: %d epochs, best val_loss %.4f",
            len(self.history_["loss"]),
            min(self.history_["val_loss"]),
        )
        return self

    def predict_proba(self, X):  # noqa: N803
        check_is_fitted(self, "model_")
        return np.asarray(self.model_.predict(np.asarray(X, dtype=np.float32), verbose=0))

    def predict(self, X):  # noqa: N803
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def _holdout(X, y, fraction, seed):  # noqa: N803
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    return train_test_split(X, y, test_size=fraction, random_state=seed, stratify=stratify)
