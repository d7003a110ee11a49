"""Backbones: building the frozen ``keras.applications`` models and their preprocessing.

What each backbone is (input size, feature dimension, preprocessing, last block) is
data, in :mod:`featurecache.config.registry`; this package builds the models
(:mod:`~featurecache.backbones.build`) and applies each family's preprocessing
(:mod:`~featurecache.backbones.preprocessing`).
"""

from featurecache.backbones.build import BuiltBackbone, build_backbone
from featurecache.backbones.preprocessing import preprocess_fn, preprocessing_layers
from featurecache.hashing import sha256_file

__all__ = [
    "BuiltBackbone",
    "build_backbone",
    "preprocess_fn",
    "preprocessing_layers",
    "sha256_file",
]
