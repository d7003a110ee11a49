"""The Keras backend: how featurecache reads it, and how it enters the cache's recipe.

The backends themselves run in tests/test_backends.py, each in a process of its own;
here the backend is only read or stood in for, so these tests run under any backend.
"""

import json
import sys
import types

import pytest

from featurecache import deps
from featurecache.cache import recipe
from featurecache.config import BackboneConfig
from featurecache.errors import ConfigError, DependencyError, EngineError


def test_the_backend_is_read_the_way_keras_reads_it(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "keras", raising=False)  # as before Keras is imported
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert deps.backend() == "jax"
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "torch", "floatx": "float32"}))
    assert deps.backend() == "jax"  # the variable wins over keras.json, as in Keras
    monkeypatch.delenv("KERAS_BACKEND")
    assert deps.backend() == "torch"
    (tmp_path / "keras.json").write_text("{not json")
    assert deps.backend() == "tensorflow"
    (tmp_path / "keras.json").unlink()
    assert deps.backend() == "tensorflow"
    # once Keras is imported, its own answer
    config = types.SimpleNamespace(backend=lambda: "torch")
    monkeypatch.setitem(sys.modules, "keras", types.SimpleNamespace(config=config))
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert deps.backend() == "torch"


@pytest.mark.parametrize(
    ("backend", "devices", "cuda", "expected"),
    [
        ("tensorflow", ["cpu:0"], False, False),
        ("jax", ["gpu:0", "gpu:1"], False, True),
        ("torch", None, True, True),
        ("torch", None, False, False),
    ],
)
def test_the_gpu_is_asked_of_keras_or_of_torch_as_keras_does(
    monkeypatch, backend, devices, cuda, expected
):
    def list_devices():
        assert backend != "torch", "the PyTorch backend has no keras.distribution"
        return devices

    keras = types.SimpleNamespace(
        config=types.SimpleNamespace(backend=lambda: backend),
        distribution=types.SimpleNamespace(list_devices=list_devices),
    )
    torch = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: cuda))
    monkeypatch.setattr(deps, "import_keras", lambda: keras)
    monkeypatch.setitem(sys.modules, "torch", torch)
    assert deps.gpu_available() is expected


def test_an_unsupported_backend_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(deps, "backend", lambda: "numpy")
    with pytest.raises(DependencyError, match="'numpy' is not supported.*tensorflow, jax, torch"):
        deps.import_keras()


@pytest.mark.parametrize(
    ("backend", "requested", "recorded"),
    [
        ("tensorflow", "keras", "tensorflow"),
        ("tensorflow", "auto", "auto"),
        ("tensorflow", "onnxruntime", "onnxruntime"),
        ("jax", "keras", "jax"),
        ("jax", "auto", "jax"),
        ("torch", "keras", "torch"),
    ],
)
def test_the_engine_is_recorded_as_the_backend_that_runs_it(
    monkeypatch, backend, requested, recorded
):
    monkeypatch.setattr(recipe, "backend", lambda: backend)
    assert recipe.recorded_engine(requested) == recorded
    if requested != "auto":
        assert recipe.requested_engine(recorded) == requested


def test_the_engines_older_spelling_is_mapped_once_where_the_configuration_is_made():
    old = BackboneConfig(name="mobilenet_v2", weights="none", engine="tensorflow")
    assert old.engine == "keras"
    assert old == BackboneConfig(name="mobilenet_v2", weights="none", engine="keras")
    with pytest.raises(ConfigError, match="engine.*'auto', 'keras', 'onnxruntime'"):
        BackboneConfig(name="mobilenet_v2", weights="none", engine="torch")


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_onnxruntime_on_another_backend_says_so_in_one_line(monkeypatch, backend):
    monkeypatch.setattr(recipe, "backend", lambda: backend)
    with pytest.raises(EngineError) as caught:
        recipe.recorded_engine("onnxruntime")
    message = str(caught.value)
    assert "\n" not in message and f"the Keras backend is {backend}" in message
    assert "use engine 'keras'" in message


def test_the_backend_and_its_version_are_part_of_the_request(monkeypatch):
    config = BackboneConfig(name="mobilenet_v2", weights="none")
    installed = {"tensorflow": "2.21.0", "jax": "0.10.2", "torch": "2.13.0"}
    monkeypatch.setattr(recipe, "backend", lambda: "tensorflow")
    monkeypatch.setattr(recipe, "backend_version", lambda name: installed[name])
    monkeypatch.setattr(recipe, "package_version", lambda name: "3.15.1")
    # The request as featurecache wrote it before backends were configurable (c1075d7's
    # recipe.request, spelled out): TensorFlow caches keep their groups.
    before = {
        "recipe_version": 1,
        "backbone": {**config.describe(), "engine": "tensorflow"},
        "resize": "pillow-jpeg-draft-bilinear-stretch",
        "versions": {"keras": "3.15.1", "tensorflow": "2.21.0"},
    }
    assert recipe.request(config) == before
    assert recipe.request_hash(config) == recipe._hash(before)
    assert recipe.request_hash(config) == recipe.request_hash(config.replace(engine="tensorflow"))

    hashes = {recipe.request_hash(config)}
    for backend in ("jax", "torch"):
        monkeypatch.setattr(recipe, "backend", lambda b=backend: b)
        request = recipe.request(config)
        assert request["versions"] == {"keras": "3.15.1", backend: installed[backend]}
        assert request["backbone"]["engine"] == backend
        assert recipe.versions()["backend"] == backend
        hashes.add(recipe.request_hash(config))
    assert len(hashes) == 3
    # what `gc` keeps: the hashes on every backend, and ONNX Runtime's on TensorFlow only
    assert recipe.request_hashes(config) == hashes
    assert len(recipe.request_hashes(config.replace(engine="onnxruntime"))) == 1
