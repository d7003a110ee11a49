"""A 2-D map of the embeddings, coloured by class, with the audit's findings marked.

UMAP (McInnes, Healy and Melville 2018, arXiv 1802.03426; the umap-learn package) with
cosine distance where umap-learn is installed, else scikit-learn's t-SNE (van der
Maaten and Hinton 2008) on the first 50 principal components of the L2-normalised
features, as scikit-learn's documentation advises for high-dimensional input. At most
``points`` images are drawn: every image with a finding, and a random sample of the
rest.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurecache.auditing.neighbours import normalise
from featurecache.errors import ConfigError

log = logging.getLogger(__name__)

#: How each finding is marked: matplotlib marker, colour, label.
MARKS = {
    "leak": ("X", "#d62728", "test image leaked from train"),
    "label_issue": ("o", "none", "likely label error"),
    "outlier": ("^", "#000000", "outlier"),
}


@dataclass(frozen=True)
class EmbeddingMap:
    """The map drawn: ``method`` (``"umap"`` or ``"tsne"``), the ``rows`` drawn and
    their 2-D ``coordinates`` (float32, (n_drawn, 2)), and the PNG ``path``."""

    method: str
    rows: np.ndarray
    coordinates: np.ndarray
    path: Path


def choose_method(wanted: str) -> str:
    """``umap`` or ``tsne`` for the ``map`` setting (``auto``: UMAP where installed).

    Raises
    ------
    ConfigError
        If ``umap`` is asked for and umap-learn is not installed.
    """
    if wanted == "tsne":
        return "tsne"
    try:
        import umap  # noqa: F401
    except ImportError:
        if wanted == "umap":
            raise ConfigError(
                "map = 'umap' needs umap-learn; pip install umap-learn, or use map = 'tsne'",
                key="map",
            ) from None
        return "tsne"
    return "umap"


def draw_map(
    features: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    findings: Mapping[str, np.ndarray],
    path: Path,
    *,
    method: str,
    points: int,
    seed: int = 0,
) -> EmbeddingMap:
    """Embed a sample of ``features`` (float32, (n_images, dim)) in 2-D and save the
    map as a PNG at ``path``; ``findings`` maps a :data:`MARKS` name to its rows."""
    marked = np.unique(np.concatenate([np.asarray(r, dtype=np.int64) for r in findings.values()]))
    rows = _sample(len(features), marked, points, seed)
    log.info("embedding map: %s of %d images", method, len(rows))
    coordinates = _embed(normalise(features[rows]), method, seed)
    _plot(coordinates, rows, labels, class_names, findings, path, method)
    return EmbeddingMap(method, rows, coordinates, path)


def _sample(n: int, marked: np.ndarray, points: int, seed: int) -> np.ndarray:
    marked = marked[:points]
    rest = np.setdiff1d(np.arange(n), marked)
    take = min(len(rest), points - len(marked))
    chosen = np.random.default_rng(seed).choice(rest, take, replace=False)
    return np.sort(np.concatenate([marked, chosen]))


def _embed(unit: np.ndarray, method: str, seed: int) -> np.ndarray:
    if method == "umap":
        import umap

        reducer = umap.UMAP(n_components=2, metric="cosine", random_state=seed, n_jobs=1)
        return np.asarray(reducer.fit_transform(unit), dtype=np.float32)
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    reduced = PCA(n_components=min(50, *unit.shape), random_state=seed).fit_transform(unit)
    perplexity = float(min(30, max(2, (len(unit) - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return np.asarray(tsne.fit_transform(reduced), dtype=np.float32)


def _plot(
    coordinates: np.ndarray,
    rows: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    findings: Mapping[str, np.ndarray],
    path: Path,
    method: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 7.5), dpi=110)
    colours = plt.get_cmap("tab20" if len(class_names) > 10 else "tab10")
    for c, name in enumerate(class_names):
        here = labels[rows] == c
        if here.any():
            xy = coordinates[here]
            ax.scatter(xy[:, 0], xy[:, 1], s=6, color=colours(c % colours.N), label=name, alpha=0.6)
    position = {int(r): i for i, r in enumerate(rows)}
    for kind, found in findings.items():
        drawn = [position[int(r)] for r in found if int(r) in position]
        if drawn:
            marker, colour, text = MARKS[kind]
            edge = "#000000" if colour == "none" else "white"
            xy = coordinates[drawn]
            ax.scatter(
                xy[:, 0],
                xy[:, 1],
                s=60,
                marker=marker,
                facecolors=colour,
                edgecolors=edge,
                linewidths=0.8,
                label=f"{text} ({len(drawn)})",
            )
    ax.set_title(
        f"Bottleneck features in 2-D ({'UMAP' if method == 'umap' else 't-SNE'}), "
        f"{len(rows):,} images"
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=1.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
