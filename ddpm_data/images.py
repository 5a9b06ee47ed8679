"""Decode one source image and turn it into a square, fixed-size uint8 array.

Every image goes through the same steps, so a folder of mixed formats ends up consistent:
decode (first frame; header-checked against `max_pixels` before any pixel is decoded) ->
apply the EXIF orientation -> convert the mode (palette, grey, grey+alpha, RGBA, CMYK) to RGB or
L -> make it square (`Fit`) -> LANCZOS-resize (antialiased; a JPEG may first be reduced in the
DCT domain, never below twice the stored size) -> lossless PNG. Alpha is composited on
`ALPHA_BACKGROUND` (white); `Fit.PAD` pads with `PAD_FILL` (black).

High-bit-depth grey (16-bit PNG/TIFF) and DICOM files (dicom.py) become grey levels by the
dataset's intensity rule (intensity.py) as floats ("F" images), are resized in floating point,
and are rounded to 8 bits only at the end (`quantize`).
"""
from __future__ import annotations

import contextlib
import io
import struct
import warnings
from typing import Callable, Iterator

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ddpm_data import dicom
from ddpm_data.config import Fit  # noqa: F401 (re-exported)
from ddpm_data.intensity import Intensity

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
def pil_bomb_check_disabled() -> Iterator[None]:
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


HIGH_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})  # grey read by the intensity rule


@dataclass
class Source:
    """A decoded source file: its upright image and how its grey levels were made."""

    image: Image.Image          # "RGB", "L", or "F" (grey levels 0..255 as floats, from high-bit data)
    kind: str = "8-bit"         # "8-bit", "high-bit" (16/32-bit PNG/TIFF) or "dicom"
    how: str | None = None      # high-bit and grey DICOM: "rescaled" (a bit range) or "windowed"
    inverted: bool = False      # MONOCHROME1 DICOM, inverted so that bright means the same


def _float_grey(unit: np.ndarray) -> Image.Image:
    """An "F" image of grey levels 0..255 from values in [0, 1]."""
    return Image.fromarray(np.ascontiguousarray(unit * 255.0, dtype=np.float32), "F")


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
}


def _to_rgb_or_l(image: Image.Image) -> Image.Image:
    """Convert any supported PIL mode to "RGB" or "L"; BadImage for the others."""
    converter = _MODE_CONVERTERS.get(image.mode)
    if converter is None:
        raise BadImage(f"unsupported pixel mode {image.mode!r} (supported: {', '.join(sorted(_MODE_CONVERTERS))})")
    return converter(image)


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None,
           intensity: Intensity = Intensity()) -> Image.Image:
    """The image of `read_source`: "RGB", "L", or "F" for high-bit grey and grey DICOM."""
    return read_source(data, max_pixels, min_side, intensity).image


def read_source(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None,
                intensity: Intensity = Intensity()) -> Source:
    """Decode file bytes into an upright image (first frame of multi-frame files).

    `min_side`: JPEG files may be decoded with libjpeg's DCT-domain downscaling (by 1/2, 1/4 or
    1/8, PIL's `draft`) to no less than `min_side` px on either side; the callers ask for twice
    the largest stored size, so the LANCZOS resize that follows still does the antialiasing
    (51 dB PSNR against a resize from native pixels on the build benchmark's images, 2x faster).
    `intensity`: the dataset's rule for high-bit grey and DICOM values.

    Raises BadImage with a one-line reason for files that are not images, are truncated or
    corrupt, have an unsupported mode, exceed `max_pixels` (checked from the header), or are
    DICOM files that cannot be read here (the reason names what to install).
    """
    if not data:
        raise BadImage("empty file (0 bytes)")
    if dicom.has_preamble(data[:dicom.PREAMBLE_END]):
        return _dicom_source(data, max_pixels, intensity, force=False)
    try:
        image = _open(data, max_pixels, min_side)
    except BadImage as error:
        if error.args[0] == NOT_AN_IMAGE and data[:2] in (b"\x08\x00", b"\x02\x00"):  # DICOM without its preamble
            return _dicom_source(data, max_pixels, intensity, force=True)
        raise
    if image.mode in HIGH_BIT_MODES:
        unit, how = intensity.scale_raw(np.asarray(image, dtype=np.float64))
        return Source(_float_grey(unit), "high-bit", how)
    return Source(_to_rgb_or_l(image))


NOT_AN_IMAGE = "not an image (unrecognised format)"


def _dicom_source(data: bytes, max_pixels: int, intensity: Intensity, force: bool) -> Source:
    try:
        frame = dicom.read_frame(data, max_pixels, force)
    except dicom.DicomError as error:
        raise BadImage(str(error)) from None
    if frame.rgb is not None:
        return Source(Image.fromarray(frame.rgb, "RGB"), "dicom")
    unit, how = intensity.scale_dicom(frame)
    return Source(_float_grey(unit), "dicom", how, frame.inverted)


def _open(data: bytes, max_pixels: int, min_side: int | None) -> Image.Image:
    """The loaded, upright PIL image of `data` in its own mode; BadImage with the reason."""
    try:
        with pil_bomb_check_disabled(), warnings.catch_warnings():
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
            return image
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage(NOT_AN_IMAGE) from None
    except Image.DecompressionBombError as error:
        raise BadImage(f"decompression bomb: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as error:
        text = str(error) or type(error).__name__
        kind = "truncated" if "truncated" in text.lower() else "corrupt"
        raise BadImage(f"{kind}: {text}") from None


def to_channels(image: Image.Image, channels: int) -> Image.Image:
    """Convert an "RGB"/"L" image to 3 channels (RGB) or 1 channel (L, ITU-R 601 luma); an "F"
    image stays grey floats until `quantize`."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    mode = "RGB" if channels == 3 else "L"
    return image if image.mode in (mode, "F") else image.convert(mode)


def quantize(image: Image.Image) -> Image.Image:
    """An "F" image of grey levels 0..255 rounded to "L"; other modes unchanged."""
    if image.mode != "F":
        return image
    return Image.fromarray(np.clip(np.round(np.asarray(image)), 0, 255).astype(np.uint8), "L")


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
