"""The feature cache: zarr groups of bottleneck features with their provenance.

- :mod:`~featurecache.cache.layout`: :class:`Cache`, where everything is (data sets,
  backbone groups, generations, ``current``, the workspace for staging and locks);
- :mod:`~featurecache.cache.features`: :class:`FeatureSet`, features read into memory;
- :mod:`~featurecache.cache.store`: the zarr arrays (the only module importing zarr):
  writing and reading generations, checking their chunks (CRC-32C);
- :mod:`~featurecache.cache.staging`: an extraction's resumable staging area;
- :mod:`~featurecache.cache.storage`: a folder or an fsspec URL (``s3://``, ``memory://``);
- :mod:`~featurecache.cache.recipe`: what identifies a set of features (hashes);
- :mod:`~featurecache.cache.admin`: ``featurecache info`` and ``gc``;
- :mod:`~featurecache.cache.verify`: ``featurecache verify`` (repairs are in
  :mod:`featurecache.extraction.repair`).
"""

from featurecache.cache.features import FeatureSet
from featurecache.cache.layout import Cache, cache_id
from featurecache.cache.storage import storable

__all__ = ["Cache", "FeatureSet", "cache_id", "storable"]
