"""What an extraction reports: :class:`ExtractResult` per (data set, backbone), and the
:class:`Profile` of a compute pass (where its wall time went)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ExtractResult:
    """What one (data set, backbone) extraction did; ``--json`` prints these.

    ``n_extracted`` images went through the backbone in this run (``n_resumed`` more had
    been computed by an interrupted run); ``n_reused`` were taken from the cache;
    ``n_new``, ``n_changed`` and ``n_removed`` compare the data set with the previous
    generation; ``seconds`` is wall time, ``images_per_second`` the backbone's rate over
    the computed images; ``profile`` says where the compute pass's wall time went
    (:class:`Profile`, seconds; in-process extraction only).
    """

    dataset: str
    backbone: str
    group: str
    cache_hit: bool
    n_images: int
    n_extracted: int
    weights: str
    seconds: float
    n_reused: int = 0
    n_resumed: int = 0
    n_new: int = 0
    n_changed: int = 0
    n_removed: int = 0
    images_per_second: float | None = None
    split_counts: dict[str, int] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    content_hash: str = ""
    engine: str = ""
    execution: str = "local"
    profile: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Profile:
    """Where a compute pass's wall time went, in seconds: ``waiting`` for decoded images
    (the backbone idle), ``backbone`` (preprocessing and inference, every backbone of the
    pass) and ``writing`` (making batches durable, or handing them on)."""

    waiting: float = 0.0
    backbone: float = 0.0
    writing: float = 0.0

    def describe(self) -> str:
        return (
            f"backbone {self.backbone:.1f} s, waiting for decoded images {self.waiting:.1f} s, "
            f"writing {self.writing:.1f} s"
        )
