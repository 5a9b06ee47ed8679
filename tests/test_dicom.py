"""DICOM frames read as a viewer shows them; the expected renderings are computed here from the
standard's formulas (PS3.3 C.11), not by the code under test."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from ddpm_data import dicom
from ddpm_data.images import BadImage, Intensity, quantize, read_source
from helpers_dicom import smooth_image, viewer_window, write_dicom

CT_INTERCEPT, CENTER, WIDTH = -1024.0, 40.0, 400.0


def test_window_functions_match_the_standard_closed_forms():
    x = np.array([CENTER - 0.5 - (WIDTH - 1) / 2, CENTER - 0.5, CENTER - 0.5 + (WIDTH - 1) / 2, -1000.0, 1000.0])
    np.testing.assert_allclose(dicom.window(x, CENTER, WIDTH), [0.0, 0.5, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(dicom.window(np.array([CENTER, CENTER - WIDTH / 2]), CENTER, WIDTH, "LINEAR_EXACT"), [0.5, 0.0])
    np.testing.assert_allclose(dicom.window(np.array([CENTER, CENTER + WIDTH]), CENTER, WIDTH, "SIGMOID"),
                               [0.5, 1 / (1 + np.exp(-4))])
    rng = np.random.default_rng(0)
    values = rng.uniform(-500, 500, 1000)
    np.testing.assert_allclose(dicom.window(values, CENTER, WIDTH), viewer_window(values, CENTER, WIDTH))


def test_ct_with_rescale_intercept_and_window_is_shown_through_both(tmp_path):
    stored = smooth_image(30, 40, 0, 2000)
    path = write_dicom(tmp_path / "ct.dcm", stored, intercept=CT_INTERCEPT, slope=1, window=(CENTER, WIDTH))
    frame = dicom.read_frame(path.read_bytes(), 10**8)
    np.testing.assert_allclose(frame.modality, stored + CT_INTERCEPT)
    np.testing.assert_allclose(frame.shown, viewer_window(stored + CT_INTERCEPT, CENTER, WIDTH))
    assert frame.how == "window" and not frame.inverted


def test_monochrome1_without_window_is_inverted_over_its_stored_bits(tmp_path):
    stored = smooth_image(20, 20, 0, 4095)
    frame = dicom.read_frame(write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1").read_bytes(), 10**8)
    np.testing.assert_allclose(frame.shown, 1.0 - stored / 4095)
    assert frame.how == "bits" and frame.inverted


def test_signed_ten_bit_without_window_spans_its_signed_range(tmp_path):
    stored = smooth_image(16, 16, -512, 511)
    frame = dicom.read_frame(write_dicom(tmp_path / "s.dcm", stored, bits_stored=10, signed=True).read_bytes(), 10**8)
    np.testing.assert_allclose(frame.shown, (stored + 512) / 1023)


def test_multi_frame_reads_the_first_frame(tmp_path):
    frames = np.stack([smooth_image(12, 12, 0, 4000, seed) for seed in range(3)])
    frame = dicom.read_frame(write_dicom(tmp_path / "mf.dcm", frames).read_bytes(), 10**8)
    np.testing.assert_array_equal(frame.modality, frames[0])


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"])  # RLE, JPEG 2000 lossless
def test_compressed_files_decode_to_the_same_pixels(tmp_path, syntax):
    stored = smooth_image(64, 64, 0, 4000)  # JPEG 2000's default 6 resolutions need 32 px or more
    frame = dicom.read_frame(write_dicom(tmp_path / "c.dcm", stored, syntax=syntax).read_bytes(), 10**8)
    np.testing.assert_array_equal(frame.modality, stored)


def test_file_without_preamble_is_read_by_its_group_two_start(tmp_path):
    stored = smooth_image(10, 10, 0, 4095)
    data = write_dicom(tmp_path / "np.dcm", stored, preamble=False).read_bytes()
    assert not dicom.has_preamble(data)
    source = read_source(data, intensity=Intensity())
    assert source.kind == "dicom" and source.how == "rescaled"
    np.testing.assert_allclose(np.asarray(source.image), stored / 4095 * 255, atol=1e-3)


def test_undecodable_transfer_syntax_names_the_syntax_and_the_fix(tmp_path):
    data = write_dicom(tmp_path / "ok.dcm", smooth_image(8, 8, 0, 100)).read_bytes()
    from pydicom import dcmread
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML
    import io

    dataset = dcmread(io.BytesIO(data))
    dataset.file_meta.TransferSyntaxUID = MPEG2MPML
    dataset.PixelData = encapsulate([b"\x00" * 64])
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    with pytest.raises(BadImage, match=r"MPEG2.*no decoder.*gdcmconv --raw"):
        read_source(buffer.getvalue())


def test_without_pydicom_a_dicom_file_is_skipped_with_the_install_command(tmp_path, monkeypatch):
    data = write_dicom(tmp_path / "a.dcm", smooth_image(8, 8, 0, 100)).read_bytes()
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(BadImage, match=r"pydicom is not installed; pip install 'ddpm-pipeline\[dicom\]'"):
        read_source(data)


def test_burned_in_annotation_and_missing_pixels_are_refused(tmp_path):
    burned = write_dicom(tmp_path / "b.dcm", smooth_image(8, 8, 0, 100), burned_in="YES").read_bytes()
    with pytest.raises(BadImage, match="BurnedInAnnotation is YES"):
        read_source(burned)
    from pydicom import dcmread
    import io

    dataset = dcmread(io.BytesIO(burned))
    del dataset.PixelData, dataset.BurnedInAnnotation
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    with pytest.raises(BadImage, match="without pixel data"):
        read_source(buffer.getvalue())


def test_skip_reasons_never_quote_the_header(tmp_path):
    data = bytearray(write_dicom(tmp_path / "a.dcm", smooth_image(8, 8, 0, 100)).read_bytes())
    cut = bytes(data[:-40])  # truncated pixel data
    with pytest.raises(BadImage) as caught:
        read_source(cut)
    assert "Doe" not in str(caught.value) and "PID" not in str(caught.value)


def test_user_window_applies_to_modality_values_then_monochrome1_inverts(tmp_path):
    stored = smooth_image(16, 16, 0, 2000)
    data = write_dicom(tmp_path / "w.dcm", stored, photometric="MONOCHROME1", intercept=CT_INTERCEPT, slope=1,
                       window=(CENTER, WIDTH)).read_bytes()
    source = read_source(data, intensity=Intensity(dicom_window=(-1000.0, 1000.0)))
    expected = 1.0 - np.clip((stored + CT_INTERCEPT + 1000.0) / 2000.0, 0, 1)
    np.testing.assert_allclose(np.asarray(source.image), expected * 255, atol=1e-3)
    assert source.how == "windowed" and source.inverted
    assert np.asarray(quantize(source.image)).dtype == np.uint8


def test_colour_dicom_comes_back_as_rgb(tmp_path):
    rgb = np.stack([smooth_image(10, 10, 0, 255, seed) for seed in range(3)], axis=-1)
    source = read_source(write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB", bits_stored=8).read_bytes())
    assert source.image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(source.image), rgb.astype(np.uint8))
