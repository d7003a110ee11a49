"""A head folder from someone else cannot run code through `predict`.

Each crafted file would create a marker file when loaded (a pickle's ``__reduce__``,
a skops file naming a foreign callable, a ``.keras`` model with a Lambda layer);
`predict` refuses each with one line and the marker never appears. With
``--trust-pickle`` the pickle does run: the attack the refusal stops is real.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import joblib
import pytest

from featurecache.errors import EXIT_ERROR
from tests.conftest import invoke


class _Payload:
    """Unpickling this calls ``os.mkdir(marker)``: any call would do as well."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A real logistic-regression head on a tiny synthetic data set (random weights)."""
    from tests.conftest import CLASSES, make_image

    root = tmp_path_factory.mktemp("safe")
    for i, (name, color) in enumerate(CLASSES.items()):
        for j in range(8):
            make_image(root / "photos" / name / f"{j}.png", color, pattern=i)
    pipeline = root / "p.toml"
    pipeline.write_text(
        f'name = "p"\ncache = "{root / "cache"}"\noutput = "{root / "runs"}"\n'
        f'[[datasets]]\nname = "photos"\npath = "{root / "photos"}"\n'
        '[[backbones]]\nname = "mobilenet_v2"\nweights = "none"\ninput_size = 32\n'
        '[[heads]]\nname = "lr"\nkind = "logistic_regression"\n'
    )
    result = invoke("run", pipeline)
    assert result.exit_code == 0, result.output
    [head] = (root / "runs").rglob("lr")
    return head


def swap_model(head: Path, tmp_path: Path, name: str) -> Path:
    """A copy of the head folder whose head.json names ``name`` as its model file."""
    import shutil

    folder = tmp_path / "head"
    shutil.copytree(head, folder)
    info = json.loads((folder / "head.json").read_text())
    info["model_file"] = name
    (folder / "head.json").write_text(json.dumps(info))
    return folder


def test_a_real_head_is_saved_with_skops_and_predicts(trained):
    assert (trained / "model.skops").is_file() and not (trained / "model.joblib").exists()
    image = next((trained.parents[4] / "photos").rglob("*.png"))
    result = invoke("predict", trained, image)
    assert result.exit_code == 0, result.output


def test_a_crafted_pickle_never_runs_without_trust_pickle(trained, tmp_path):
    marker = tmp_path / "pwned"
    folder = swap_model(trained, tmp_path, "model.joblib")
    joblib.dump(_Payload(marker), folder / "model.joblib")
    image = next((trained.parents[4] / "photos").rglob("*.png"))

    refused = invoke("predict", folder, image)
    assert refused.exit_code == EXIT_ERROR
    [line] = refused.output.strip().splitlines()
    assert "is a pickle" in line and "--trust-pickle" in line
    assert not marker.exists()

    invoke("predict", folder, image, "--trust-pickle")  # the user's explicit choice
    assert marker.exists()


def test_a_skops_file_with_a_foreign_type_is_refused(trained, tmp_path):
    import functools

    import skops.io

    marker = tmp_path / "pwned"
    folder = swap_model(trained, tmp_path, "model.skops")
    skops.io.dump({"call": functools.partial(os.mkdir, str(marker))}, folder / "model.skops")
    image = next((trained.parents[4] / "photos").rglob("*.png"))

    refused = invoke("predict", folder, image)
    assert refused.exit_code == EXIT_ERROR
    [line] = refused.output.strip().splitlines()
    assert "types featurecache never writes" in line and "functools.partial" in line
    assert not marker.exists()


def test_a_keras_head_with_a_lambda_layer_is_refused(trained, tmp_path):
    from featurecache.deps import import_keras

    keras = import_keras()
    marker = tmp_path / "pwned"
    path = str(marker)
    inputs = keras.Input((1280,))
    outputs = keras.layers.Lambda(lambda x: x + float(open(path, "w").close() or 0))(inputs)
    marker.unlink()  # created once while building; loading must not create it again
    folder = swap_model(trained, tmp_path, "model.keras")
    keras.Model(inputs, outputs).save(folder / "model.keras")

    refused = invoke("predict", folder, next((trained.parents[4] / "photos").rglob("*.png")))
    assert refused.exit_code == EXIT_ERROR
    assert "Lambda layer" in refused.output and "safe_mode" in refused.output
    assert not marker.exists()


@pytest.mark.parametrize(
    ("name", "trusted"),
    [
        ("sklearn.tree._tree.Tree", True),  # what the registered heads hold
        ("sklearn.calibration._CalibratedClassifier", True),
        ("sklearn.neighbors._kd_tree.KDTree", True),
        ("sklearn.utils._testing.check_output", False),  # subprocess's, imported there
        ("sklearn.datasets._base.makedirs", False),  # os.makedirs, imported there
        ("functools.partial", False),
        ("sklearn.no_such_module.Thing", False),
    ],
)
def test_only_classes_defined_in_scikit_learn_are_trusted(name, trusted):
    from featurecache.heads.files import _sklearn_class

    assert _sklearn_class(name) is trusted
