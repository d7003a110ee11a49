"""The runs folder's layout and the head records in it."""

import json
from pathlib import Path

import pytest

from featurecache.errors import ConfigError
from featurecache.runs import HeadRecord, RunLayout


def test_place_is_the_inverse_of_head_dir(tmp_path):
    layout = RunLayout(tmp_path / "runs", "clothing")
    folder = layout.head_dir("clothing_small", "mobilenet_v2-224px-avg-abc", "dense")
    assert RunLayout.place(folder) == (
        tmp_path / "runs",
        "clothing",
        "clothing_small",
        "mobilenet_v2-224px-avg-abc",
        "dense",
    )
    assert layout.finetune_dir("d", "g", "dense").name == "finetune-dense"
    assert layout.report() == tmp_path / "runs" / "clothing" / "report"


def test_records_round_trip_and_a_fine_tuned_model_is_told_apart(tmp_path):
    head = HeadRecord(tmp_path / "lr", {"name": "lr", "kind": "knn", "model_file": "m"}, {"a": 1})
    head.write()
    assert HeadRecord.read(tmp_path / "lr") == head and head.kind == "frozen"
    tuned = HeadRecord(tmp_path / "ft", {"kind": "finetuned", "model_file": "model.keras"})
    tuned.write()
    assert (tmp_path / "ft" / "finetune.json").is_file()
    assert not (tmp_path / "ft" / "head.json").exists()
    assert HeadRecord.read(tmp_path / "ft").kind == "finetuned"
    assert HeadRecord.read(tmp_path / "ft").name == "ft"


def test_a_stale_head_json_beside_finetune_json_is_not_read(tmp_path):
    """Older versions copied finetune.json to head.json; a later fine-tune rewrites only
    finetune.json, which must win."""
    folder = tmp_path / "finetune-dense"
    folder.mkdir()
    (folder / "head.json").write_text(json.dumps({"kind": "finetuned", "class_names": ["old"]}))
    (folder / "finetune.json").write_text(json.dumps({"kind": "finetuned", "class_names": ["new"]}))
    assert HeadRecord.read(folder).info["class_names"] == ["new"]


def test_a_folder_without_records(tmp_path):
    with pytest.raises(ConfigError, match="not a trained head"):
        HeadRecord.read(tmp_path)
    (tmp_path / "head.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        HeadRecord.read(tmp_path)
    assert HeadRecord.find(Path(tmp_path)) is None
