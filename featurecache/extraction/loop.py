"""The one batch loop: reader -> engine -> writer.

The same loop runs in this process (:mod:`featurecache.extraction.local`) and on a Dask
worker (:mod:`featurecache.extraction.dask`), as clip-retrieval's ``runner.py`` composes
a reader, a model and a writer:

- the **reader** (:func:`~featurecache.extraction.decoding.decoded_batches`) decodes the
  images of the pass from an :class:`~featurecache.extraction.decoding.ImageSource`,
  once per input size that some backbone needs;
- each backbone's **engine** (:class:`~featurecache.extraction.engines.Extractor`) runs
  exactly the batches planned for it (:class:`BatchWork`), so its features do not depend
  on which other backbones ran beside it;
- every finished batch goes to the **writer** the runner passed in
  (:class:`BatchWriter`), which makes it durable. Nothing calls back up into the runner.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from tqdm import tqdm

from featurecache.cache import storable
from featurecache.extraction.decoding import (
    DecodedImage,
    Decoding,
    ImageSource,
    decoded_batches,
    decoding,
)
from featurecache.extraction.engines import Extractor
from featurecache.extraction.result import Profile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchOutput:
    """One computed batch.

    ``arrays`` holds every stored array by name, float32 ``(n, *shape)`` (``features``
    ``(n, feature_dim)`` first; zero rows where an image was skipped); ``keys`` the content
    keys (``""`` where skipped); ``skipped`` one ``{"source", "reason"}`` record per
    image that could not be decoded.
    """

    arrays: dict[str, np.ndarray]
    keys: list[str]
    skipped: list[dict[str, str]]

    @property
    def n_computed(self) -> int:
        return sum(1 for k in self.keys if k)


@dataclass(frozen=True)
class FullBatch:
    """A planned batch whose images have all been decoded: its number and the images."""

    number: int
    images: list[DecodedImage]


class BatchWork:
    """One backbone's batches in a pass: their numbers, the record indices (ascending)
    of each, and a cursor over them that :meth:`add` moves as images arrive in order.

    ``slot`` tells the backbones of one pass apart: it keys this backbone's preprocessed
    inputs in :class:`DecodedImage.inputs`, and the writer's jobs.
    """

    def __init__(
        self,
        extractor: Extractor,
        batches: Sequence[int],
        rows: Sequence[Sequence[int]],
        *,
        slot: int = 0,
    ) -> None:
        self.extractor = extractor
        self.batches = list(batches)
        self.rows = [list(r) for r in rows]
        self.slot = slot
        self._next = 0
        self._buffer: list[DecodedImage] = []

    def add(self, image: DecodedImage) -> FullBatch | None:
        """Take the next image of the current batch; the batch once it is complete.

        Raises
        ------
        RuntimeError
            If the images arrived out of the planned order (an internal error).
        """
        self._buffer.append(image)
        rows = self.rows[self._next]
        if len(self._buffer) < len(rows):
            return None
        if [item.index for item in self._buffer] != rows:
            raise RuntimeError("internal error: a decoded batch is not the planned batch")
        full = FullBatch(self.batches[self._next], self._buffer)
        self._buffer = []
        self._next += 1
        return full

    def run(self, images: Sequence[DecodedImage], source: ImageSource) -> BatchOutput:
        """Run the backbone on one batch; the undecodable images are skipped (zero rows).

        Only the decodable images go through the backbone, together, as one batch.
        """
        config = self.extractor.built.config
        skipped = [
            {"source": storable(source.source_of(item.index)), "reason": str(item.error)}
            for item in images
            if item.error is not None
        ]
        for record in skipped:
            log.warning("skipped %s", record["reason"])
        shapes = self.extractor.built.output_shapes
        arrays = {
            name: np.zeros((len(images), *shapes[config.output_of(name)]), np.float32)
            for name in config.stored()
        }
        good = [i for i, item in enumerate(images) if item.error is None]
        if good:
            computed = self.extractor.outputs(
                np.stack([images[i].pixels[decoding(config)] for i in good]),
                np.stack([images[i].inputs[self.slot] for i in good]),
            )
            for name, values in computed.items():
                arrays[name][good] = values
        return BatchOutput(arrays, [item.key or "" for item in images], skipped)


class BatchWriter(Protocol):
    """Where finished batches go: a job's staging area, made durable (in this process), or
    a stage chunk written by a Dask worker."""

    def write(self, work: BatchWork, number: int, output: BatchOutput) -> None:
        """Make batch ``number`` of ``work`` durable (or hand it on to be)."""
        ...


def run_batches(
    source: ImageSource,
    work: Sequence[BatchWork],
    batch_size: int,
    writer: BatchWriter,
    *,
    progress: bool = False,
    label: str = "",
) -> Profile:
    """Compute every batch of ``work`` and hand each to ``writer``; return where the time
    went (:class:`~featurecache.extraction.result.Profile`, seconds).

    Each image is read once and decoded once per input size and decoder that some
    backbone needs.

    Raises
    ------
    RuntimeError
        If decoding returned the images out of order (an internal error).
    """
    need: dict[int, list[BatchWork]] = {}
    for item in work:
        for rows in item.rows:
            for index in rows:
                need.setdefault(index, []).append(item)
    order = sorted(need)
    sizes = {i: sorted({decoding(w.extractor.built.config) for w in need[i]}) for i in order}

    def inputs(index: int, pixels: Mapping[Decoding, np.ndarray]) -> dict[int, np.ndarray]:
        """Each backbone's input for image ``index``, by slot (on a decoding thread)."""
        return {
            w.slot: w.extractor.preprocess(pixels[decoding(w.extractor.built.config)])
            for w in need[index]
        }

    profile = Profile()
    bar = tqdm(total=len(order), unit="img", dynamic_ncols=True, disable=not progress, desc=label)
    batches = decoded_batches(source, order, sizes, batch_size, preprocess=inputs)
    with bar, closing(batches):  # on an error or a stop, no decoding goes on behind it
        while True:
            start = time.perf_counter()
            decoded = next(batches, None)
            profile.waiting += time.perf_counter() - start
            if decoded is None:
                return profile
            for image in decoded:
                for item in need[image.index]:
                    full = item.add(image)
                    if full is not None:
                        _compute(item, full, source, writer, profile)
            bar.update(len(decoded))


def _compute(
    work: BatchWork, full: FullBatch, source: ImageSource, writer: BatchWriter, profile: Profile
) -> None:
    start = time.perf_counter()
    output = work.run(full.images, source)
    middle = time.perf_counter()
    writer.write(work, full.number, output)
    profile.backbone += middle - start
    profile.writing += time.perf_counter() - middle
