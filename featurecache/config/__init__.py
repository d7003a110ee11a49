"""Configuration: what a pipeline declares, checked once, in one place.

- :mod:`~featurecache.config.model`, :mod:`~featurecache.config.dataset`,
  :mod:`~featurecache.config.backbone`: the frozen dataclasses (``Pipeline``,
  ``DatasetConfig``, ``BackboneConfig``, ``HeadConfig``, ...);
- :mod:`~featurecache.config.constraints`: what each field may be, one table per dataclass;
- :mod:`~featurecache.config.registry`: the registered backbones (data);
- :mod:`~featurecache.config.load`: ``pipelines/*.toml`` files;
- :mod:`~featurecache.config.options`: the same from ``--data`` / ``--backbone`` options.
"""

from featurecache.config.backbone import ENGINE_ENV, RANDOM_WEIGHTS_SEED, BackboneConfig
from featurecache.config.dataset import DatasetConfig, Hdf5Source, SplitRatios
from featurecache.config.load import DATA_ROOT_ENV, discover, load_all, load_pipeline
from featurecache.config.model import (
    CACHE_ENV,
    DEFAULT_OUTPUT,
    AuditConfig,
    Augmentation,
    FinetuneConfig,
    HeadConfig,
    Pipeline,
    Reference,
    cache_path,
    is_url,
)
from featurecache.config.options import (
    dataset_from_option,
    pipeline_from_options,
    resolve_pipeline,
)
from featurecache.config.registry import REGISTRY, BackboneSpec, get_spec

__all__ = [
    "CACHE_ENV",
    "DATA_ROOT_ENV",
    "DEFAULT_OUTPUT",
    "ENGINE_ENV",
    "RANDOM_WEIGHTS_SEED",
    "REGISTRY",
    "AuditConfig",
    "Augmentation",
    "BackboneConfig",
    "BackboneSpec",
    "DatasetConfig",
    "FinetuneConfig",
    "HeadConfig",
    "Hdf5Source",
    "Pipeline",
    "Reference",
    "SplitRatios",
    "cache_path",
    "dataset_from_option",
    "discover",
    "get_spec",
    "is_url",
    "load_all",
    "load_pipeline",
    "pipeline_from_options",
    "resolve_pipeline",
]
