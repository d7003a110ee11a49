"""Property-based tests (hypothesis): whatever the input, a clear error, never a traceback.

- Random pipeline files (TOML documents built from featurecache's own keys with values
  of every type, and raw text) either load or raise a :class:`ConfigError`.
- Random bytes and real encoded images truncated or corrupted anywhere either decode
  to ``(size, size, 3)`` uint8 or raise an :class:`ImageDecodeError`.
- A real extraction into a cache with a committed generation, with such files added,
  exits 0 or 3 with one line per skipped file, and leaves every committed generation's
  files byte for byte as they were.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from featurecache.config import load_pipeline
from featurecache.config.load import PIPELINE_KEYS
from featurecache.errors import EXIT_OK, EXIT_PARTIAL, ConfigError, ImageDecodeError
from featurecache.images import decode_bytes, register_plugins
from tests.conftest import invoke, make_image

DATASET_KEYS = ("name", "path", "format", "split", "hdf5", "classes", "resplit", "images")
BACKBONE_KEYS = ("name", "weights", "pooling", "input_size", "engine", "dtype", "args", "taps")
HEAD_KEYS = ("name", "kind", "params", "search", "cv", "taps", "views")
FINETUNE_KEYS = ("head", "epochs", "learning_rate", "unfreeze", "augment", "source", "seed")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["mobilenet_v2", "imagenet", "none", "avg", "dense", "../x", "", "hub:x"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def table(keys: tuple[str, ...]) -> st.SearchStrategy[dict]:
    known = st.dictionaries(st.sampled_from(keys), values, max_size=len(keys))
    return st.one_of(known, st.dictionaries(st.text(max_size=8), values, max_size=3))


documents = st.fixed_dictionaries(
    {},
    optional={
        **{key: values for key in PIPELINE_KEYS},
        "datasets": st.one_of(st.lists(table(DATASET_KEYS), max_size=2), values),
        "backbones": st.one_of(st.lists(table(BACKBONE_KEYS), max_size=2), values),
        "heads": st.lists(table(HEAD_KEYS), max_size=2),
        "finetune": st.one_of(table(FINETUNE_KEYS), values),
    },
)


def _toml(document: dict) -> str | None:
    def clean(value):  # TOML has no null: leave such keys out
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [clean(v) for v in value if v is not None]
        return value

    try:
        return tomli_w.dumps(clean(document))
    except (TypeError, ValueError):  # a list mixing tables and values, ...: not TOML
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents, raw=st.one_of(st.none(), st.text(max_size=200)))
def test_any_pipeline_file_loads_or_is_a_config_error(tmp_path_factory, document, raw):
    text = raw if raw is not None else _toml(document)
    if text is None:
        return
    path = tmp_path_factory.mktemp("toml") / "p.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_pipeline(path, data_root=path.parent)
    except ConfigError as exc:
        assert str(exc).startswith(str(path)), exc  # names the file
        assert "\n" not in str(exc).strip() or "Traceback" not in str(exc)


def _encodings() -> list[bytes]:
    register_plugins()
    image = Image.new("RGB", (48, 32))
    image.paste((220, 40, 40), (0, 0, 24, 32))
    out = []
    for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "HEIF", "AVIF"):
        buf = io.BytesIO()
        image.save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


ENCODED = _encodings()
damaged_images = st.one_of(
    st.binary(max_size=2048),
    st.builds(
        lambda data, cut: data[: max(1, int(len(data) * cut))],
        st.sampled_from(ENCODED),
        st.floats(0, 1),
    ),
    st.builds(
        lambda data, where, byte: data[:where] + bytes([byte]) + data[where + 1 :],
        st.sampled_from(ENCODED),
        st.integers(0, 400),
        st.integers(0, 255),
    ),
)


@settings(max_examples=400, deadline=None)
@given(data=damaged_images, size=st.sampled_from([16, 32]))
@example(data=ENCODED[6][: len(ENCODED[6]) * 3 // 4], size=16)  # pillow-heif: EOFError
@example(data=ENCODED[7][: len(ENCODED[7]) // 3], size=16)  # Pillow's AVIF: RuntimeError
def test_any_bytes_decode_or_are_an_image_decode_error(data, size):
    try:
        pixels = decode_bytes(data, size, source="x.img")
    except ImageDecodeError as exc:
        assert str(exc).startswith("x.img: ")
    else:
        assert pixels.shape == (size, size, 3) and pixels.dtype == np.uint8


def _generation_files(cache: Path) -> dict[str, str]:
    return {
        str(p.relative_to(cache)): hashlib.blake2b(p.read_bytes()).hexdigest()
        for p in sorted(cache.glob("*/*/gen-*/**/*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    root = tmp_path_factory.mktemp("prop")
    for i in range(6):
        make_image(root / "photos" / f"c{i % 2}" / f"{i}.png", (40 * i, 80, 120), pattern=i % 2)
    args = ["--data", root / "photos", "--weights", "none", "--input-size", 32]
    result = invoke("extract", *args, "--cache", root / "cache")
    assert result.exit_code == EXIT_OK, result.output
    return root, args


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(files=st.lists(damaged_images, min_size=1, max_size=3))
def test_bad_files_never_change_a_committed_generation(committed, tmp_path, files):
    root, args = committed
    work = tmp_path / "w"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(root, work, symlinks=True)
    before = _generation_files(work / "cache")
    for i, data in enumerate(files):
        (work / "photos" / "c0" / f"bad{i}.jpg").write_bytes(data)
    args = [str(a).replace(str(root), str(work)) for a in args]
    result = invoke("extract", *args, "--cache", work / "cache")
    assert result.exit_code in (EXIT_OK, EXIT_PARTIAL), result.output
    assert "Traceback" not in result.output
    after = _generation_files(work / "cache")
    assert {k: after.get(k) for k in before} == before  # the old generation, untouched
