"""Reading and decoding images on a thread pool, ahead of the backbone."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from featurecache.datasets import Listing
from featurecache.errors import ImageDecodeError

#: Decoding threads; None: one fewer than the CPU cores (at least one), so that the
#: backbone keeps the other cores (measured in benchmarks/extraction.py).
DECODE_WORKERS: int | None = None
#: Batches decoded ahead of the one the backbone is running on.
PREFETCH_BATCHES = 2


#: ``(record index, content key, {input size: pixels}, error)``: one decoded image, or the
#: error that stopped it (key and pixels ``None``).
Decoded = tuple[int, str | None, dict[int, np.ndarray] | None, ImageDecodeError | None]


def _read(listing: Listing, index: int, sizes: Sequence[int]) -> Decoded:
    try:
        key, pixels = listing.read_sizes(listing.records[index], sizes)
    except ImageDecodeError as exc:
        return index, None, None, exc
    return index, key, pixels, None


def decoded_batches(
    listing: Listing,
    order: Sequence[int],
    sizes: Mapping[int, Sequence[int]],
    batch_size: int,
    workers: int | None = None,
) -> Iterator[list[Decoded]]:
    """Yield batches of ``(record index, key, {size: pixels}, error)`` in ``order``.

    Each image is read once and decoded once per input size in ``sizes[index]``. Decoding
    runs in a thread pool (Pillow releases the GIL while decoding) at most
    :data:`PREFETCH_BATCHES` batches ahead, so memory stays bounded whatever the data
    set's size. ``pixels[size]`` is ``(size, size, 3)`` uint8; on failure ``error`` is
    set instead.
    """
    workers = workers or DECODE_WORKERS or max(1, min(8, (os.cpu_count() or 2) - 1))
    pending = iter(order)
    window: deque[Future[Decoded]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:

        def fill() -> None:
            while len(window) < batch_size * (PREFETCH_BATCHES + 1):
                index = next(pending, None)
                if index is None:
                    return
                window.append(pool.submit(_read, listing, index, sizes[index]))

        fill()
        while window:
            batch = [window.popleft().result() for _ in range(min(batch_size, len(window)))]
            fill()
            yield batch
