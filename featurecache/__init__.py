"""featurecache: run each frozen backbone once per image, cache the bottleneck
features in zarr, and train heads on them in seconds.

The public API (:mod:`featurecache.api`) is importable from here: ``open_cache``,
``load_pipeline``, ``extract``, ``train_head``, ``finetune``, ``run``, ``refresh``,
``verify``, ``predict``... It is loaded on first use, so ``import featurecache`` is
instant and imports neither TensorFlow nor zarr. No subpackage shares a name with an
API function (a submodule, once imported, would replace the package attribute):
``tests/test_architecture.py`` checks it.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what __getattr__ hands out, for editors and type checkers
    from featurecache.api import (
        Cache,
        FeatureSet,
        Pipeline,
        ReportResult,
        audit,
        extract,
        finetune,
        gc,
        info,
        list_backbones,
        load_pipeline,
        load_pipelines,
        open_cache,
        predict,
        refresh,
        report,
        run,
        set_verbose,
        train_head,
        verify,
    )

__version__ = "0.1.0"

_API = (
    "Cache",
    "FeatureSet",
    "Pipeline",
    "list_backbones",
    "audit",
    "extract",
    "finetune",
    "gc",
    "info",
    "load_pipeline",
    "load_pipelines",
    "open_cache",
    "predict",
    "refresh",
    "report",
    "ReportResult",
    "run",
    "set_verbose",
    "train_head",
    "verify",
)
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:  # PEP 562: the API module is imported on first use
    if name in _API:
        from featurecache import api

        return getattr(api, name)
    raise AttributeError(f"module 'featurecache' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
