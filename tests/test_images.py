import io
import sys

import numpy as np
import pytest
from PIL import Image

from featurecache.errors import ImageDecodeError
from featurecache.images import (
    MAX_PIXELS,
    array_to_rgb,
    content_key,
    decode_bytes,
    to_rgb,
)


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (20, 10), 128),
        Image.new("LA", (20, 10), (128, 255)),
        Image.new("P", (20, 10), 3),
        Image.new("RGBA", (20, 10), (10, 20, 30, 255)),
        Image.new("CMYK", (20, 10), (0, 0, 0, 0)),
        Image.new("I;16", (20, 10), 40000),
        Image.new("1", (20, 10), 1),
    ],
    ids=lambda im: im.mode,
)
def test_every_mode_becomes_uint8_rgb(image):
    pixels = decode_bytes(encode(image, "TIFF" if image.mode == "CMYK" else "PNG"), 16)
    assert pixels.shape == (16, 16, 3)
    assert pixels.dtype == np.uint8


def test_gray_16_bit_scales_full_range_to_8_bit():
    image = Image.new("I;16", (4, 4), 65535)
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("I;16", (4, 4), 0)).getpixel((0, 0)) == (0, 0, 0)


def test_transparency_is_composited_on_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_white_is_rgb_white():
    assert to_rgb(Image.new("CMYK", (2, 2), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    data = encode(image, "JPEG", exif=exif.tobytes(), quality=95)
    pixels = decode_bytes(data, 40)
    # After rotating 90 degrees clockwise the white half is on top.
    assert pixels[:15].mean() > 200
    assert pixels[-15:].mean() < 50


def test_resize_is_bilinear_stretch_to_square():
    image = Image.new("RGB", (100, 50), (10, 200, 30))
    pixels = decode_bytes(encode(image), 32)
    assert pixels.shape == (32, 32, 3)
    np.testing.assert_array_equal(pixels[16, 16], [10, 200, 30])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is a text file, not an image", "not an image format"),
    ],
)
def test_undecodable_bytes_name_the_file(data, reason):
    with pytest.raises(ImageDecodeError, match=rf"photo\.jpg: .*{reason}"):
        decode_bytes(data, 8, source="photo.jpg")


def test_truncated_jpeg_is_a_clear_error():
    data = encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    with pytest.raises(ImageDecodeError, match="cut.jpg: corrupt or truncated"):
        decode_bytes(data[: len(data) // 2], 8, source="cut.jpg")


@pytest.mark.parametrize("factor", [1.01, 2.5])
def test_oversized_image_is_refused_before_decoding(factor):
    side = int((MAX_PIXELS * factor) ** 0.5) + 10
    data = encode(Image.new("1", (side, side)), "PNG")  # tiny file, huge canvas
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_bytes(data, 8, source="bomb.png")


def test_content_key_depends_on_bytes_and_array_shape():
    assert content_key(b"abc") == content_key(b"abc")
    assert content_key(b"abc") != content_key(b"abd")
    flat = np.zeros((4, 4, 3), np.uint8)
    assert content_key(flat) != content_key(flat.reshape(8, 2, 3))
    assert len(content_key(b"x")) == 32


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 1), (8, 8, 3), (8, 8, 4)])
def test_arrays_of_any_channel_count_become_rgb(shape):
    assert array_to_rgb(np.full(shape, 7, np.uint8), 4).shape == (4, 4, 3)


def test_uint16_arrays_scale_to_8_bit():
    out = array_to_rgb(np.full((4, 4), 65535, np.uint16), 4)
    assert out.max() == 255 and out.dtype == np.uint8


def test_array_with_wrong_shape_is_refused():
    with pytest.raises(ImageDecodeError, match="not an image"):
        array_to_rgb(np.zeros((4, 4, 7), np.uint8), 4, source="x.h5[3]")


def test_large_jpegs_are_decoded_reduced_with_almost_the_same_pixels():
    """Image.draft: libjpeg's DCT scaling for a JPEG >= 2x the target, then the resize."""
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (30, 40, 3)), np.ones((40, 40, 1))).astype(np.uint8)
    data = encode(Image.fromarray(smooth), "JPEG", quality=95)  # 1600 x 1200
    reduced = decode_bytes(data, 224)
    with Image.open(io.BytesIO(data)) as image:
        full = np.asarray(image.convert("RGB").resize((224, 224), Image.BILINEAR))
    assert reduced.shape == (224, 224, 3)
    assert np.abs(reduced.astype(int) - full.astype(int)).mean() < 3.0


def test_simplejpeg_decodes_photos_close_to_pillow_and_is_never_silently_pillow(monkeypatch):
    """A 400x700 JPEG decodes at 5/8 scale by simplejpeg (a slightly different image,
    same size); without simplejpeg the decoder says so instead of using Pillow."""
    from featurecache.errors import DependencyError

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (700, 400, 3), dtype=np.uint8))
    data = encode(image, "JPEG")
    pillow = decode_bytes(data, 224)
    fast = decode_bytes(data, 224, decoder="simplejpeg")
    assert fast.shape == pillow.shape == (224, 224, 3)
    assert 0 < np.abs(fast.astype(int) - pillow).mean() < 40
    monkeypatch.setitem(sys.modules, "simplejpeg", None)
    with pytest.raises(DependencyError, match="featurecache\\[simplejpeg\\]"):
        decode_bytes(data, 224, decoder="simplejpeg")
