"""HEIC/HEIF (the iPhone's default) and AVIF photos are images, upright, like JPEGs.

The files are made here from a real camera photo (photos_hires: an iPhone 6 JPEG,
downscaled) with pillow-heif and Pillow's AVIF encoder, with an EXIF orientation that
says "rotate 90 degrees to view". Where the plugin is missing (a process that cannot
import pillow_heif), the file is listed and skipped with the reason, not ignored.
"""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from featurecache.datasets.files import image_files
from featurecache.images import decode_bytes, register_plugins
from tests.conftest import DATASETS, make_image

PHOTO = DATASETS / "photos_hires" / "camera_Apple_iPhone_6.jpg"
SIZE = 96


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    if not PHOTO.is_file():
        pytest.skip(f"{PHOTO} is not present")
    with Image.open(PHOTO) as image:
        image.draft("RGB", (400, 300))
        return image.convert("RGB").resize((400, 300))


def encoded(image: Image.Image, fmt: str, orientation: int = 1) -> bytes:
    register_plugins()
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, format=fmt, exif=exif.tobytes(), quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heic_and_avif_decode_upright_like_the_same_jpeg(photo, fmt):
    reference = decode_bytes(encoded(photo, "JPEG", 6), SIZE).astype(float)
    pixels = decode_bytes(encoded(photo, fmt, 6), SIZE, source=f"photo.{fmt.lower()}")
    assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.uint8
    same = np.abs(pixels - reference).mean()
    unrotated = np.abs(decode_bytes(encoded(photo, "JPEG"), SIZE) - reference).mean()
    assert same < 6, same  # lossy codecs differ a little, never by a rotation
    assert unrotated > 4 * same, (same, unrotated)


def test_a_folder_of_iphone_photos_extracts(photo, tmp_path):
    root = tmp_path / "iphone"
    for label, turn in (("upright", 0), ("turned", 90)):
        for i in range(4):
            crop = photo.rotate(turn).crop((i * 10, 0, 300 + i * 10, 200))
            (root / label).mkdir(parents=True, exist_ok=True)
            (root / label / f"IMG_{i:04d}.HEIC").write_bytes(encoded(crop, "HEIF"))
    assert len(image_files(root)) == 8
    # a new process, as a user's: nothing registered by this test process helps it
    done = subprocess.run(
        [
            sys.executable, "-m", "featurecache", "extract", "--data", str(root),
            "--weights", "none", "--input-size", "32", "--cache", str(tmp_path / "cache"),
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "8 computed" in done.stdout and "skipped" not in done.stdout


def test_without_the_plugin_heic_files_are_skipped_with_the_reason(photo, tmp_path):
    folder = tmp_path / "photos"
    make_image(folder / "a" / "one.png", (200, 30, 30))
    make_image(folder / "b" / "two.png", (30, 30, 200))
    (folder / "a" / "IMG_0001.HEIC").write_bytes(encoded(photo, "HEIF"))
    script = (
        "import sys; sys.modules['pillow_heif'] = None\n"  # as if it were not installed
        "from pathlib import Path\n"
        "from featurecache.datasets.files import image_files\n"
        "from featurecache.errors import ImageDecodeError\n"
        "from featurecache.images import decode_bytes\n"
        f"files = image_files(Path({str(folder)!r}))\n"
        "print(len(files))\n"
        "heic = [f for f in files if f.suffix == '.HEIC'][0]\n"
        "try:\n"
        "    decode_bytes(heic.read_bytes(), 32, source=str(heic))\n"
        "except ImageDecodeError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    count, reason = done.stdout.strip().splitlines()
    assert count == "3"  # listed, not ignored
    assert reason.endswith("IMG_0001.HEIC: HEIC/HEIF image, and pillow-heif is not installed: "
                           "pip install pillow-heif")  # fmt: skip


def test_an_avif_file_pillow_cannot_read_names_the_upgrade():
    from featurecache.images import _missing_plugin

    fake = b"\0\0\0\x1cftypavif" + b"\0" * 20
    assert "pip install -U 'pillow>=11.3'" in _missing_plugin(fake)
    assert _missing_plugin(b"\x89PNG\r\n\x1a\n") is None
