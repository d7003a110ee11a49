"""Nearest neighbours of bottleneck features by cosine similarity, in bounded memory.

Cosine similarity is the inner product of L2-normalised features, so every search here
normalises its rows (a block at a time, never the whole array at once) and asks for the
largest inner products:

- **exact** up to ``exact_at_most`` images: faiss's ``IndexFlatIP`` (a brute-force BLAS
  search), or scikit-learn's brute-force ``NearestNeighbors`` where faiss is not
  installed. Memory: the normalised features in float32 (60,000 x 1,280: 307 MB).
- **approximate** beyond: candidates from a faiss inverted-file index (``IndexIVFFlat``)
  over a PCA of the normalised features to :data:`PCA_DIMS` dimensions (faiss
  ``PCAMatrix``), then every candidate's similarity computed exactly from the full
  features. The similarities reported are exact; only which neighbours are found is
  approximate (its recall against exact search is measured in ``benchmarks/audit.py``).
  Memory: the features as given (a float16 array of 1M x 1,280 is 2.6 GB; ``featurecache
  audit`` passes the cache's rows as float32, twice that) and ``PCA_DIMS`` float32 per
  image for the index (1M: 0.5 GB).

The inverted-file recipe (coarse quantiser with about ``4 sqrt(n)`` lists, ``nprobe``
lists searched) is faiss's own guideline ("Guidelines to choose an index", faiss wiki).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from featurecache.errors import DependencyError

log = logging.getLogger(__name__)

#: Dimensions of the PCA that the approximate index searches in.
PCA_DIMS = 128
#: Inverted lists searched per query by the approximate index.
NPROBE = 24
#: Fewest images the approximate index is built for (faiss wants about 39 training
#: points per inverted list); fewer are searched exactly whatever ``exact_at_most`` says.
APPROXIMATE_AT_LEAST = 2000
#: Rows normalised and searched at a time.
BLOCK = 8192
#: Rows whose candidates are gathered and re-scored at a time (each gathers 2k rows of
#: features: 1,024 x 22 x 1,280 float32 is 115 MB).
RERANK_BLOCK = 1024


@dataclass(frozen=True)
class Neighbours:
    """The nearest other images of each image.

    Attributes
    ----------
    index : ndarray of shape (n_images, k), dtype int64
        Row numbers of each image's neighbours, most similar first; -1 where fewer
        than k were found.
    similarity : ndarray of shape (n_images, k), dtype float32
        Their cosine similarities (1.0: the same direction), -inf where none.
    method : str
        How they were found, for the report.
    """

    index: np.ndarray
    similarity: np.ndarray
    method: str

    def similar(self, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Pairs ``(i, j)``, ``i < j``, with similarity >= ``threshold``, each once and
        ordered by ``(i, j)``: int64 array of shape (n_pairs, 2), and their similarities
        (float32, (n_pairs,); a pair found from both sides keeps the higher)."""
        rows, cols = np.nonzero(self.similarity >= threshold)
        other = self.index[rows, cols]
        found = other >= 0
        sims = self.similarity[rows, cols][found]
        a = np.minimum(rows[found], other[found])
        b = np.maximum(rows[found], other[found])
        order = np.lexsort((-sims, b, a))  # by (a, b), the highest similarity first
        a, b, sims = a[order], b[order], sims[order]
        first = np.ones(len(a), dtype=bool)
        first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        return np.stack([a[first], b[first]], axis=1).astype(np.int64), sims[first]

    def pairs(self, threshold: float) -> np.ndarray:
        """The pairs of :meth:`similar`, without their similarities."""
        return self.similar(threshold)[0]


def normalise(block: np.ndarray) -> np.ndarray:
    """Rows of ``block`` scaled to unit L2 norm, as float32 (all-zero rows stay zero)."""
    out = np.asarray(block, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def nearest(features: Any, k: int, *, exact_at_most: int = 200_000, seed: int = 0) -> Neighbours:
    """The ``k`` most similar other rows of each row of ``features``.

    Parameters
    ----------
    features : array of shape (n_images, feature_dim), float16 or float32
        Anything sliced by rows into numpy (an ndarray, a memmap); not normalised.
    k : int
        Neighbours per image.
    exact_at_most : int
        The most images searched exactly; beyond, the approximate index (never for
        fewer than :data:`APPROXIMATE_AT_LEAST` images, too few to train it).

    Raises
    ------
    DependencyError
        If more than ``exact_at_most`` images are searched and faiss is not installed.
    """
    n = len(features)
    if n < 2:
        empty = np.empty((n, 0))
        return Neighbours(empty.astype(np.int64), empty.astype(np.float32), "none (one image)")
    k = max(1, min(k, n - 1))
    faiss = _faiss()
    if n <= max(exact_at_most, APPROXIMATE_AT_LEAST - 1):
        if faiss is None:
            index, sims, method = _exact_sklearn(features, k + 1)
        else:
            index, sims, method = _exact_faiss(faiss, features, k + 1)
    elif faiss is None:
        raise DependencyError(
            f"searching {n:,} images (more than exact_at_most = {exact_at_most:,}) needs "
            "faiss; pip install 'featurecache[audit]'"
        )
    else:
        index, sims, method = _approximate(faiss, features, k + 1, seed)
    index, sims = _drop_self(index, sims, k)
    return Neighbours(index, sims, method)


def _exact_faiss(faiss: Any, features: Any, k: int) -> tuple[np.ndarray, np.ndarray, str]:
    n, d = features.shape
    flat = faiss.IndexFlatIP(d)
    for start in range(0, n, BLOCK):
        flat.add(normalise(features[start : start + BLOCK]))
    sims, index = _search(flat, features, k, lambda block: block)
    return index, sims, f"exact (faiss {faiss.__version__} IndexFlatIP)"


def _exact_sklearn(features: Any, k: int) -> tuple[np.ndarray, np.ndarray, str]:
    import sklearn
    from sklearn.neighbors import NearestNeighbors

    unit = normalise(features[:])
    search = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="cosine").fit(unit)
    distances, index = search.kneighbors(unit)
    sims = (1.0 - distances).astype(np.float32)
    return index.astype(np.int64), sims, f"exact (scikit-learn {sklearn.__version__} brute force)"


def _approximate(
    faiss: Any, features: Any, k: int, seed: int
) -> tuple[np.ndarray, np.ndarray, str]:
    n, d = features.shape
    lists = int(min(65536, max(16, 4 * math.sqrt(n))))
    rng = np.random.default_rng(seed)
    sample = normalise(features[np.sort(rng.choice(n, min(n, 40 * lists), replace=False))])
    dims = min(PCA_DIMS, d)
    pca = faiss.PCAMatrix(d, dims)
    pca.train(sample)
    quantiser = faiss.IndexFlatIP(dims)
    ivf = faiss.IndexIVFFlat(quantiser, dims, lists, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = seed
    ivf.train(pca.apply(sample))
    del sample
    for start in range(0, n, BLOCK):
        ivf.add(pca.apply(normalise(features[start : start + BLOCK])))
    ivf.nprobe = min(NPROBE, lists)
    log.info(
        "approximate search: PCA to %d dims, %d inverted lists, %d probed", dims, lists, ivf.nprobe
    )
    _, candidates = _search(ivf, features, 2 * k, pca.apply)
    index, sims = _rerank(features, candidates, k)
    method = (
        f"approximate (faiss {faiss.__version__}: PCA to {dims} dimensions, IndexIVFFlat of "
        f"{lists} lists, {ivf.nprobe} probed; similarities recomputed exactly)"
    )
    return index, sims, method


def _search(index: Any, features: Any, k: int, project: Any) -> tuple[np.ndarray, np.ndarray]:
    n = len(features)
    sims = np.empty((n, k), dtype=np.float32)
    found = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, BLOCK):
        block = normalise(features[start : start + BLOCK])
        sims[start : start + len(block)], found[start : start + len(block)] = index.search(
            project(block), k
        )
    return sims, found


def _rerank(features: Any, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's candidates, their similarity computed from the full features, best
    first, the best ``k`` kept."""
    n = len(features)
    sims = np.full(candidates.shape, -np.inf, dtype=np.float32)
    for start in range(0, n, RERANK_BLOCK):
        rows = candidates[start : start + RERANK_BLOCK]
        query = normalise(features[start : start + len(rows)])
        valid = rows >= 0
        others = normalise(features[np.where(valid, rows, 0).ravel()]).reshape(*rows.shape, -1)
        block = np.einsum("bd,bkd->bk", query, others)
        sims[start : start + len(rows)] = np.where(valid, block, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(candidates, order, 1), np.take_along_axis(sims, order, 1)


def _drop_self(index: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The results without each row itself (wherever it came in them), ``k`` columns."""
    rows = np.arange(len(index))[:, None]
    keep = index != rows
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # the kept ones first, in order
    index = np.take_along_axis(index, order, 1)
    sims = np.take_along_axis(sims, order, 1)
    dropped = ~np.take_along_axis(keep, order, 1)
    index[dropped | (index < 0)] = -1
    sims[dropped | (index < 0)] = -np.inf
    return index, sims.astype(np.float32)
