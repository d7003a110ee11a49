"""The Keras callbacks of a fine-tuning run besides Keras's own: the history written
after every epoch (what resumption reads back) and the stop on SIGTERM or SIGINT."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from featurecache.stopping import StopFlag


def empty_history() -> dict[str, list[float]]:
    """A history before the first epoch: lists of ``loss``, ``accuracy``, ``val_loss``,
    ``val_accuracy`` and ``seconds`` (wall time), one entry per epoch to come."""
    return {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": [], "seconds": []}


def load_history(path: Path) -> dict[str, list[float]]:
    """The per-epoch history in ``path`` (``history.json``), or :func:`empty_history`."""
    if path.is_file():
        return json.loads(path.read_text())
    return empty_history()


def stopper(keras: Any, stop: StopFlag, epochs: int) -> Any:
    """A callback ending training after the current step on SIGTERM or SIGINT: the last
    finished epoch's checkpoint (``BackupAndRestore``) stays for the next run to resume."""

    class Stopper(keras.callbacks.Callback):
        epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            stop.check(lambda: f"{self.epoch} of {epochs} epochs (checkpointed)")

    return Stopper()


def history_writer(keras: Any, path: Path, history: dict[str, list[float]]) -> Any:
    """A callback appending each epoch's logs, and its wall time in seconds
    (``seconds``), to ``history`` and ``path`` (atomically)."""

    class HistoryWriter(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = {**(logs or {}), "seconds": time.perf_counter() - self.started}
            for key in history:
                history.setdefault(key, []).append(float(logs.get(key, float("nan"))))
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(history))
            os.replace(tmp, path)

    return HistoryWriter()
