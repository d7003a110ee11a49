"""How generations are named: the one owner of ``gen-NNNNNN`` and ``gen-NNNNNN.partial``.

A backbone group holds numbered generations (``gen-000001``, ``gen-000002``...), each a
complete, immutable zarr group, and ``current`` names the committed one. In a folder a
generation is written as ``gen-NNNNNN.partial`` and renamed when complete
(:mod:`featurecache.cache.storage`), so a folder named so is a killed writer's leftover.
"""

from __future__ import annotations

from collections.abc import Iterable

PREFIX = "gen-"
PARTIAL_SUFFIX = ".partial"
DIGITS = 6


def generation_name(number: int) -> str:
    """``gen-NNNNNN`` for generation ``number`` (1, 2, ...)."""
    return f"{PREFIX}{number:0{DIGITS}d}"


def generation_number(name: str) -> int | None:
    """The number of a complete generation's folder name (``gen-000002`` -> 2); None for
    any other name (``current``, ``gen-000002.partial``)."""
    digits = name.removeprefix(PREFIX)
    return int(digits) if name.startswith(PREFIX) and digits.isdigit() else None


def is_generation_folder(name: str) -> bool:
    """Whether ``name`` is a generation's folder, complete or still being written."""
    return name.startswith(PREFIX)


def partial_name(name: str) -> str:
    """The name generation ``name`` is written under in a folder, until it is complete."""
    return f"{name}{PARTIAL_SUFFIX}"


def is_partial(name: str) -> bool:
    """Whether ``name`` is a generation folder still being written (or a killed writer's)."""
    return is_generation_folder(name) and name.endswith(PARTIAL_SUFFIX)


def next_generation(existing: Iterable[str]) -> str:
    """The name after the highest-numbered generation among ``existing`` folder names."""
    numbers = [n for n in map(generation_number, existing) if n is not None]
    return generation_name(max(numbers, default=0) + 1)
