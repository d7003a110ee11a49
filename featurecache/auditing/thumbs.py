"""Thumbnails of the images an audit shows, made from the sources at audit time.

The cache holds features, not pixels, and the audit keeps it so: each image shown is
read again from where the data set lists it (a file, an HDF5 row, a shard member, an
object), checked against its cached content key, shrunk to at most :data:`SIZE` pixels
on its long side (aspect kept, EXIF orientation applied) and written as a small JPEG
beside the report, never into the cache. An image whose source is gone, or whose bytes
changed since extraction, gets no thumbnail and a reason instead. A thumbnail the
previous audit made (named by the content key, so of the same bytes) is copied, not
made again: the source is still read and its key checked, but not decoded.
"""

from __future__ import annotations

import io
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurecache.config import DatasetConfig
from featurecache.datasets import Listing, list_dataset
from featurecache.errors import FeaturecacheError

log = logging.getLogger(__name__)

#: Long side of a thumbnail, in pixels.
SIZE = 160


@dataclass(frozen=True)
class Thumb:
    """An image's thumbnail: ``path`` relative to the report's folder, or ``None`` with
    ``missing`` saying why."""

    path: str | None
    missing: str = ""


class Thumbnails:
    """Makes thumbnails of a data set's images into ``folder`` (``<report>/thumbs``),
    each once; the data set is listed (names and sizes only) on first use."""

    def __init__(
        self, dataset: DatasetConfig | None, folder: Path, previous: Path | None = None
    ) -> None:
        self.dataset = dataset
        self.folder = folder
        self.previous = previous
        self._listing: Listing | None = None
        self._index: dict[str, int] = {}
        self._made: dict[tuple[str, str], Thumb] = {}
        self._listing_error = "" if dataset else "the data set is not declared by a pipeline"

    def of(self, key: str, source: str) -> Thumb:
        """The thumbnail of the image with content ``key`` listed at ``source``."""
        if (key, source) not in self._made:
            self._made[key, source] = self._make(key, source)
        return self._made[key, source]

    def close(self) -> None:
        if self._listing is not None:
            self._listing.close()

    def _make(self, key: str, source: str) -> Thumb:
        name = f"{key[:20]}.jpg"
        listing = self._list()
        if listing is None:
            return Thumb(None, f"not shown: {self._listing_error}")
        index = self._index.get(source)
        if index is None:
            return Thumb(None, "the source is gone: the data set no longer lists it")
        try:
            raw = listing.load(index)
        except FeaturecacheError as exc:
            return Thumb(None, f"the source cannot be read now: {exc}")
        if raw.key != key:
            return Thumb(None, "the source has changed since its features were cached")
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.previous is not None and (self.previous / name).is_file():
            shutil.copyfile(self.previous / name, self.folder / name)  # same bytes: no decode
            return Thumb(f"{self.folder.name}/{name}")
        try:
            data = _thumbnail(raw.data, raw.source)
        except (OSError, ValueError, FeaturecacheError) as exc:
            return Thumb(None, f"the source cannot be decoded: {exc}")
        (self.folder / name).write_bytes(data)
        return Thumb(f"{self.folder.name}/{name}")

    def _list(self) -> Listing | None:
        if self._listing is None and not self._listing_error:
            assert self.dataset is not None
            try:
                self._listing = list_dataset(self.dataset)
            except FeaturecacheError as exc:
                self._listing_error = f"the data set cannot be listed now: {exc}"
                log.warning("thumbnails: %s", self._listing_error)
                return None
            self._index = {r.source: i for i, r in enumerate(self._listing.records)}
        return self._listing


def _thumbnail(data: bytes | np.ndarray, source: str) -> bytes:
    """JPEG bytes of the image ``data`` (encoded bytes, or an array row as
    :func:`~featurecache.images.array_to_rgb` takes it) at most :data:`SIZE` pixels on
    its long side."""
    from PIL import Image, ImageOps

    from featurecache.images import array_to_rgb, to_rgb

    if isinstance(data, np.ndarray):
        side = min(SIZE, max(data.shape[:2]))
        image = Image.fromarray(array_to_rgb(data, side, source=source))
    else:
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (SIZE, SIZE))  # JPEG: decode at a reduced scale
        image = ImageOps.exif_transpose(image)
    image = to_rgb(image)
    image.thumbnail((SIZE, SIZE))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()
