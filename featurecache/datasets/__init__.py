"""Data sets: listing images (folders, CSV manifests, HDF5) without decoding them.

- :mod:`~featurecache.datasets.listing`: :func:`list_dataset` and the :class:`Listing`
  it returns (records, class names, fingerprint; reads and decodes on demand);
- :mod:`~featurecache.datasets.files`: class folders and CSV manifests;
- :mod:`~featurecache.datasets.hdf5`: HDF5 arrays;
- :mod:`~featurecache.datasets.splits`: the seeded stratified split;
- :mod:`~featurecache.datasets.records`: one listed image.
"""

from featurecache.datasets.files import SPLIT_ALIASES, image_files, image_suffixes
from featurecache.datasets.listing import Listing, list_dataset
from featurecache.datasets.records import RawImage, Record
from featurecache.datasets.splits import stratified_split

__all__ = [
    "SPLIT_ALIASES",
    "Listing",
    "RawImage",
    "Record",
    "image_files",
    "image_suffixes",
    "list_dataset",
    "stratified_split",
]
