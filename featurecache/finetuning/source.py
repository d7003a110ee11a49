"""What a fine-tuning run trains on: the :class:`Source` contract, and what every source
shares (the training / validation split, the number of parity images).

A :class:`~featurecache.finetuning.run.Run` is the same for every source (load the
dense head, build the backbone once, check parity, compile, train with early stopping
and per-epoch checkpoints, evaluate, write); a source supplies what differs:

- :class:`~featurecache.finetuning.images.ImageSource` trains the backbone's last block
  and the head on decoded images;
- :class:`~featurecache.finetuning.cached.CachedActivations` trains the layers after
  ``finetune_from`` and the head on the cached activation maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from featurecache.backbones import BuiltBackbone
from featurecache.cache import FeatureSet

#: Training images the parity check compares (the first ones of the split).
PARITY_IMAGES = 8


class Source(Protocol):
    """The data a fine-tuning run trains on, and the model that fits it.

    Rows are the source's own: positions in :attr:`labels` and :attr:`splits`.

    Attributes
    ----------
    name : str
        ``"images"`` or ``"cache"``: ``[finetune] source``, the kind of output folder
        (:meth:`featurecache.runs.RunLayout.finetune_dir`) and ``source`` in
        ``finetune.json``.
    features : FeatureSet
        The cache group the dense head was trained on: data set, group, class names,
        provenance.
    labels : ndarray of shape (n_rows,), int
        Class index of each row.
    splits : ndarray of shape (n_rows,), str
        ``"train"``, ``"validation"`` or ``"test"`` for each row.
    mixed_precision : bool
        Whether the model is built and trained in ``mixed_float16`` on a GPU.
    warmup : bool
        Whether to compile with one epoch of learning-rate warm-up, then a cosine decay
        (:func:`featurecache.finetuning.model.compile_for_finetuning`).
    """

    name: str
    features: FeatureSet
    labels: np.ndarray
    splits: np.ndarray
    mixed_precision: bool
    warmup: bool

    def model(self, built: BuiltBackbone, head: Any) -> Any:
        """The model trained: the source's inputs -> class probabilities
        ``(batch, n_classes)``, around ``built`` and ``head`` (the dense head's Keras
        model), sharing their layers."""
        ...

    def on_pixels(self, built: BuiltBackbone, head: Any, trained: Any) -> Any:
        """The model saved as ``model.keras``: raw RGB pixels ``(batch, h, w, 3)``
        float32 0-255 -> class probabilities ``(batch, n_classes)``, holding the
        weights of ``trained`` as they are now."""
        ...

    def parity(self, on_pixels: Any, trained: Any, head: Any) -> float | None:
        """Before training: the largest absolute difference, in probabilities, between
        ``on_pixels`` on the first :data:`PARITY_IMAGES` training images and what the
        cache says for them (the models compute in float32).

        Raises
        ------
        ParityError
            Above the source's tolerance.
        """
        ...

    def parity_after(self, on_pixels: Any, trained: Any) -> float | None:
        """After training: the same comparison where the source still has a reference
        for the trained weights, else ``None``.

        Raises
        ------
        ParityError
            Above the source's tolerance.
        """
        ...

    def unfreeze(self, built: BuiltBackbone, extra: Sequence[str]) -> list[str]:
        """Make the layers the source trains trainable (``extra``: more layer-name
        patterns, where the source takes them); their names.

        Raises
        ------
        ConfigError
            If no layer would be trained.
        """
        ...

    def batches(self, train: np.ndarray, val: np.ndarray) -> tuple[Any, Any]:
        """``keras.utils.PyDataset`` s of ``(inputs, labels)`` for ``model.fit``: the
        rows ``train`` (shuffled every epoch) and ``val`` (in order)."""
        ...

    def proba(self, model: Any, rows: np.ndarray) -> np.ndarray:
        """``model``'s class probabilities for ``rows``: ``(len(rows), n_classes)``
        float64, for the metrics."""
        ...

    def info(self) -> dict[str, Any]:
        """What ``finetune.json`` says besides what every run writes (``{}`` if
        nothing)."""
        ...


def split_rows(splits: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation rows; without a validation split, 10% of train held out
    (stratified, ``random_state=seed``), as the dense head does.

    Parameters
    ----------
    splits : ndarray of shape (n_rows,), str
    labels : ndarray of shape (n_rows,), int

    Returns
    -------
    train, val : ndarray of int
        Rows (positions in ``splits``); ascending, but for a held-out share, which
        comes in ``train_test_split``'s order.
    """
    train = np.flatnonzero(splits == "train")
    val = np.flatnonzero(splits == "validation")
    if len(val) == 0:
        from sklearn.model_selection import train_test_split

        train, val = train_test_split(
            train, test_size=0.1, random_state=seed, stratify=labels[train]
        )
    return train, val
