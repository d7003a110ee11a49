from pathlib import Path

import pytest

from featurecache.config import (
    DATA_ROOT_ENV,
    load_pipeline,
    pipeline_from_options,
)
from featurecache.errors import ConfigError, UnknownBackboneError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


MINIMAL = """
name = "t"
[[datasets]]
name = "flat"
path = "flat"
[[backbones]]
name = "mobilenet_v2"
weights = "none"
"""


@pytest.mark.parametrize(
    "name", ["catvnoncat", "clothing", "clothing_sleeves", "fingers", "cifar10", "cub50"]
)
def test_shipped_pipelines_load_and_point_at_real_data(name, datasets_dir, monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    pipeline = load_pipeline(REPO / "pipelines" / f"{name}.toml")
    assert pipeline.backbones[0].name == "mobilenet_v2"
    assert pipeline.backbones[0].weights == "imagenet"
    dataset = pipeline.datasets[0]
    paths = [s.path for s in dataset.hdf5.values()] or [dataset.path]
    assert all(p.exists() for p in paths), paths
    assert {h.kind for h in pipeline.heads} >= {"logistic_regression"}
    assert pipeline.references and pipeline.description  # each reproduces a write-up


def test_data_root_option_and_environment(tmp_path, monkeypatch):
    path = write(tmp_path, MINIMAL)
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    assert load_pipeline(path).datasets[0].path == tmp_path / "flat"
    monkeypatch.setenv(DATA_ROOT_ENV, "/data/mine")
    assert load_pipeline(path).datasets[0].path == Path("/data/mine/flat")
    assert load_pipeline(path, data_root="/x").datasets[0].path == Path("/x/flat")


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("FEATURECACHE_CACHE", raising=False)
    pipeline = load_pipeline(write(tmp_path, MINIMAL))
    assert pipeline.cache == Path("cache")
    assert pipeline.heads[0].kind == "logistic_regression"
    assert pipeline.backbones[0].input_size == 224 and pipeline.backbones[0].pooling == "avg"
    assert pipeline.datasets[0].format == "folder"


def test_unknown_key_is_named_with_its_line(tmp_path):
    path = write(tmp_path, MINIMAL + "poolin = 'max'\n")
    with pytest.raises(ConfigError, match=r"p.toml:9: unknown key 'poolin'"):
        load_pipeline(path)


def test_toml_syntax_error_gives_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 3"):
        load_pipeline(write(tmp_path, 'name = "x"\n[[datasets]]\nname = \n'))


def test_unknown_backbone_in_file(tmp_path):
    path = write(tmp_path, MINIMAL.replace("mobilenet_v2", "resnet9000"))
    with pytest.raises(
        ConfigError, match=r"p.toml:7: backbones\[0\]: unknown backbone 'resnet9000'"
    ):
        load_pipeline(path)


def test_bad_split_ratio(tmp_path):
    path = write(tmp_path, MINIMAL.replace('path = "flat"', 'path = "flat"\nsplit = {test = 1.5}'))
    with pytest.raises(ConfigError, match="split.test must be a fraction"):
        load_pipeline(path)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_pipeline("nowhere.toml")


def test_options_build_the_same_kind_of_pipeline(tmp_path):
    pipeline = pipeline_from_options(
        data=[str(tmp_path)],
        backbones=["MobileNetV2"],
        heads=["knn"],
        weights="none",
        cache=tmp_path / "c",
    )
    assert pipeline.backbones[0].name == "mobilenet_v2"
    assert pipeline.heads[0].kind == "knn"
    assert pipeline.datasets[0].format == "folder"
    with pytest.raises(UnknownBackboneError):
        pipeline_from_options(data=[str(tmp_path)], backbones=["nope"], heads=[])
    with pytest.raises(ConfigError, match="--data"):
        pipeline_from_options(data=[], backbones=[], heads=[])


def test_search_references_classes_and_resplit(tmp_path):
    text = (
        MINIMAL.replace('path = "flat"', 'path = "flat"\nclasses = ["a", "b"]\nresplit = true')
        + """
[[heads]]
name = "lr"
kind = "logistic_regression"
search = { C = [0.1, 1.0] }
cv = 3
[[references]]
dataset = "flat"
source = "a write-up"
model = "an MLP"
value = 0.8
comparable = false
note = "other data"
"""
    )
    pipeline = load_pipeline(write(tmp_path, text))
    dataset = pipeline.datasets[0]
    assert dataset.classes == ("a", "b") and dataset.resplit
    assert dataset.describe()["classes"] == ["a", "b"]
    head = pipeline.heads[0]
    assert dict(head.search) == {"C": (0.1, 1.0)} and head.cv == 3
    ref = pipeline.references[0]
    assert (ref.value, ref.split, ref.comparable) == (0.8, "test", False)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[[heads]]\nkind = 'knn'\nsearch = { n_neighbors = [] }\n", "non-empty lists"),
        ("[[heads]]\nkind = 'knn'\ncv = 1\n", "cv must be an integer >= 2"),
        (
            "[[heads]]\nkind = 'knn'\ntaps = ['block_13_expand_relu']\n",
            r"heads\[0\]\.taps: no backbone caches all of \['block_13_expand_relu'\] "
            r"\('block_13_expand_relu' is in none\)",
        ),
        (
            "[[references]]\ndataset = 'other'\nsource = 's'\nmodel = 'm'\nvalue = 0.5\n",
            "not a data set of this pipeline",
        ),
        (
            "[[references]]\ndataset = 'flat'\nsource = 's'\nmodel = 'm'\nvalue = 80\n",
            r"top-1 accuracy in \[0, 1\]",
        ),
        ("[[references]]\ndataset = 'flat'\nmodel = 'm'\nvalue = 0.5\n", "needs a 'source'"),
        ("[finetune]\naugment = { zooom = 0.1 }\n", "unknown key 'zooom' in augment"),
        ("[finetune]\nmomentum = 2\n", r"momentum must be a number in \[0, 1\], got 2"),
    ],
)
def test_bad_search_or_reference_is_named_with_its_line(tmp_path, extra, message):
    path = write(tmp_path, MINIMAL + extra)
    with pytest.raises(ConfigError, match=message) as info:
        load_pipeline(path)
    assert str(info.value).startswith(f"{path}:")


@pytest.mark.parametrize(
    ("dataset", "message", "line"),
    [
        ('path = "flat"\nsplit = { valid = 0.1 }', "unknown key 'valid' in split", 4),
        ('format = "hdf5"', "needs [datasets.hdf5.<split>] tables", 3),
        ('hdf5 = { train = "a.h5" }', "hdf5.train must be a [datasets.hdf5.train] table", 3),
        ('path = "flat"\nsplit = { seed = 1.5 }', "split.seed must be an integer, got 1.5", 4),
    ],
)
def test_bad_data_set_tables_are_named_with_their_line(tmp_path, dataset, message, line):
    path = write(tmp_path, f'[[datasets]]\nname = "d"\n{dataset}\n[[backbones]]\nname = "vgg16"\n')
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    assert message in str(info.value) and str(info.value).startswith(f"{path}:{line}:")


@pytest.mark.parametrize(
    ("heads", "line"),
    [
        ('[[heads]]\nname = "h"\nkind = "knn"\n[[heads]]\nname = "h"\nkind = "dense"\n', 13),
        ('[[heads]]\nkind = "knn"\n[[heads]]\nkind = "knn"\nparams = { n_neighbors = 3 }\n', 11),
    ],
)
def test_two_heads_of_one_name_are_refused_with_the_line(tmp_path, heads, line):
    """Each head writes the folder its name names: a second one would overwrite it."""
    path = write(tmp_path, MINIMAL + heads)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: heads[0] and heads[1] are both named ")
    assert 'give each [[heads]] table its own name = "..."' in message
    assert "\n" not in message
