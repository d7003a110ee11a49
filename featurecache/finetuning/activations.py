"""Cached activation maps, streamed for training and prediction.

:func:`activation_batches` reads a generation's ``activations`` (and
``activations.flip``) from zarr in batches: chunks in a shuffled order, a few at a
time, rows shuffled within that window, so memory stays flat however many images the
data set has. :func:`predict_cached` runs a model over them in order.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from featurecache.cache.store import read_slice
from featurecache.deps import import_keras
from featurecache.errors import DamagedError

#: Batches' worth of rows shuffled together (a window of consecutive chunks in the
#: epoch's chunk order): enough to mix classes, small enough to keep memory flat.
WINDOW_BATCHES = 8


def view_array(view: str) -> str:
    """The cached activation array of a view: ``activations`` or ``activations.flip``."""
    return "activations" if view == "identity" else f"activations.{view}"


def activation_batches(
    generation: Any,
    rows: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    views: Sequence[str] = ("identity",),
    shuffle: bool = False,
    seed: int = 0,
) -> Any:
    """A ``keras.utils.PyDataset`` of ``(activations, labels)`` batches read from zarr.

    Parameters
    ----------
    generation : zarr group
        A committed generation holding ``activations`` ``(n_images, h, w, c)`` float16
        (and ``activations.<view>`` for the other views).
    rows : ndarray of int
        The generation's rows to use (a split), ascending.
    labels : ndarray of shape (len(rows),), int
    views : sequence of str
        With several views, each row's view is drawn at random every epoch (the flip
        is augmentation); with one, every row is read in that view.
    shuffle : bool
        Shuffle every epoch: chunk order, then rows within windows of
        :data:`WINDOW_BATCHES` batches. Without it rows come in order.

    Batches are float32 ``(batch, h, w, c)`` and int labels ``(batch,)``; one worker
    thread reads ahead, keeping at most two windows in memory.
    """
    keras = import_keras()
    windows = _Windows(generation, rows, labels, batch_size, views, shuffle, seed)

    base: Any = keras.utils.PyDataset  # Keras is imported on first use: a runtime base

    class ActivationBatches(base):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)
            self.windows = windows

        @property
        def loaded(self) -> dict[int, dict[str, np.ndarray]]:
            return windows.loaded

        def __len__(self) -> int:
            return len(windows)

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            return windows.batch(index)

        def on_epoch_end(self) -> None:
            if shuffle:
                windows.plan(windows.epoch + 1)

    return ActivationBatches()


class _Windows:
    """An epoch's order of ``rows`` in windows of whole chunks, and reading its batches."""

    def __init__(
        self,
        generation: Any,
        rows: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        views: Sequence[str],
        shuffle: bool,
        seed: int,
    ) -> None:
        self.arrays = {view: generation[view_array(view)] for view in views}
        self.views, self.shuffle, self.seed, self.batch_size = (
            list(views),
            shuffle,
            seed,
            batch_size,
        )
        self.chunk = next(iter(self.arrays.values())).chunks[0]
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels)
        self.window_rows = max(1, math.ceil(WINDOW_BATCHES * batch_size / self.chunk)) * self.chunk
        self.lock = threading.Lock()
        self.plan(0)

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def plan(self, epoch: int) -> None:
        """Epoch ``epoch``'s order (positions into ``rows``) and a view per position."""
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, epoch])
        of_chunk = self.rows // self.chunk
        chunks = np.unique(of_chunk)
        if self.shuffle:
            rng.shuffle(chunks)
        windows: list[np.ndarray] = []
        current: list[np.ndarray] = []
        for c in chunks:
            current.append(np.flatnonzero(of_chunk == c))
            if sum(len(p) for p in current) >= self.window_rows:
                windows.append(np.concatenate(current))
                current = []
        if current:
            windows.append(np.concatenate(current))
        self.windows = [rng.permutation(w) for w in windows] if self.shuffle else windows
        self.order = np.concatenate(self.windows) if self.windows else np.zeros(0, np.int64)
        self.window_of = np.repeat(np.arange(len(self.windows)), [len(w) for w in self.windows])
        self.view_of = rng.integers(0, len(self.views), len(self.order))
        self.loaded: dict[int, dict[str, np.ndarray]] = {}

    def _window(self, number: int) -> dict[str, np.ndarray]:
        """Every view's activations of one window's rows; keeps this one and the last.

        Whole chunks are read as slices (much faster in zarr than a row selection) and
        converted to float32 once, then the window's rows are taken from them.
        """
        if number not in self.loaded:
            positions = np.sort(self.windows[number])
            wanted = self.rows[positions]
            chunks = np.unique(wanted // self.chunk)
            starts = {c: i * self.chunk for i, c in enumerate(chunks)}
            local = np.array([starts[r // self.chunk] + r % self.chunk for r in wanted])
            values = {
                view: np.concatenate(
                    [read_slice(array, slice(c * self.chunk, (c + 1) * self.chunk)) for c in chunks]
                ).astype(np.float32)[local]
                for view, array in self.arrays.items()
            }
            self.loaded = {k: v for k, v in self.loaded.items() if k == number - 1}
            self.loaded[number] = {"positions": positions, **values}
        return self.loaded[number]

    def batch(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        span = slice(index * self.batch_size, (index + 1) * self.batch_size)
        picks, windows, views = self.order[span], self.window_of[span], self.view_of[span]
        shape = next(iter(self.arrays.values())).shape[1:]
        out = np.empty((len(picks), *shape), np.float32)
        with self.lock:
            for w in np.unique(windows):
                loaded = self._window(int(w))
                mine = np.flatnonzero(windows == w)
                where = np.searchsorted(loaded["positions"], picks[mine])
                for v, view in enumerate(self.views):
                    sel = views[mine] == v
                    out[mine[sel]] = loaded[view][where[sel]]
        return out, self.labels[picks]


def predict_cached(
    model: Any, generation: Any, rows: np.ndarray, views: Sequence[str], batch_size: int
) -> np.ndarray:
    """``model``'s class probabilities on the cached activations of ``rows``, averaged
    over ``views``: ``(len(rows), n_classes)`` float64."""
    dummy = np.zeros(len(rows), dtype=np.int64)
    proba = [
        np.asarray(
            model.predict(
                activation_batches(generation, rows, dummy, batch_size, views=(view,)), verbose=0
            ),
            dtype=np.float64,
        )
        for view in views
    ]
    return np.mean(proba, axis=0)


@contextmanager
def damage_named() -> Iterator[None]:
    """A damaged cache chunk met in Keras's input pipeline (which may wrap the error in
    its own, TensorFlow's for one) is still one :class:`DamagedError` line."""
    try:
        yield
    except DamagedError:
        raise
    except Exception as exc:
        text = str(exc)
        if "the cache is damaged" not in text:
            raise
        line = text[text.index("the cache is damaged") :].splitlines()[0]
        raise DamagedError(line) from exc
