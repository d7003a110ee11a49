"""Decoding and resizing images: bytes or arrays in, ``uint8`` RGB squares out.

No model code lives here. Every image, whatever its mode, becomes RGB the same way:

* EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), so a phone photo
  taken sideways is seen upright.
* Palette (``P``), grayscale (``L``), ``CMYK``, ``YCbCr`` and the like convert with
  Pillow's own ``convert("RGB")``. Transparent images (``RGBA``, ``LA``, ``P`` with
  transparency) are composited onto a white background first, so that transparent
  pixels do not turn black.
* 16- and 32-bit integer images (``I;16``, ``I``) are scaled linearly from their
  full range (0-65535) to 0-255 before conversion; float images (``F``) are
  clipped to 0-255.
* Resizing is Pillow's ``Image.resize(size, Image.BILINEAR)``, which antialiases
  when it shrinks (its filter support grows with the reduction factor). The image
  is stretched to the backbone's square input without keeping its aspect ratio,
  as ``keras.utils.image_dataset_from_directory`` does by default.
* HEIC/HEIF photos (the iPhone's default) decode through the pillow-heif plugin, which
  applies the container's rotation (and resets the EXIF orientation, so it is not
  applied twice); AVIF through Pillow's own AVIF support (Pillow >= 11.3 wheels), EXIF
  orientation applied as for JPEG. Without the plugin such a file is skipped with the
  reason and the ``pip install`` that fixes it (:func:`register_plugins`).
* A JPEG at least twice the target size in both sides is decoded reduced
  (Pillow's ``Image.draft``: libjpeg's DCT scaling by 1/2, 1/4 or 1/8, never below
  the target size) before that resize, which makes decoding large photos several
  times faster for a negligible change in pixels.

* With ``decoder = "simplejpeg"`` (a backbone's opt-in setting,
  :data:`featurecache.config.constraints.DECODERS`), a JPEG in RGB or grayscale with
  no EXIF rotation is decoded by simplejpeg (libjpeg-turbo), DCT-downscaled to the
  smallest eighth of its size that keeps both sides at or above the target
  (:func:`_simplejpeg`), then resized by Pillow as above. Every other file (PNG, a
  CMYK or rotated JPEG, anything simplejpeg refuses) follows Pillow's path, so the
  rules above hold for all. A JPEG under twice the target then decodes at fewer pixels
  than Pillow's, so the pixels differ slightly and the decoder is part of the recipe.

The resize method is part of the extraction recipe (:data:`RESIZE_METHOD`), and so is
the decoder: change either and the cache puts the features in a new group.
"""

from __future__ import annotations

import hashlib
import io
import logging

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from featurecache.errors import DependencyError, ImageDecodeError

log = logging.getLogger(__name__)

RESIZE_METHOD = "pillow-jpeg-draft-bilinear-stretch"
#: EXIF tag of the orientation (``PIL.ExifTags.Base.Orientation``).
_ORIENTATION = 0x0112

#: Suffixes of formats that need a plugin or a recent Pillow: listed as images even
#: where that is missing, so that each such file is skipped with the reason, not ignored.
PLUGIN_SUFFIXES = {".heic", ".heif", ".hif", ".avif", ".avifs"}
#: ISO base media file brands (bytes 8-12, after ``ftyp``) -> what decodes them.
_BRANDS = {
    **dict.fromkeys(
        (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1"),
        "HEIC/HEIF image, and pillow-heif is not installed: pip install pillow-heif",
    ),
    **dict.fromkeys(
        (b"avif", b"avis"),
        "AVIF image, and this Pillow cannot decode AVIF: pip install -U 'pillow>=11.3'",
    ),
}
_plugins_registered = False

#: Images with more pixels than this are refused as possible decompression bombs.
#: Pillow's own default limit (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 megapixels).
MAX_PIXELS = 89_478_485

_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
#: Pillow's words when it knows a format but lacks the codec or helper to decode it.
_UNSUPPORTED_HINTS = ("not available", "Ghostscript", "not supported", "unsupported")


def content_key(data: bytes | np.ndarray) -> str:
    """Stable key of one image: BLAKE2b (16-byte digest) of its bytes, as 32 hex digits.

    For an array (an HDF5 row), the dtype and shape are hashed with the pixels, so
    two arrays with equal bytes but different shapes get different keys.
    """
    digest = hashlib.blake2b(digest_size=16)
    if isinstance(data, np.ndarray):
        digest.update(f"{data.dtype.str}{data.shape}".encode())
        digest.update(np.ascontiguousarray(data).tobytes())
    else:
        digest.update(data)
    return digest.hexdigest()


def register_plugins() -> None:
    """Register pillow-heif's HEIF opener with Pillow (once; nothing if not installed)."""
    global _plugins_registered
    if _plugins_registered:
        return
    _plugins_registered = True
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        log.info("pillow-heif is not installed: HEIC/HEIF images will be skipped")
        return
    register_heif_opener()


def _missing_plugin(data: bytes) -> str | None:
    """Why an image Pillow did not recognise cannot be read here, if a plugin would read it."""
    if data[4:8] == b"ftyp":
        return _BRANDS.get(data[8:12])
    return None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a Pillow image of any mode to 8-bit RGB (see the module docstring)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in _TRANSPARENT_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I"):
        pixels = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0 if pixels.max(initial=0) > 255 or mode != "I" else 1.0
        gray = np.clip(pixels * scale, 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "F":
        gray = np.clip(np.asarray(image), 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    return image.convert("RGB")


def resize(image: Image.Image, size: int) -> np.ndarray:
    """Resize to ``(size, size)`` and return ``uint8`` pixels of shape ``(size, size, 3)``."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def decode_bytes(
    data: bytes, size: int, *, source: str = "<bytes>", decoder: str = "pillow"
) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ...) to RGB pixels of shape ``(size, size, 3)``,
    uint8; ``decoder``: ``"pillow"`` or ``"simplejpeg"`` (see the module docstring).

    Raises
    ------
    ImageDecodeError
        If the bytes are empty, not an image Pillow knows, truncated or corrupt, or
        larger than :data:`MAX_PIXELS`. The message names ``source`` and the reason.
    DependencyError
        For ``decoder = "simplejpeg"`` without simplejpeg installed.
    """
    if not data:
        raise ImageDecodeError(f"{source}: empty file (0 bytes)")
    register_plugins()
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageDecodeError(
                    f"{source}: {width}x{height} pixels exceeds the {MAX_PIXELS:,}-pixel "
                    "limit (possible decompression bomb); downscale the file"
                )
            if decoder == "simplejpeg" and _plain_jpeg(image):
                fast = _simplejpeg(data, size)
                if fast is not None:
                    return resize(Image.fromarray(fast), size)
            if image.format == "JPEG":
                image.draft("RGB", (size, size))  # no-op unless >= 2x the target
            image.load()
            # in place: no copy of the whole image when there is nothing to turn
            ImageOps.exif_transpose(image, in_place=True)
            return resize(to_rgb(image), size)
    except (ImageDecodeError, DependencyError):
        raise
    except UnidentifiedImageError as exc:
        missing = _missing_plugin(data)
        if missing:
            raise ImageDecodeError(f"{source}: {missing}") from exc
        raise ImageDecodeError(f"{source}: not an image format Pillow can read") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"{source}: refused as a decompression bomb: {exc}") from exc
    except Exception as exc:  # noqa: BLE001  decoder plugins raise anything on bad bytes
        # (OSError, SyntaxError, RuntimeError from the AVIF decoder, EOFError from
        # pillow-heif's...): the bytes are not an image we can read, never a traceback
        if any(hint in str(exc) for hint in _UNSUPPORTED_HINTS):
            raise ImageDecodeError(
                f"{source}: unsupported image format here ({exc}); convert it to JPEG or PNG"
            ) from exc
        raise ImageDecodeError(f"{source}: corrupt or truncated image: {exc}") from exc


def _plain_jpeg(image: Image.Image) -> bool:
    """A JPEG that simplejpeg decodes to what Pillow's rules give: RGB or grayscale
    (not CMYK), upright (no EXIF rotation). Reads the header only."""
    if image.format != "JPEG" or image.mode not in ("RGB", "L"):
        return False
    return image.getexif().get(_ORIENTATION, 1) == 1


def _simplejpeg(data: bytes, size: int) -> np.ndarray | None:
    """simplejpeg's RGB pixels of a JPEG, uint8 ``(h, w, 3)``, DCT-downscaled to the
    smallest of libjpeg-turbo's scales (1/8, 2/8 ... 7/8) that keeps both sides >= ``size``;
    None where simplejpeg refuses the file (Pillow then decodes it, and names the fault if
    there is one).

    Pillow's ``draft`` has only 1/2, 1/4 and 1/8, so a photo under twice the target
    decodes whole: with the eighths, clothing_small's 400x711 photos decode at 5/8
    (250x444), which is where the speed comes from (restricted to Pillow's scales,
    simplejpeg's pixels equal Pillow's and its speed is the same, measured on 600
    clothing_small photos on 2026-12-04; ``benchmarks/precision.py`` measures the decoder).

    Raises
    ------
    DependencyError
        If simplejpeg is not installed: Pillow's pixels would go into a group whose
        recipe says simplejpeg.
    """
    try:
        import simplejpeg
    except ImportError as exc:
        raise DependencyError(
            "decoder 'simplejpeg' needs simplejpeg: pip install 'featurecache[simplejpeg]'"
        ) from exc
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=size, min_width=size)
    except ValueError:
        return None


def array_to_rgb(pixels: np.ndarray, size: int, *, source: str = "<array>") -> np.ndarray:
    """Turn one array image (``(h, w)``, ``(h, w, 1)``, ``(h, w, 3)`` or ``(h, w, 4)``,
    uint8 or uint16) into RGB pixels of shape ``(size, size, 3)``, dtype uint8.

    Raises
    ------
    ImageDecodeError
        If the array does not have one of those shapes.
    """
    array = np.asarray(pixels)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageDecodeError(
            f"{source}: array of shape {array.shape} is not an image "
            "(expected (h, w), (h, w, 1), (h, w, 3) or (h, w, 4))"
        )
    if array.dtype == np.uint16:
        array = (array // 257).astype(np.uint8)  # full 16-bit range -> 0-255
    elif array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    image = Image.fromarray(array)
    return resize(to_rgb(image), size)


def decode(
    data: bytes | np.ndarray, size: int, *, source: str, decoder: str = "pillow"
) -> np.ndarray:
    """An encoded file's bytes (:func:`decode_bytes` with ``decoder``) or an array row
    (:func:`array_to_rgb`) -> RGB pixels of shape ``(size, size, 3)``, dtype uint8.

    Raises
    ------
    ImageDecodeError
        If it is not an image that can be decoded; the message names ``source``.
    """
    if isinstance(data, np.ndarray):
        return array_to_rgb(data, size, source=source)
    return decode_bytes(data, size, source=source, decoder=decoder)
