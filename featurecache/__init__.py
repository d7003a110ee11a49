"""featurecache: run each frozen backbone once per image, cache the bottleneck
features in zarr, and train heads on them in seconds."""

__all__ = ["__version__"]
__version__ = "0.1.0"
