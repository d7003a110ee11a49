"""Options that go together, as one object: the option groups and how a command gets them.

Which pipeline a command works on
(:class:`PipelineOptions`: a pipeline file, or ``--data`` and the backbone settings;
``extract``, ``train-head``, ``run``, ``finetune``), how extraction runs
(:class:`ExtractionOptions`; ``extract``, ``run``, ``refresh``) and how fine-tuning
trains (:class:`FinetuneOptions`). A command parameter annotated with a group gets the
group's options (:func:`with_options`) and receives them as one object. The options
themselves are declared in :mod:`featurecache.cli.options`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurecache import api
from featurecache.cli.options import (
    AugmentOpt,
    BackboneOpt,
    CacheOpt,
    DataOpt,
    DataRootOpt,
    DecoderOpt,
    DtypeOpt,
    EngineOpt,
    EpochsOpt,
    FromCacheOpt,
    HeadNameOpt,
    JsonOpt,
    LearningRateOpt,
    MaxStepsOpt,
    PipelineArg,
    PoolingOpt,
    PrecisionOpt,
    ProgressOpt,
    SchedulerOpt,
    SizeOpt,
    UnfreezeOpt,
    WaitOpt,
    WeightsOpt,
    WorkersOpt,
)

if TYPE_CHECKING:
    from featurecache.api import Pipeline


def show_progress(flag: bool | None) -> bool:
    """``--progress`` / ``--no-progress``, or whether stderr is a terminal."""
    return sys.stderr.isatty() if flag is None else flag


@dataclass(frozen=True)
class PipelineOptions:
    """Which pipeline a command works on: a pipeline file, or ``--data`` and friends."""

    pipeline: PipelineArg = None
    data: DataOpt = None
    backbone: BackboneOpt = None
    weights: WeightsOpt = None
    pooling: PoolingOpt = None
    input_size: SizeOpt = None
    engine: EngineOpt = None
    precision: PrecisionOpt = None
    decoder: DecoderOpt = None
    dtype: DtypeOpt = None
    cache: CacheOpt = None
    data_root: DataRootOpt = None

    def load(
        self,
        *,
        heads: list[str] | None = None,
        output: Path | None = None,
        batch_size: int | None = None,
    ) -> Pipeline:
        """The pipeline these options name (:func:`featurecache.api.load_pipeline`)."""
        options = asdict(self)
        return api.load_pipeline(
            options.pop("pipeline"), **options, heads=heads, output=output, batch_size=batch_size
        )


@dataclass(frozen=True)
class OutputOptions:
    """What every command prints: text, or a JSON document with ``--json``."""

    as_json: JsonOpt = False


@dataclass(frozen=True)
class ExtractionOptions:
    """How extraction runs: the data set's writer lock, a Dask cluster, the progress bar."""

    wait: WaitOpt = True
    scheduler: SchedulerOpt = None
    workers: WorkersOpt = None
    progress: ProgressOpt = None

    def settings(self) -> dict[str, Any]:
        """Keyword arguments of :func:`featurecache.api.extract`, ``run`` and ``refresh``."""
        return {
            "progress": show_progress(self.progress),
            "wait": self.wait,
            "scheduler": self.scheduler,
            "workers": self.workers,
        }


@dataclass(frozen=True)
class FinetuneOptions:
    """How ``finetune`` trains: overrides of the pipeline's ``[finetune]`` table."""

    head: HeadNameOpt = None
    epochs: EpochsOpt = None
    max_steps: MaxStepsOpt = None
    learning_rate: LearningRateOpt = None
    unfreeze: UnfreezeOpt = None
    augment: AugmentOpt = None
    from_cache: FromCacheOpt = None

    def apply(self, pipeline: Pipeline) -> Pipeline:
        """``pipeline`` with these options in its ``[finetune]`` (``None``: kept)."""
        changes = asdict(self)
        from_cache = changes.pop("from_cache")
        if from_cache is not None:
            changes["source"] = "cache" if from_cache else "images"
        return pipeline.with_finetune(**changes)


def _parameters(group: type) -> list[inspect.Parameter]:
    """The fields of an options dataclass as keyword parameters, with their typer options."""
    hints = inspect.get_annotations(group, eval_str=True)
    keyword = inspect.Parameter.KEYWORD_ONLY
    return [
        inspect.Parameter(name, keyword, default=default, annotation=hints[name])
        for name, default in asdict(group()).items()
    ]


def with_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Replace each parameter of ``command`` annotated with an options dataclass
    (:class:`PipelineOptions`, ...) by that dataclass's options, in place; the command
    receives one instance of it under the parameter's name."""
    groups: dict[str, tuple[type[Any], list[inspect.Parameter]]] = {}
    params = []
    for p in inspect.signature(command, eval_str=True).parameters.values():
        options_group = isinstance(p.annotation, type) and dataclasses.is_dataclass(p.annotation)
        if options_group and p.annotation.__module__ == __name__:
            groups[p.name] = (p.annotation, _parameters(p.annotation))
            params += groups[p.name][1]
        else:
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        made = {
            key: group(**{p.name: kwargs.pop(p.name) for p in fields})
            for key, (group, fields) in groups.items()
        }
        return command(**made, **kwargs)

    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper
