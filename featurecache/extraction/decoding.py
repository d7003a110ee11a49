"""The reader of the batch loop: images read, decoded and preprocessed on a thread pool,
ahead of the backbone.

Where the images come from is an :class:`ImageSource`: anything that hands over one
image's bytes and content key by record index. A :class:`~featurecache.datasets.Listing`
is one (folders, CSV, HDF5); a data source whose unit of work is a shard of many images
plugs in here by serving that shard's members the same way.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from featurecache.config import BackboneConfig
from featurecache.datasets import RawImage
from featurecache.errors import ImageDecodeError
from featurecache.images import decode

#: How a backbone wants its pixels: ``(input size, decoder)``.
Decoding = tuple[int, str]


def decoding(config: BackboneConfig) -> Decoding:
    """``(input size, decoder)`` of a backbone: images are decoded once per distinct one."""
    return config.input_size, config.decoder


#: Decoding threads; None: one per CPU core (at most 8). On a CPU-only machine decoding
#: and inference share the cores; a thread per core lets decoding take every core while
#: the backbone waits for it (camera photos), and the backbone's threads do not spin
#: while they wait (:func:`featurecache.extraction.onnx.ort_runner`).
DECODE_WORKERS: int | None = None
#: Batches decoded ahead of the one the backbone is running on.
PREFETCH_BATCHES = 2


class ImageSource(Protocol):
    """Where a pass reads its images, by record index (called from several threads)."""

    def load(self, index: int) -> RawImage:
        """The image's undecoded content and content key; raises
        :class:`~featurecache.errors.ImageDecodeError` if it cannot be read."""
        ...

    def source_of(self, index: int) -> str:
        """Where image ``index`` comes from (a path, ``file.h5[index]``), for skip records."""
        ...


#: ``preprocess(record index, {decoding: pixels})`` -> each backbone's input, by the
#: slot of its :class:`~featurecache.extraction.loop.BatchWork`; runs on the decoding thread.
Preprocess = Callable[[int, Mapping[Decoding, np.ndarray]], dict[int, np.ndarray]]


@dataclass(frozen=True)
class DecodedImage:
    """One image of a pass, decoded, or the error that stopped it.

    ``pixels`` maps each :data:`Decoding` some backbone needs to RGB uint8
    ``(size, size, 3)``;
    ``inputs`` maps a backbone's slot to its preprocessed float32 ``(size, size, 3)``
    input. Both are empty, and ``key`` is None, when ``error`` is set.
    """

    index: int
    key: str | None = None
    pixels: Mapping[Decoding, np.ndarray] = field(default_factory=dict)
    inputs: Mapping[int, np.ndarray] = field(default_factory=dict)
    error: ImageDecodeError | None = None


def _read(
    source: ImageSource, index: int, sizes: Sequence[Decoding], preprocess: Preprocess | None
) -> DecodedImage:
    try:
        raw = source.load(index)
        pixels = {
            (size, decoder): decode(raw.data, size, source=raw.source, decoder=decoder)
            for size, decoder in sizes
        }
    except ImageDecodeError as exc:
        return DecodedImage(index, error=exc)
    inputs = preprocess(index, pixels) if preprocess else {}
    return DecodedImage(index, raw.key, pixels, inputs)


def decoded_batches(
    source: ImageSource,
    order: Sequence[int],
    sizes: Mapping[int, Sequence[Decoding]],
    batch_size: int,
    workers: int | None = None,
    preprocess: Preprocess | None = None,
) -> Generator[list[DecodedImage], None, None]:
    """Yield the images of ``order`` (record indices) in that order, ``batch_size`` at a time.

    Each image is read once and decoded once per ``(input size, decoder)`` in
    ``sizes[index]``, then
    handed to ``preprocess`` (the backbones' ``preprocess_input``), all in a thread pool
    (Pillow and numpy release the GIL in their loops) at most :data:`PREFETCH_BATCHES`
    batches ahead, so memory stays bounded whatever the data set's size and the thread
    running the backbone does nothing but run it. Close the generator to stop decoding.
    """
    workers = workers or DECODE_WORKERS or max(1, min(8, os.cpu_count() or 1))
    pending = iter(order)
    window: deque[Future[DecodedImage]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:

        def fill() -> None:
            while len(window) < batch_size * (PREFETCH_BATCHES + 1):
                index = next(pending, None)
                if index is None:
                    return
                window.append(pool.submit(_read, source, index, sizes[index], preprocess))

        fill()
        while window:
            batch = [window.popleft().result() for _ in range(min(batch_size, len(window)))]
            fill()
            yield batch
