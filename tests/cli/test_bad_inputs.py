"""Every kind of bad input: a clear message naming the file or key, and nothing lost.

One fixture folder holds good images beside every malformed one; extraction skips
each bad image with its reason, keeps every good one, and exits with code 3
("completed, some inputs skipped"). Errors that stop a run (a wrong path, one
class, an unknown backbone, a wrong HDF5 key, a malformed pipeline file) exit 1
with one line naming the thing at fault.
"""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from featurecache.cache import Cache
from featurecache.cli import app
from featurecache.errors import EXIT_ERROR, EXIT_PARTIAL
from tests.conftest import make_image

GOOD_PER_CLASS = 6
NON_UTF8 = os.fsdecode(b"caf\xe9-latin1.png")


def jpeg_bytes(side: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (90, 120, 150)).save(buf, "JPEG")
    return buf.getvalue()


def bomb_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buf, "PNG")  # 144 megapixels, a few kB
    return buf.getvalue()


#: file name -> (how to make it, words the skip reason must contain)
BAD = {
    "truncated.jpg": (lambda p: p.write_bytes(jpeg_bytes()[:300]), "corrupt or truncated"),
    "zero.jpg": (lambda p: p.write_bytes(b""), "empty file"),
    "text.jpg": (lambda p: p.write_text("just some notes"), "not an image format"),
    "vector.eps": (
        lambda p: p.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\nshowpage\n"),
        "unsupported image format",
    ),
    "bomb.png": (lambda p: p.write_bytes(bomb_bytes()), "decompression bomb"),
    "dangling.jpg": (lambda p: p.symlink_to(p.parent / "gone.jpg"), "cannot read file"),
}


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    """Good images in two classes, with every malformed image in class 'a'."""
    root = tmp_path_factory.mktemp("messy") / "messy"
    for c, color in (("a", (200, 0, 0)), ("b", (0, 0, 200))):
        for j in range(GOOD_PER_CLASS):
            make_image(root / c / f"{j}.png", color)
    make_image(root / "b" / "ünïcødé 猫.png", (0, 0, 180))
    make_image(root / "b" / NON_UTF8, (0, 0, 160))
    for name, (make, _) in BAD.items():
        make(root / "a" / name)
    return root


def extract(*args):
    return CliRunner().invoke(
        app, ["extract", *map(str, args), "--weights", "none", "--input-size", "32", "--json"]
    )


@pytest.fixture(scope="module")
def messy_run(messy, tmp_path_factory):
    cache = tmp_path_factory.mktemp("messy-cache") / "cache"
    return cache, extract("--data", messy, "--cache", cache)


def test_the_run_completes_keeps_the_good_images_and_exits_3(messy_run):
    cache, result = messy_run
    assert result.exit_code == EXIT_PARTIAL, result.output
    doc = json.loads(result.stdout)["extract"][0]
    assert doc["n_images"] == 2 * GOOD_PER_CLASS + 2
    assert len(doc["skipped"]) == len(BAD)


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_bad_image_is_skipped_with_its_reason(messy_run, name):
    _, result = messy_run
    skipped = {
        Path(s["source"]).name: s["reason"]
        for s in json.loads(result.stdout)["extract"][0]["skipped"]
    }
    assert name in skipped
    assert name in skipped[name] and BAD[name][1] in skipped[name]


def test_skipped_images_are_recorded_in_the_cache_and_info(messy_run):
    cache, _ = messy_run
    info = CliRunner().invoke(app, ["info", "--cache", str(cache)])
    assert info.exit_code == 0
    assert f"skipped    {len(BAD)} image(s)" in info.output
    for name in BAD:
        assert name in info.output


def test_unicode_and_non_utf8_file_names_are_extracted(messy_run):
    cache, result = messy_run
    group = json.loads(result.stdout)["extract"][0]["group"]
    sources = {Path(s).name for s in Cache(cache).read("messy", group).sources}
    assert "ünïcødé 猫.png" in sources
    assert "caf\\xe9-latin1.png" in sources  # undecodable byte kept as an escape


def test_rerun_over_bad_images_is_a_cache_hit(messy_run, messy):
    cache, _ = messy_run
    again = extract("--data", messy, "--cache", cache)
    assert again.exit_code == EXIT_PARTIAL
    assert json.loads(again.stdout)["extract"][0]["cache_hit"]


def fail(*args) -> str:
    result = CliRunner().invoke(app, list(map(str, args)))
    assert result.exit_code == EXIT_ERROR, result.output
    assert "Traceback" not in result.output
    return result.output.strip()


def test_empty_class_folder(messy, tmp_path):
    root = tmp_path / "d"
    make_image(root / "a" / "1.png", (1, 1, 1))
    make_image(root / "b" / "1.png", (2, 2, 2))
    (root / "empty_class").mkdir()
    assert "class folder(s) empty_class hold no image files" in fail(
        "extract", "--data", root, "--weights", "none", "--cache", tmp_path / "c"
    )


def test_a_data_set_with_one_class(tmp_path):
    make_image(tmp_path / "d" / "only" / "1.png", (1, 1, 1))
    assert "needs at least two classes" in fail(
        "extract", "--data", tmp_path / "d", "--weights", "none", "--cache", tmp_path / "c"
    )


def test_unknown_backbone(messy, tmp_path):
    assert "unknown backbone 'resnet5'" in fail(
        "extract", "--data", messy, "--backbone", "resnet5", "--cache", tmp_path / "c"
    )


def test_wrong_hdf5_key(datasets_dir, tmp_path):
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        f'[[datasets]]\nname = "cats"\n[datasets.hdf5.train]\n'
        f'path = "{datasets_dir}/catvnoncat/train_catvnoncat.h5"\nimages = "train_x"\n'
        'labels = "train_set_y"\n[[backbones]]\nname = "mobilenet_v2"\nweights = "none"\n'
    )
    message = fail("extract", pipeline, "--cache", tmp_path / "c")
    assert "no array 'train_x' for images" in message and "train_set_x" in message


def test_malformed_pipeline_names_key_and_line(tmp_path):
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        '[[datasets]]\nname = "x"\npath = "x"\n[[backbones]]\nname = "vgg16"\npooling = "average"\n'
    )
    message = fail("extract", pipeline)
    assert "p.toml:6" in message and "pooling must be one of" in message
    pipeline.write_text('[[datasets]]\nname = "x"\npath = "x"\nbatch = 3\n')
    assert "p.toml:4: unknown key 'batch' in datasets[0]" in fail("extract", pipeline)


def test_a_cache_under_a_regular_file_is_one_line_naming_the_path(messy, tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    cache = tmp_path / "notes.txt" / "cache"
    message = fail("extract", "--data", messy, "--weights", "none", "--cache", cache)
    assert message.count("\n") == 0
    assert str(cache) in message and "a part of the path is a regular file" in message


def unprivileged(command: list[str]) -> list[str]:
    """``command`` run without the power to write anywhere: root keeps CAP_DAC_OVERRIDE
    otherwise (so a read-only folder would not stop it); other users need nothing."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot drop CAP_DAC_OVERRIDE")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *command]


def test_a_cache_this_user_cannot_write_is_one_line_naming_the_path(messy, tmp_path):
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o555)
    cache = parent / "cache"
    command = [sys.executable, "-m", "featurecache", "extract", "--data", str(messy)]
    command += ["--weights", "none", "--input-size", "32", "--cache", str(cache)]
    try:
        done = subprocess.run(unprivileged(command), capture_output=True, text=True, timeout=300)
    finally:
        parent.chmod(0o755)
    assert done.returncode == EXIT_ERROR, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0
    assert str(cache) in done.stderr and "permission denied" in done.stderr
    assert not cache.exists()
