"""ddpm_data.images: every mode and bad-file kind decodes consistently or fails with a reason."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ddpm_data import images
from ddpm_data.images import BadImage, Fit, decode, encode_png, fit_square, stored_size_for, to_array, to_channels
from helpers_data import bomb_png


def _bytes(image: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def _pixel(image: Image.Image, x: int = 0, y: int = 0):
    return tuple(np.asarray(image)[y, x].tolist()) if image.mode == "RGB" else int(np.asarray(image)[y, x])


@pytest.mark.parametrize("size, margin, stored", [(128, 12, 140), (96, 12, 105), (40, 12, 44), (96, 0, 96), (64, 64, 96)])
def test_stored_size_follows_the_140_over_128_recipe(size, margin, stored):
    assert stored_size_for(size, margin) == stored


def test_grey_and_bilevel_stay_single_channel():
    assert decode(_bytes(Image.new("L", (4, 4), 77))).mode == "L"
    bilevel = decode(_bytes(Image.new("1", (4, 4), 1)))
    assert bilevel.mode == "L" and _pixel(bilevel) == 255


def test_sixteen_bit_grey_maps_its_bit_range_to_eight_bit():
    ramp = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)  # 0, 257, ..., 65535
    decoded = decode(_bytes(Image.fromarray(ramp)))  # the default rule: 16 bits
    assert decoded.mode == "F"
    np.testing.assert_array_equal(np.asarray(images.quantize(decoded)).ravel(), np.arange(256))
    twelve = (np.arange(256) * 4095 // 255).astype(np.uint16).reshape(16, 16)  # 12-bit data in a 16-bit PNG
    source = images.read_source(_bytes(Image.fromarray(twelve)), intensity=images.Intensity(bits=12))
    assert source.kind == "high-bit" and source.how == "rescaled"
    np.testing.assert_array_equal(np.asarray(images.quantize(source.image)).ravel(), np.arange(256))


def test_palette_with_and_without_transparency():
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    assert _pixel(decode(_bytes(palette))) == (0, 255, 0)
    transparent = decode(_bytes(palette, transparency=1))
    assert _pixel(transparent) == images.ALPHA_BACKGROUND


def test_alpha_is_composited_on_the_documented_background():
    rgba = Image.new("RGBA", (4, 4), (200, 0, 0, 0))
    rgba.putpixel((1, 1), (200, 0, 0, 255))
    rgba.putpixel((2, 2), (0, 0, 0, 128))
    decoded = decode(_bytes(rgba))
    assert decoded.mode == "RGB"
    assert _pixel(decoded, 0, 0) == images.ALPHA_BACKGROUND
    assert _pixel(decoded, 1, 1) == (200, 0, 0)
    assert all(abs(v - 127) <= 1 for v in _pixel(decoded, 2, 2))  # half black over white
    grey_alpha = decode(_bytes(Image.new("LA", (4, 4), (10, 0))))
    assert grey_alpha.mode == "L" and _pixel(grey_alpha) == 255


def test_cmyk_becomes_rgb():
    decoded = decode(_bytes(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100))
    red, green, blue = _pixel(decoded)
    assert decoded.mode == "RGB" and red > 240 and green < 15 and blue < 15


def test_multi_frame_uses_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    data = _bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert _pixel(decode(data)) == (255, 0, 0)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (20, 10), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 5, 10))  # left quarter blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display after a 90 degree clockwise turn
    decoded = decode(_bytes(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert decoded.size == (10, 20)
    top, bottom = np.asarray(decoded)[0, 5], np.asarray(decoded)[-1, 5]
    assert top[2] > 200 and top[0] < 50      # the blue edge is now on top
    assert bottom[0] > 200 and bottom[2] < 50


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"this is text with a .png name", "not an image"),
    (bomb_png(), "decompression bomb"),
])
def test_bad_bytes_raise_bad_image_with_reason(data, reason):
    with pytest.raises(BadImage, match=reason):
        decode(data)


def test_truncated_and_corrupt_files():
    data = _bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(BadImage, match="truncated"):
        decode(data[: len(data) // 2])
    corrupt = bytearray(data)
    corrupt[100:140] = b"\x00" * 40  # inside IDAT: CRC / zlib stream broken
    with pytest.raises(BadImage, match="corrupt|truncated"):
        decode(bytes(corrupt))


def test_max_pixels_limit_is_configurable():
    data = _bytes(Image.new("RGB", (100, 100)))
    decode(data, max_pixels=10_000)
    with pytest.raises(BadImage, match="decompression bomb"):
        decode(data, max_pixels=9_999)


def test_crop_takes_the_centre_square():
    image = Image.new("RGB", (300, 100), (255, 0, 0))
    image.paste((0, 255, 0), (100, 0, 200, 100))  # the centre square is green
    out = fit_square(image, 20, Fit.CROP)
    assert out.size == (20, 20)
    assert np.asarray(out)[:, :, 1].min() > 250 and np.asarray(out)[:, :, 0].max() < 5


def test_squash_keeps_everything_and_pad_adds_black_borders():
    image = Image.new("RGB", (200, 100), (255, 255, 255))
    squashed = np.asarray(fit_square(image, 20, Fit.SQUASH))
    assert squashed.shape == (20, 20, 3) and squashed.min() > 250
    padded = np.asarray(fit_square(image, 20, Fit.PAD))
    assert padded.shape == (20, 20, 3)
    assert padded[0].max() < 5 and padded[-1].max() < 5 and padded[10].min() > 250  # borders top/bottom
    grey = fit_square(Image.new("L", (30, 10), 200), 12, Fit.PAD)
    assert grey.mode == "L" and np.asarray(grey)[0, 0] == 0


def test_resize_is_antialiased():
    """A 1-px checkerboard shrunk 8x must average to mid-grey, not alias to black or white."""
    checker = (np.indices((256, 256)).sum(axis=0) % 2 * 255).astype(np.uint8)
    small = np.asarray(fit_square(Image.fromarray(checker), 32, Fit.CROP)).astype(int)
    assert abs(small.mean() - 127.5) < 3 and small.std() < 6


def test_channels_and_array_layout():
    rgb = Image.new("RGB", (5, 4), (255, 0, 0))
    assert to_array(rgb).shape == (3, 4, 5)
    grey = to_channels(rgb, 1)
    assert grey.mode == "L" and to_array(grey).shape == (1, 4, 5)
    assert _pixel(grey) == 76  # ITU-R 601 luma of pure red
    assert to_channels(Image.new("L", (2, 2), 9), 3).mode == "RGB"
    with pytest.raises(ValueError, match="1 or 3"):
        to_channels(rgb, 2)


def test_png_is_lossless_and_deterministic():
    pixels = np.random.default_rng(1).integers(0, 256, (17, 17, 3), dtype=np.uint8)
    first, second = encode_png(Image.fromarray(pixels)), encode_png(Image.fromarray(pixels.copy()))
    assert first == second
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(first))), pixels)


def test_unsupported_mode_is_a_reason_not_a_crash():
    data = _bytes(Image.fromarray(np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4), "F"), "TIFF")
    with pytest.raises(BadImage, match="unsupported pixel mode 'F'"):
        decode(data)


def test_sixteen_bit_rgb_png_keeps_the_high_byte():
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    pixels = np.zeros((2, 4, 3), dtype=">u2")
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 65535, 32768, 2570
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 2, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    decoded = decode(data)
    assert decoded.mode == "RGB" and _pixel(decoded) == (255, 128, 10)


def test_jpeg_draft_decode_keeps_twice_the_target_and_matches_native_resize():
    """DCT-domain downscaling stops at >= min_side, and the LANCZOS result stays within 51 dB-ish of native."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    smooth = Image.fromarray(coarse).resize((512, 512), Image.Resampling.BICUBIC)
    data = _bytes(smooth, "JPEG", quality=90)
    drafted, native = decode(data, min_side=210), decode(data)
    assert drafted.size == (256, 256) and native.size == (512, 512)
    a = np.asarray(fit_square(drafted, 105, Fit.CROP), dtype=np.float64)
    b = np.asarray(fit_square(native, 105, Fit.CROP), dtype=np.float64)
    psnr = 10 * np.log10(255**2 / ((a - b) ** 2).mean())
    assert psnr > 40, psnr
    assert decode(_bytes(smooth, "PNG"), min_side=210).size == (512, 512), "only JPEG is drafted"
