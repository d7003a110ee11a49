"""Head model files: the fitted classifier on disk, and back, without running its code.

The dense head is saved as a ``.keras`` model (loadable with plain Keras, without
featurecache) and loaded with Keras's ``safe_mode``, which refuses lambda layers'
code. Every other head is saved with skops (``skops.io``, scikit-learn's format for
safe persistence): loading it builds only the types listed in the file, and
:func:`load_model` refuses any that is not scikit-learn's own, so a head folder from
someone else cannot run code through ``predict``. Heads saved before (``model.joblib``,
a pickle: loading it runs whatever it holds) load only with ``trust_pickle``. What the
head is and how it did is in its records (:class:`featurecache.runs.HeadRecord`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from featurecache.deps import import_keras
from featurecache.errors import UntrustedFileError

log = logging.getLogger(__name__)

MODEL_SKOPS = "model.skops"
MODEL_JOBLIB = "model.joblib"  # heads saved before skops: pickles
MODEL_KERAS = "model.keras"
#: What a skops head file may hold beyond skops's own defaults: classes defined in
#: scikit-learn (the registered heads hold e.g. ``sklearn.tree._tree.Tree``,
#: ``sklearn.calibration._CalibratedClassifier``). Never a function (not even one a
#: scikit-learn module imports, such as ``subprocess.check_output``), never a class
#: defined elsewhere and re-exported by a scikit-learn module.
TRUSTED_PACKAGE = "sklearn"


def save_model(head: Any, folder: Path) -> str:
    """Save a fitted head into ``folder``; return the model file's name."""
    from featurecache.heads.dense import DenseHead

    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(head, DenseHead):
        _class_index_model(head).save(folder / MODEL_KERAS)
        return MODEL_KERAS
    import skops.io

    skops.io.dump(head, folder / MODEL_SKOPS)
    return MODEL_SKOPS


def _class_index_model(head: Any) -> Any:
    """The dense head's network with output column ``i`` for class index ``i``, as every
    ``.keras`` head file has it (:class:`KerasHead` reads its ``classes_`` as ``0..n-1``).

    A head trained on labels ``0..k-1`` is saved as it is. One whose training rows lacked
    a class below the largest (``classes_ = [0, 2]``) gets a last, frozen ``Dense`` layer,
    ``class_index``, that copies column ``j`` to column ``classes_[j]`` and leaves the
    others 0: what :func:`featurecache.heads.predict_proba` does with the head in memory.

    Raises
    ------
    ValueError
        If ``classes_`` are not non-negative integers: a ``.keras`` file holds no labels.
    """
    classes = np.asarray(head.classes_)
    if np.array_equal(classes, np.arange(len(classes))):
        return head.model_
    if classes.dtype.kind not in "iu" or classes.min() < 0:
        raise ValueError(
            f"a dense head is saved with class indices 0, 1, ...; this one was trained on "
            f"labels {classes[:5].tolist()}: train it on the indices of the classes"
        )
    keras = import_keras()
    n_columns = int(classes.max()) + 1
    scatter = np.zeros((len(classes), n_columns), dtype=np.float32)
    scatter[np.arange(len(classes)), classes] = 1.0
    index = keras.layers.Dense(n_columns, use_bias=False, trainable=False, name="class_index")
    network = head.model_
    model = keras.Sequential(
        [keras.Input(shape=(head.n_features_in_,), name="features"), *network.layers, index],
        name=network.name,
    )
    index.set_weights([scatter])
    return model


class KerasHead:
    """A loaded ``.keras`` model exposing ``predict_proba`` and ``classes_``, as a head.

    ``predict_proba`` maps ``X`` (features, or raw pixels for a fine-tuned model) to
    probabilities of shape ``(n, n_classes)``.
    """

    def __init__(self, model: Any) -> None:
        self.model_ = model
        self.classes_ = np.arange(model.output_shape[-1])

    def predict_proba(self, X):  # noqa: N803
        return np.asarray(self.model_.predict(np.asarray(X, dtype=np.float32), verbose=0))


def load_model(path: Path, *, trust_pickle: bool = False) -> Any:
    """The head saved at ``path``: ``.keras`` as :class:`KerasHead`, ``.skops`` with only
    trusted types, ``.joblib`` (a pickle) only when ``trust_pickle`` is set.

    Raises
    ------
    UntrustedFileError
        If a skops file holds a type that is not a scikit-learn class, a ``.keras`` file holds
        a Lambda layer's code, or the file is a pickle and ``trust_pickle`` is not set;
        nothing in the file has run.
    """
    path = Path(path)
    if path.suffix == ".keras":
        try:
            return KerasHead(import_keras().models.load_model(path, safe_mode=True))
        except ValueError as exc:
            if "safe_mode" not in str(exc):
                raise
            raise UntrustedFileError(
                f"{path} holds Python code (a Lambda layer) that Keras's safe_mode refuses to "
                "load; featurecache never writes one. If you trust its author, load it with "
                "keras.models.load_model(path, safe_mode=False)"
            ) from exc
    if path.suffix == ".skops":
        return _load_skops(path)
    if not trust_pickle:
        raise UntrustedFileError(
            f"{path} is a pickle (heads were saved so before featurecache used skops): "
            "loading it runs any code it holds; pass --trust-pickle only if you trust who "
            "wrote it, or train the head again (featurecache train-head) to get model.skops"
        )
    import joblib

    log.warning("loading the pickle %s: trusted because --trust-pickle was given", path)
    return joblib.load(path)


def _sklearn_class(name: str) -> bool:
    """Whether ``name`` (``"sklearn.tree._tree.Tree"``) is a class defined in scikit-learn."""
    import importlib

    module, _, attr = name.rpartition(".")
    if not module.startswith(f"{TRUSTED_PACKAGE}."):
        return False
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return False
    defined_in = getattr(found, "__module__", "") or ""
    return isinstance(found, type) and defined_in.split(".")[0] == TRUSTED_PACKAGE


def _load_skops(path: Path) -> Any:
    import skops.io

    try:
        found = skops.io.get_untrusted_types(file=path)
    except Exception as exc:  # a damaged or foreign zip: skops raises several kinds
        raise UntrustedFileError(f"{path} is not a readable skops head file ({exc})") from exc
    refused = [t for t in found if not _sklearn_class(t)]
    if refused:
        raise UntrustedFileError(
            f"{path} holds types featurecache never writes ({', '.join(refused)}); refusing "
            "to load it. If you trust its author, load it yourself with "
            "skops.io.load(path, trusted=[...])"
        )
    return skops.io.load(path, trusted=found)
