"""Every key of the README's commented pipeline example reaches what it configures.

The example is read from the README itself, with every commented ``# key = value`` line
uncommented, so a key added to the README without a check here fails this test. Each
value is then set to something other than its default (a dropped setting would look
exactly like a default one), the pipeline is run on small local data with random
weights, and each key is looked for where it must land: the extraction's provenance in
the cache, the heads' ``head.json``, or the loaded pipeline.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
import pytest
import tomli_w
import zarr
from typer.testing import CliRunner

from featurecache.cache import Cache
from featurecache.cli import app
from featurecache.config import load_pipeline
from tests.conftest import REPO, make_image, onnx_usable

#: The non-default value of every key of the example (``None``: keep the README's).
CHANGES = {
    "batch_size": 4,
    "datasets.0.split": {"validation": 0.2, "test": 0.25, "seed": 3},
    "datasets.0.classes": ["longsleeve", "t-shirt"],
    "datasets.0.resplit": True,
    "backbones.0.weights": "none",
    "backbones.0.pooling": "max",
    "backbones.0.input_size": 48,
    "backbones.0.args": {"alpha": 0.5},
    "backbones.0.engine": "onnxruntime" if onnx_usable() else "keras",
    "backbones.0.dtype": "float16",
    "backbones.0.finetune_from": "block_12_add",
    "backbones.0.taps": ["block_13_expand_relu"],
    "backbones.0.views": ["identity", "flip"],
    # fp32: a lower precision's features would fail the fine-tuning parity check below
    # (tests/extraction/test_precision.py runs bf16 and int8)
    "backbones.0.precision": "fp32",
    "backbones.0.decoder": "simplejpeg",
    "heads.0.name": "lr",
    "heads.0.params": {"C": 0.5, "max_iter": 300},
    "heads.0.search": {"C": [0.1, 1.0]},
    "heads.0.cv": 3,
    "heads.0.taps": ["block_13_expand_relu"],
    "heads.0.views": False,
    "finetune.head": "my_dense",
    "finetune.epochs": 3,
    "finetune.max_steps": 5,
    "finetune.batch_size": 8,
    "finetune.learning_rate": 1e-3,
    "finetune.momentum": 0.8,
    "finetune.patience": 2,
    "finetune.unfreeze": ["block_15_"],
    "finetune.augment.flip": "vertical",
    "finetune.augment.rotation": 0.1,
    "finetune.augment.zoom": 0.2,
    "finetune.augment.translation": 0.05,
    "finetune.source": "cache",
    "finetune.optimizer": "adam",
    "audit.threshold": 0.85,
    "audit.neighbours": 5,
    "audit.cv": 3,
    "audit.exact_at_most": 1000,
    "audit.map": "tsne",
    "audit.map_points": 100,
    "audit.thumbnails": 5,
    "audit.outliers": 0.01,
    "audit.seed": 1,
}


def readme_example() -> dict:
    """The README's commented pipeline example, every commented key uncommented."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```toml\n(name = .*?)```", readme, re.S).group(1)
    return tomllib.loads(re.sub(r"(?m)^# (\w+ = )", r"\1", block))


def flat(table: dict, prefix: str = "") -> dict[str, object]:
    """Every key as a dotted path: ``backbones.0.dtype``, ``finetune.augment.flip``..."""
    out = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, list) and value and isinstance(value[0], dict):
            for i, item in enumerate(value):
                out.update(flat(item, f"{path}.{i}."))
        elif isinstance(value, dict) and key in ("hdf5", "train", "augment", "finetune", "audit"):
            out.update(flat(value, f"{path}."))
        else:
            out[path] = value
    return out


def set_path(table: dict, path: str, value: object) -> None:
    *parents, last = path.split(".")
    for part in parents:
        table = table[int(part)] if part.isdigit() else table[part]
    table[last] = value


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The example with non-default values, its data made locally, run through `run`."""
    root = tmp_path_factory.mktemp("readme")
    for split, n in (("train", 6), ("test", 3)):
        for c, name in enumerate(("longsleeve", "t-shirt", "shirt")):
            for j in range(n):
                make_image(root / "clothing_small" / split / name / f"{j}.png", (80 * c, 90, 60))
    (root / "catvnoncat").mkdir()
    with h5py.File(root / "catvnoncat" / "train_catvnoncat.h5", "w") as fh:
        fh["train_set_x"] = np.random.default_rng(0).integers(0, 255, (12, 16, 16, 3), np.uint8)
        fh["train_set_y"] = np.arange(12) % 2
        fh["list_classes"] = [b"non-cat", b"cat"]
    raw = readme_example()
    for path, value in CHANGES.items():
        set_path(raw, path, value)
    raw.update(data_root=str(root), cache=str(root / "my-cache"), output=str(root / "my-runs"))
    path = root / "pipeline.toml"
    path.write_text(tomli_w.dumps(raw))
    result = CliRunner().invoke(app, ["run", str(path), "--json"])
    assert result.exit_code == 0, result.output
    return raw, path, json.loads(result.stdout)


def test_changes_name_keys_of_the_example():
    keys = flat(readme_example())
    assert set(CHANGES) <= set(keys), set(CHANGES) - set(keys)


def test_every_key_reaches_the_provenance_head_or_pipeline(example):
    raw, path, doc = example
    given = flat(raw)
    checked: set[str] = set()
    cache = Cache(raw["cache"])
    pipeline = load_pipeline(path)
    for i, extracted in enumerate(doc["extract"]):
        attrs = cache.attrs(extracted["dataset"], extracted["group"])
        stored = {**attrs["dataset"], "batch_size": attrs["batch_size"]}
        for key in [k for k in given if k.startswith(f"datasets.{i}.")]:
            field = key.split(".")[2]
            value = stored["hdf5"]["train"][key.split(".")[4]] if field == "hdf5" else stored[field]
            expected = given[key]
            if field == "path" or key.endswith(".path"):
                expected = str(Path(raw["data_root"]) / expected)
            assert value == expected, (key, value, expected)
            checked.add(key)
        for key in [k for k in given if k.startswith("backbones.0.")]:
            name = key.split(".")[2]
            # a default precision is not in the description; engine_settings records it
            recorded = attrs["backbone"].get(name, attrs["engine_settings"].get(name))
            assert recorded == given[key], key
            checked.add(key)
        assert attrs["batch_size"] == given["batch_size"]
        features = zarr.open_group(
            cache.current(extracted["dataset"], extracted["group"]), mode="r"
        )
        assert features["features"].dtype == np.float16
    checked |= {"batch_size", "data_root"}  # data_root: the data paths above resolve under it
    assert all(Path(e["folder"]).is_relative_to(raw["output"]) for e in doc["heads"])
    assert Path(raw["cache"], doc["extract"][0]["dataset"], doc["extract"][0]["group"]).is_dir()
    assert pipeline.name == raw["name"] and pipeline.cache == Path(raw["cache"])
    checked |= {"cache", "output", "name"}
    head = json.loads(Path(doc["heads"][0]["folder"], "head.json").read_text())
    assert (head["name"], head["kind"], head["params"]) == (
        given["heads.0.name"],
        given["heads.0.kind"],
        given["heads.0.params"],
    )
    assert head["search"]["grid_given"] == {**given["heads.0.search"], "search_samples": 0}
    assert head["search"]["cv"] == given["heads.0.cv"]
    assert (head["taps"], head["use_views"]) == (given["heads.0.taps"], given["heads.0.views"])
    assert head["views"] == ["identity"]  # flipped views cached, but this head declines them
    checked |= {k for k in given if k.startswith("heads.0.")}
    assert asdict(pipeline.references[0]) == raw["references"][0]
    checked |= {k for k in given if k.startswith("references.0.")}
    loaded = asdict(pipeline.finetune)
    for key in [k for k in given if k.startswith("finetune.")]:
        *_, field = key.split(".")
        value = loaded["augment"][field] if ".augment." in key else loaded[field]
        assert value == (tuple(given[key]) if field == "unfreeze" else given[key]), key
        checked.add(key)
    assert pipeline.audit is not None
    audit = asdict(pipeline.audit)
    for key in [k for k in given if k.startswith("audit.")]:
        assert audit[key.split(".")[1]] == given[key], key
        checked.add(key)
    assert set(given) == checked, (
        f"keys of the README example nothing checks: {set(given) - checked}"
    )
