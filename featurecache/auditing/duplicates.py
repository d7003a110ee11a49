"""Exact and near-duplicate images, their groups, and the leak across splits.

Two rows are **exact duplicates** when their content keys are equal (the same bytes,
listed twice) and **near-duplicates** when the cosine similarity of their features is at
least the threshold (a re-encode, a resize, a crop, a mirror image of one photo). Groups
are the connected components of those pairs (``scipy.sparse.csgraph``). The **leak** is
every held-out image (test or validation) with an exact or near-duplicate in train: its
accuracy was measured on an image the head has, in effect, been trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featurecache.auditing.neighbours import Neighbours

HELD_OUT = ("validation", "test")


@dataclass(frozen=True)
class Pair:
    """Two duplicate rows, ``a < b``; ``similarity`` is their cosine (1.0 for exact)."""

    a: int
    b: int
    similarity: float
    exact: bool


@dataclass(frozen=True)
class Leak:
    """A held-out row (``row``, in ``split``) and its most similar duplicate in train."""

    row: int
    split: str
    train_row: int
    similarity: float
    exact: bool


@dataclass(frozen=True)
class Duplicates:
    """What :func:`find_duplicates` found: ``pairs`` (strongest first), ``groups``
    (lists of rows, largest first; every row of a group is linked to another by a pair)
    and ``leaks`` (by split, then strongest first)."""

    pairs: list[Pair]
    groups: list[list[int]]
    leaks: list[Leak]

    def leaked_rows(self, split: str = "test") -> np.ndarray:
        """Rows of ``split`` with a duplicate in train: int64 array."""
        rows = sorted({leak.row for leak in self.leaks if leak.split == split})
        return np.asarray(rows, dtype=np.int64)


def find_duplicates(
    keys: np.ndarray, splits: np.ndarray, neighbours: Neighbours, threshold: float
) -> Duplicates:
    """The duplicates among rows with content ``keys`` and ``splits`` (arrays of str of
    shape (n_images,)), from their nearest ``neighbours`` at cosine >= ``threshold``."""
    near, sims = neighbours.similar(threshold)
    pairs = {
        (int(a), int(b)): (float(s), False)
        for (a, b), s in zip(near.tolist(), sims.tolist(), strict=True)
    }
    for a, b in _same_key(keys, splits):
        pairs[a, b] = (1.0, True)
    found = sorted(
        (Pair(a, b, s, exact) for (a, b), (s, exact) in pairs.items()),
        key=lambda p: (-p.similarity, p.a, p.b),
    )
    return Duplicates(found, _groups(len(keys), found), _leaks(splits, found))


def _same_key(keys: np.ndarray, splits: np.ndarray) -> list[tuple[int, int]]:
    """Pairs of rows with one content key: each row with the first row of its key, and
    each held-out row with the first train row of its key (so every leak is a pair)."""
    rows: dict[str, list[int]] = {}
    for row, key in enumerate(keys.tolist()):
        rows.setdefault(key, []).append(row)
    out: set[tuple[int, int]] = set()
    for group in (g for g in rows.values() if len(g) > 1):
        out.update((group[0], row) for row in group[1:])
        train = next((r for r in group if splits[r] == "train"), None)
        if train is not None:
            out.update((min(train, r), max(train, r)) for r in group if splits[r] in HELD_OUT)
    return sorted(out)


def _groups(n: int, pairs: list[Pair]) -> list[list[int]]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not pairs:
        return []
    a = np.array([p.a for p in pairs])
    b = np.array([p.b for p in pairs])
    graph = coo_matrix((np.ones(len(pairs)), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    members: dict[int, list[int]] = {}
    for row in sorted(set(a.tolist()) | set(b.tolist())):
        members.setdefault(int(labels[row]), []).append(row)
    return sorted(members.values(), key=lambda g: (-len(g), g[0]))


def _leaks(splits: np.ndarray, pairs: list[Pair]) -> list[Leak]:
    best: dict[int, Leak] = {}
    for pair in pairs:  # strongest first: the first found for a row is its best
        for held, other in ((pair.a, pair.b), (pair.b, pair.a)):
            if splits[held] in HELD_OUT and splits[other] == "train" and held not in best:
                best[held] = Leak(held, str(splits[held]), other, pair.similarity, pair.exact)
    order = {s: i for i, s in enumerate(HELD_OUT)}
    return sorted(best.values(), key=lambda x: (order[x.split], -x.similarity, x.row))
