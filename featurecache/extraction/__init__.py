"""Extraction: data set x backbone -> bottleneck features in the cache, once per image.

- :mod:`~featurecache.extraction.extract`: the stage (:func:`extract`);
- :mod:`~featurecache.extraction.plan`: what the cache already has, what to compute;
- :mod:`~featurecache.extraction.job`: one backbone's job and the one batch loop;
- :mod:`~featurecache.extraction.decoding`: the decoding thread pool;
- :mod:`~featurecache.extraction.engines`: Keras (on its backend) or ONNX Runtime
  runs the backbone;
- :mod:`~featurecache.extraction.local` / :mod:`~featurecache.extraction.dask`: where the
  batches run;
- :mod:`~featurecache.extraction.commit`: the new generation, published atomically.
"""

from featurecache.extraction.cluster import Cluster
from featurecache.extraction.extract import extract, extract_dataset
from featurecache.extraction.job import ExtractResult

__all__ = ["Cluster", "ExtractResult", "extract", "extract_dataset"]
