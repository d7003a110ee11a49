"""Extraction: data set x backbone -> bottleneck features in the cache, once per image.

- :mod:`~featurecache.extraction.extract`: the stage (:func:`extract`);
- planning: :mod:`~featurecache.extraction.plan` (row by row: what the cache already
  has, what to compute) and :mod:`~featurecache.extraction.job` (per backbone: a cache
  hit, or a job with its staging area and its engine opened);
- the batch loop: :mod:`~featurecache.extraction.loop` (reader -> engine -> writer) over
  :mod:`~featurecache.extraction.decoding` (the reader: decoding threads over an
  ``ImageSource``) and :mod:`~featurecache.extraction.engines` (Keras on its backend, or
  ONNX Runtime);
- runners, each passing the loop its writer: :mod:`~featurecache.extraction.local` (this
  process) and :mod:`~featurecache.extraction.dask` (shards on a Dask cluster);
- :mod:`~featurecache.extraction.commit`: the new generation, published atomically;
  :mod:`~featurecache.extraction.repair`: ``verify --repair`` (and
  :mod:`~featurecache.extraction.provenance`: a group rebuilt from its provenance).
"""

from featurecache.extraction.cluster import Cluster
from featurecache.extraction.extract import extract, extract_dataset
from featurecache.extraction.result import ExtractResult

__all__ = ["Cluster", "ExtractResult", "extract", "extract_dataset"]
