"""The configuration dataclasses keep every setting they are given, however they are built."""

from dataclasses import fields

import pytest

from featurecache.config import (
    BackboneConfig,
    DatasetConfig,
    Hdf5Source,
    Pipeline,
    pipeline_from_options,
)
from featurecache.errors import ConfigError

SETTINGS = {
    "name": "mobilenet",
    "weights": "none",
    "input_size": 96,
    "pooling": "max",
    "args": {"alpha": 0.25},
    "engine": "onnxruntime",
    "dtype": "float16",
    "finetune_from": "conv_pw_11_relu",
    "taps": ("conv_pw_12_relu",),
    "views": ("identity", "flip"),
    "precision": "int8",
    "decoder": "simplejpeg",
    "guard_median": 0.99,  # the defaults: the guard is not part of the description
    "guard_min": 0.9,
}
#: pipeline files only, no CLI options
CACHE_SETTINGS = ("finetune_from", "taps", "views", "guard_median", "guard_min")


def test_a_backbone_keeps_every_setting_through_replace_and_its_description():
    config = BackboneConfig(**SETTINGS)
    assert {f.name: getattr(config, f.name) for f in fields(config)} == SETTINGS
    assert config.replace(pooling="avg").dtype == "float16"
    assert BackboneConfig.from_description(config.describe()) == config


def test_options_and_overrides_keep_every_backbone_setting(tmp_path):
    pipeline = pipeline_from_options(
        data=[str(tmp_path)],
        backbones=["MobileNet"],
        **{k: v for k, v in SETTINGS.items() if k not in ("name", "args", *CACHE_SETTINGS)},
    )
    [backbone] = pipeline.backbones
    assert (backbone.dtype, backbone.engine, backbone.pooling) == ("float16", "onnxruntime", "max")
    overridden = pipeline.with_overrides(engine="auto", batch_size=8)
    assert overridden.batch_size == 8
    assert overridden.backbones[0] == backbone.replace(engine="auto")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"dtype": "float64"}, r"dtype must be one of \('float32', 'float16'\), got 'float64'"),
        ({"input_size": 8}, "input_size must be an integer number of pixels >= 32, got 8"),
        ({"input_size": True}, "input_size must be"),
        ({"args": [1]}, "args must be a table"),
    ],
)
def test_a_bad_backbone_setting_names_the_field(settings, message):
    with pytest.raises(ConfigError, match=message) as info:
        BackboneConfig(name="vgg16", **settings)
    assert info.value.key == next(iter(settings))


def test_data_sets_guess_their_format_and_check_it(tmp_path):
    assert DatasetConfig(name="d", path=tmp_path / "m.csv").format == "csv"
    assert DatasetConfig(name="d", path=str(tmp_path)).format == "folder"
    with pytest.raises(ConfigError, match="needs a 'path' key"):
        DatasetConfig(name="d")
    with pytest.raises(ConfigError, match="split.test must be a fraction in"):
        DatasetConfig(name="d", path=tmp_path, split={"test": 1.5})


@pytest.mark.parametrize(
    "settings",
    [
        {"path": "photos", "classes": ["a", "b"], "resplit": True, "split": {"test": 0.3}},
        {"path": "table.csv"},
        {
            "hdf5": {
                "train": {"path": "t.h5", "images": "x", "labels": "y", "classes": "names"},
                "test": {"path": "u.h5", "images": "x", "labels": "y"},
            }
        },
    ],
)
def test_a_data_set_is_rebuilt_from_the_description_a_cache_records(tmp_path, settings):
    if "hdf5" in settings:
        settings["hdf5"] = {
            split: Hdf5Source(**{**s, "path": tmp_path / s["path"]})
            for split, s in settings["hdf5"].items()
        }
    else:
        settings["path"] = tmp_path / settings["path"]
    config = DatasetConfig(name="d", **settings)
    recorded = {**config.describe(), "fingerprint": "0" * 32}  # as a generation holds it
    assert DatasetConfig.from_description(recorded) == config


def test_a_reference_must_name_a_data_set_of_the_pipeline(tmp_path):
    from featurecache.config import Reference

    dataset = DatasetConfig(name="d", path=tmp_path)
    ref = Reference(dataset="other", source="s", model="m", value=0.5)
    with pytest.raises(ConfigError, match=r"references\[0\].dataset 'other' is not a data set"):
        Pipeline(
            name="p",
            datasets=(dataset,),
            backbones=(BackboneConfig(name="vgg16"),),
            references=(ref,),
        )
