"""The feature cache: zarr groups of bottleneck features with their provenance.

The read side and the write side:

- :mod:`~featurecache.cache.layout`: :class:`Cache`, the read side: where everything is
  (data sets, backbone groups, generations, ``current``, the workspace), finding groups
  and reading features;
- :mod:`~featurecache.cache.features`: :class:`FeatureSet`, features read into memory;
- :mod:`~featurecache.cache.verify`: ``featurecache verify`` (repairs are in
  :mod:`featurecache.extraction.repair`);
- :mod:`~featurecache.cache.writing`: :class:`CacheWriter`, the write side: the root group,
  a data set's writer lock, staging areas, and committing a generation
  (:class:`~featurecache.cache.writing.GenerationWriter`);
- :mod:`~featurecache.cache.staging`: an extraction's resumable staging area;

and what both share:

- :mod:`~featurecache.cache.arrays`: what a generation holds (arrays and row columns,
  declared once); :mod:`~featurecache.cache.generations`: how generations are named;
- :mod:`~featurecache.cache.store`: zarr itself (the only module importing zarr or
  knowing its file format): groups, arrays, chunk checks (CRC-32C);
- :mod:`~featurecache.cache.storage`: a folder or an fsspec URL (``s3://``, ``memory://``);
- :mod:`~featurecache.cache.recipe`: what identifies a set of features (hashes);
- :mod:`~featurecache.cache.admin`: ``featurecache info`` and ``gc``.
"""

from featurecache.cache.features import FeatureSet
from featurecache.cache.layout import Cache, cache_id
from featurecache.cache.storage import storable
from featurecache.cache.writing import CacheWriter

__all__ = ["Cache", "CacheWriter", "FeatureSet", "cache_id", "storable"]
