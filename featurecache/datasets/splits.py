"""Stratified, seeded splits for data sets that declare none."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from featurecache.config import SplitRatios
from featurecache.datasets.files import Entry
from featurecache.datasets.records import Record, file_stat


def stratified_split(
    locators: Sequence[str], labels: Sequence[int], ratios: SplitRatios
) -> list[str]:
    """Assign ``train`` / ``validation`` / ``test`` per image, stratified by class.

    Within each class, images are ranked by BLAKE2b of ``f"{seed}:{locator}"``;
    the first ``round(n * test)`` go to test, the next ``round(n * validation)``
    to validation, the rest to train. Counts per class are exact (as with
    scikit-learn's ``train_test_split(stratify=...)``), the result depends only on
    the seed and the locators (never on listing order), and adding images moves
    few existing ones across splits. A class with fewer than 3 images keeps its
    first image in train.
    """
    splits = ["train"] * len(locators)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    for indices in by_class.values():
        ranked = sorted(
            indices,
            key=lambda i: hashlib.blake2b(
                f"{ratios.seed}:{locators[i]}".encode("utf-8", "surrogateescape")
            ).digest(),
        )
        n = len(ranked)
        n_test = min(round(n * ratios.test), n - 1)
        n_val = min(round(n * ratios.validation), n - 1 - n_test)
        for i in ranked[:n_test]:
            splits[i] = "test"
        for i in ranked[n_test : n_test + n_val]:
            splits[i] = "validation"
    return splits


def assign_splits(entries: list[Entry], root: Path | str, ratios: SplitRatios) -> list[Record]:
    """Records of ``entries`` with their splits: as declared, or stratified by locator (the
    path relative to ``root``'s folder). The stat of a URL is filled in by the caller."""
    if isinstance(root, str):  # a folder or manifest at a URL
        base: Path | str = root if not root.endswith(".csv") else root.rsplit("/", 1)[0]
    else:
        base = root if root.is_dir() else root.parent
    locators = [_relative(path, base) for path, _, _ in entries]
    if entries and entries[0][2] is None:
        splits = stratified_split(locators, [label for _, label, _ in entries], ratios)
    else:
        splits = [split or "train" for _, _, split in entries]
    return [
        Record(
            str(path), label, split, loc, *(file_stat(path) if isinstance(path, Path) else (-1, -1))
        )
        for (path, label, _), split, loc in zip(entries, splits, locators, strict=True)
    ]


def _relative(path: Path | str, base: Path | str) -> str:
    if isinstance(path, str) or isinstance(base, str):
        path, base = str(path), str(base).rstrip("/") + "/"
        return path[len(base) :] if path.startswith(base) else path
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()
