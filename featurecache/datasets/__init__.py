"""Data sets: listing images (folders, CSV manifests, HDF5, WebDataset shards, Parquet
files; local or at fsspec URLs) without decoding them.

- :mod:`~featurecache.datasets.listing`: :func:`list_dataset` and the :class:`Listing`
  it returns (records, class names, fingerprint; reads and decodes on demand);
- :mod:`~featurecache.datasets.files`: class folders and CSV manifests;
- :mod:`~featurecache.datasets.hdf5`: HDF5 arrays;
- :mod:`~featurecache.datasets.objects`: objects in storage (stat, fetch whole, retry);
- :mod:`~featurecache.datasets.members`: the images inside a tar shard or Parquet file;
- :mod:`~featurecache.datasets.sharded`: listing and reading such objects;
- :mod:`~featurecache.datasets.index`: the stat index, what each object version holds;
- :mod:`~featurecache.datasets.splits`: the seeded stratified split;
- :mod:`~featurecache.datasets.records`: one listed image.
"""

from featurecache.datasets.files import SPLIT_ALIASES, image_files, image_suffixes
from featurecache.datasets.index import ObjectIndex
from featurecache.datasets.listing import Listing, list_dataset
from featurecache.datasets.records import RawImage, Record
from featurecache.datasets.splits import stratified_split

__all__ = [
    "SPLIT_ALIASES",
    "Listing",
    "ObjectIndex",
    "RawImage",
    "Record",
    "image_files",
    "image_suffixes",
    "list_dataset",
    "stratified_split",
]
