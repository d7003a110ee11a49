"""docs/quickstart.ipynb, executed end to end (nbclient) against the shared cat vs
non-cat data with real MobileNetV2 weights; any failing cell fails the test."""

from __future__ import annotations

import os

import pytest

from tests.conftest import DATASETS, REPO, needs_shared

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = [needs_shared, pytest.mark.real_weights]


def test_the_quickstart_notebook_runs_end_to_end(tmp_path, monkeypatch):
    """Run in a scratch folder (its own cache/ and runs/), the pipeline file linked in."""
    (tmp_path / "pipelines").symlink_to(REPO / "pipelines")
    monkeypatch.setenv("FEATURECACHE_DATA_ROOT", str(DATASETS))
    monkeypatch.setenv("FEATURECACHE_CACHE", str(tmp_path / "cache"))
    notebook = nbformat.read(REPO / "docs" / "quickstart.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, if one fails
    text = "\n".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert "259 images, 259 computed" in text  # the backbone ran once per image
    assert "by hand" in text and "featurecache's logistic regression" in text
    images = [
        o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    ]
    assert images, "the confusion matrix was not drawn"
    assert (tmp_path / "runs" / "catvnoncat").is_dir() and os.listdir(tmp_path / "cache")
