"""Decode one source image and turn it into a square, fixed-size uint8 array.

Every image goes through the same steps, so a folder of mixed formats ends up consistent:
decode (first frame; header-checked against `max_pixels` before any pixel is decoded) ->
apply the EXIF orientation -> convert the mode (palette, grey, grey+alpha, RGBA, CMYK, 16-bit)
to RGB or L -> make it square (`Fit`) -> LANCZOS-resize (antialiased; a JPEG may first be
reduced in the DCT domain, never below twice the stored size) -> lossless PNG. Alpha is composited on `ALPHA_BACKGROUND` (white); `Fit.PAD` pads with
`PAD_FILL` (black).
"""
from __future__ import annotations

import contextlib
import io
import struct
import warnings
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ddpm_data.config import Fit  # noqa: F401 (re-exported)

# Lower-case extensions a build treats as images; any other file is ignored (and counted).
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".gif", ".tif", ".tiff",
     ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga"}
)
ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels become white, as viewers show them
PAD_FILL = (0, 0, 0)                # Fit.PAD borders are black
DEFAULT_MAX_PIXELS = 100_000_000    # larger images are refused as decompression bombs
PNG_COMPRESS_LEVEL = 1              # fixed zlib level: 2-3x faster than 6 for ~15 % larger files


class BadImage(Exception):
    """A source file that cannot become a training image; the message is the skip reason."""


def stored_size_for(size: int, margin: int) -> int:
    """Side of the stored image for training size `size` and crop `margin` (px per 128 px).

    The augmentation recipe of docs/design.md resizes to 140 and random-crops 128, i.e. margin 12:
    stored = round(size * (128 + margin) / 128); margin 0 stores exactly `size`.
    """
    return int(round(size * (128 + margin) / 128))


@contextlib.contextmanager
def _pil_bomb_check_disabled() -> Iterator[None]:
    # We apply our own `max_pixels` limit; PIL's global one would otherwise cap it.
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _composite(rgba: Image.Image) -> Image.Image:
    """RGBA -> RGB over ALPHA_BACKGROUND."""
    background = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _sixteen_bit_grey(image: Image.Image) -> Image.Image:
    # Map 0..65535 linearly to 0..255; 32-bit "I" images are clipped to the 16-bit range first.
    values = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.round(np.clip(values, 0, 65535) / 257.0).astype(np.uint8), "L")


def _palette(image: Image.Image) -> Image.Image:
    if "transparency" in image.info or image.palette.mode == "RGBA":
        return _composite(image.convert("RGBA"))
    return image.convert("RGB")


# PIL mode -> conversion to "RGB" or "L" (grey stays grey until `to_channels`).
_MODE_CONVERTERS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "RGB": lambda image: image,
    "L": lambda image: image,
    "1": lambda image: image.convert("L"),
    "P": _palette,
    "LA": lambda image: _composite(image.convert("RGBA")).convert("L"),
    "La": lambda image: _composite(image.convert("RGBA")).convert("L"),
    "PA": lambda image: _composite(image.convert("RGBA")),
    "RGBA": _composite,
    "RGBa": lambda image: _composite(image.convert("RGBA")),
    "CMYK": lambda image: image.convert("RGB"),
    "YCbCr": lambda image: image.convert("RGB"),
    "LAB": lambda image: image.convert("RGB"),
    "HSV": lambda image: image.convert("RGB"),
    "RGBX": lambda image: image.convert("RGB"),
    **{mode: _sixteen_bit_grey for mode in ("I;16", "I;16L", "I;16B", "I;16N", "I")},
}


def _to_rgb_or_l(image: Image.Image) -> Image.Image:
    """Convert any supported PIL mode to "RGB" or "L"; BadImage for the others."""
    converter = _MODE_CONVERTERS.get(image.mode)
    if converter is None:
        raise BadImage(f"unsupported pixel mode {image.mode!r} (supported: {', '.join(sorted(_MODE_CONVERTERS))})")
    return converter(image)


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None) -> Image.Image:
    """Decode file bytes into an upright "RGB" or "L" PIL image (first frame of multi-frame files).

    `min_side`: JPEG files may be decoded with libjpeg's DCT-domain downscaling (by 1/2, 1/4 or
    1/8, PIL's `draft`) to no less than `min_side` px on either side; the callers ask for twice
    the largest stored size, so the LANCZOS resize that follows still does the antialiasing
    (51 dB PSNR against a resize from native pixels on the build benchmark's images, 2x faster).

    Raises BadImage with a one-line reason for files that are not images, are truncated or
    corrupt, have an unsupported mode, or exceed `max_pixels` (checked from the header).
    """
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with _pil_bomb_check_disabled(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "palette images with transparency" notes
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise BadImage(
                    f"decompression bomb: {width}x{height} = {width * height} pixels exceeds the "
                    f"limit of {max_pixels} (--max-pixels)"
                )
            image.seek(0)
            if min_side is not None and image.format == "JPEG":
                image.draft(image.mode, (min_side, min_side))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return _to_rgb_or_l(image)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as error:
        raise BadImage(f"decompression bomb: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as error:
        text = str(error) or type(error).__name__
        kind = "truncated" if "truncated" in text.lower() else "corrupt"
        raise BadImage(f"{kind}: {text}") from None


def to_channels(image: Image.Image, channels: int) -> Image.Image:
    """Convert an "RGB"/"L" image to 3 channels (RGB) or 1 channel (L, ITU-R 601 luma)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    mode = "RGB" if channels == 3 else "L"
    return image if image.mode == mode else image.convert(mode)


def fit_square(image: Image.Image, stored_size: int, fit: Fit) -> Image.Image:
    """Return an image of exactly `stored_size` x `stored_size`, LANCZOS-resized from `image`.

    The filter runs on the decoded pixels in one step, so it is antialiased (`decode` may have
    reduced a JPEG in the DCT domain, never below twice the largest stored size).
    """
    width, height = image.size
    target = (stored_size, stored_size)
    if fit is Fit.CROP:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        # Crop first: resize(box=...) would let the filter read pixels from outside the square.
        square = image.crop((left, top, left + side, top + side)) if (width, height) != (side, side) else image
        return square.resize(target, Image.Resampling.LANCZOS)
    if fit is Fit.SQUASH:
        return image.resize(target, Image.Resampling.LANCZOS)
    if fit is Fit.PAD:
        side = max(width, height)
        fill = PAD_FILL if image.mode == "RGB" else PAD_FILL[0]
        canvas = Image.new(image.mode, (side, side), fill)
        canvas.paste(image, ((side - width) // 2, (side - height) // 2))
        return canvas.resize(target, Image.Resampling.LANCZOS)
    raise ValueError(f"fit {fit!r}: unknown; valid: {', '.join(f.value for f in Fit)}")


def encode_png(image: Image.Image) -> bytes:
    """Lossless, metadata-free PNG bytes (identical bytes for identical pixels)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def to_array(image: Image.Image) -> np.ndarray:
    """(C, H, W) uint8 array of an "RGB" or "L" image."""
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))
