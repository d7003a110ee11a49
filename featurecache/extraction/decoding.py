"""Reading, decoding and preprocessing images on a thread pool, ahead of the backbone."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from featurecache.datasets import Listing
from featurecache.errors import ImageDecodeError

#: Decoding threads; None: one per CPU core (at most 8). On a CPU-only machine decoding
#: and inference share the cores; a thread per core lets decoding take every core while
#: the backbone waits for it (camera photos), and the backbone's threads do not spin
#: while they wait (:func:`featurecache.extraction.engines.onnx_runner`).
DECODE_WORKERS: int | None = None
#: Batches decoded ahead of the one the backbone is running on.
PREFETCH_BATCHES = 2


#: ``(record index, content key, {input size: pixels}, error, prepared)``: one decoded
#: image, or the error that stopped it (key, pixels and prepared ``None``); ``prepared``
#: is what the ``prepare`` callable of :func:`decoded_batches` made of the pixels.
Decoded = tuple[int, str | None, dict[int, np.ndarray] | None, ImageDecodeError | None, Any]
#: ``prepare(record index, {input size: pixels})``, run on the decoding thread.
Prepare = Callable[[int, dict[int, np.ndarray]], Any]


def _read(listing: Listing, index: int, sizes: Sequence[int], prepare: Prepare | None) -> Decoded:
    try:
        key, pixels = listing.read_sizes(listing.records[index], sizes)
    except ImageDecodeError as exc:
        return index, None, None, exc, None
    return index, key, pixels, None, prepare(index, pixels) if prepare else None


def decoded_batches(
    listing: Listing,
    order: Sequence[int],
    sizes: Mapping[int, Sequence[int]],
    batch_size: int,
    workers: int | None = None,
    prepare: Prepare | None = None,
) -> Iterator[list[Decoded]]:
    """Yield batches of ``(record index, key, {size: pixels}, error, prepared)`` in ``order``.

    Each image is read once and decoded once per input size in ``sizes[index]``, then
    handed to ``prepare`` (the backbones' preprocessing), all in a thread pool (Pillow and
    numpy release the GIL in their loops) at most :data:`PREFETCH_BATCHES` batches ahead,
    so memory stays bounded whatever the data set's size and the thread running the
    backbone does nothing but run it. ``pixels[size]`` is ``(size, size, 3)`` uint8; on
    failure ``error`` is set instead.
    """
    workers = workers or DECODE_WORKERS or max(1, min(8, os.cpu_count() or 1))
    pending = iter(order)
    window: deque[Future[Decoded]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:

        def fill() -> None:
            while len(window) < batch_size * (PREFETCH_BATCHES + 1):
                index = next(pending, None)
                if index is None:
                    return
                window.append(pool.submit(_read, listing, index, sizes[index], prepare))

        fill()
        while window:
            batch = [window.popleft().result() for _ in range(min(batch_size, len(window)))]
            fill()
            yield batch
