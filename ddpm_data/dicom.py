"""Read the first frame of a DICOM file as a DICOM viewer shows it, through pydicom.

pydicom (and pylibjpeg with its libjpeg and openjpeg plugins, for the compressed transfer
syntaxes) is the optional `dicom` extra: `pip install 'ddpm-pipeline[dicom]'`. Without it a
DICOM file is skipped with that advice, never ignored.

A viewer's grey pipeline (DICOM PS3.4 N.2, PS3.3 C.11), in order:
1. Modality LUT: stored values -> modality values (CT: Hounsfield units), by RescaleSlope and
   RescaleIntercept or a Modality LUT Sequence (pydicom's `apply_modality_lut`);
2. VOI LUT: a VOI LUT Sequence (pydicom's `apply_voi_lut`), else the file's first window
   (WindowCenter/WindowWidth) by `window` (PS3.3 C.11.2.1.2: LINEAR, LINEAR_EXACT, SIGMOID);
   no window -> the range of the stored bits (BitsStored) after the Modality LUT;
3. MONOCHROME1 inverted (there, low values are bright), so bright means the same in every file.
Colour files (RGB, YBR_*, PALETTE COLOR) come back as RGB uint8.

Patient data: only pixels leave this module. No header value is returned, and skip reasons are
this module's own words plus the transfer syntax's name, never an exception's text (pydicom's
messages may quote element values such as names or dates).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom", ".dic"})
PREAMBLE_END = 132  # a DICOM Part 10 file: 128-byte preamble, then b"DICM"
INSTALL = "pip install 'ddpm-pipeline[dicom]'"


class DicomError(Exception):
    """A DICOM file that cannot become a training image; the message is the skip reason."""


def has_preamble(head: bytes) -> bool:
    """True when `head` (a file's first 132 bytes or more) is a DICOM Part 10 preamble."""
    return len(head) >= PREAMBLE_END and head[128:PREAMBLE_END] == b"DICM"


@dataclass
class DicomFrame:
    """The first frame of a DICOM file; grey files fill `modality`, `shown` and `low`/`high`."""

    rgb: np.ndarray | None = None       # (H, W, 3) uint8 for colour files
    modality: np.ndarray | None = None  # (H, W) float64 modality values (after the Modality LUT)
    shown: np.ndarray | None = None     # (H, W) float64 in [0, 1]: the viewer's rendering
    inverted: bool = False              # MONOCHROME1: `shown` was inverted
    how: str = "rgb"                    # "voi-lut", "window" or "bits": what made `shown`

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frame."""
        array = self.rgb if self.rgb is not None else self.modality
        return array.shape[1], array.shape[0]


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """VOI windowing of PS3.3 C.11.2.1.2 onto [0, 1] (y_min = 0, y_max = 1).

    LINEAR (C.11.2.1.2.1): y = (x - (c - 0.5)) / (w - 1) + 0.5, clipped; needs w >= 1.
    LINEAR_EXACT (C.11.2.1.3.2): y = (x - c) / w + 0.5, clipped; needs w > 0.
    SIGMOID (C.11.2.1.3.1): y = 1 / (1 + exp(-4 (x - c) / w)); needs w > 0.
    """
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width == 1:  # C.11.2.1.2.1 allows w = 1: a threshold at c - 0.5
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _first(value: Any) -> float:
    """The first of a multi-valued element (WindowCenter may list several windows)."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _import_pydicom() -> Any:
    try:
        import pydicom
        import pydicom.pixels  # noqa: F401
    except ImportError:
        raise DicomError(f"DICOM file, but pydicom is not installed; {INSTALL} and rebuild") from None
    return pydicom


def read_header(file: BinaryIO, force: bool = False) -> Any:
    """The dataset of an open DICOM file, read up to its pixel data (DicomError when not DICOM)."""
    pydicom = _import_pydicom()
    try:
        return pydicom.dcmread(file, force=force, stop_before_pixels=True)
    except Exception as error:  # pydicom raises many kinds; its text may quote header values
        raise DicomError(f"DICOM header unreadable ({type(error).__name__})") from None


def is_grey(dataset: Any) -> bool:
    """True for MONOCHROME1/2 files (the default when PhotometricInterpretation is absent)."""
    return str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).startswith("MONOCHROME")


def read_frame(data: bytes, max_pixels: int, force: bool = False) -> DicomFrame:
    """Decode the first frame of the DICOM file in `data` as a viewer shows it.

    `force` reads a file without the Part 10 preamble. Raises DicomError with the skip reason:
    pydicom missing, no pixel data, burned-in annotation, larger than `max_pixels`, a transfer
    syntax no installed decoder handles (naming what to install), or corrupt pixel data.
    """
    pydicom = _import_pydicom()
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=force)
    except Exception as error:
        raise DicomError(f"DICOM file unreadable ({type(error).__name__})") from None
    _check_readable(dataset, max_pixels)
    try:
        array = pydicom.pixels.pixel_array(dataset, index=0 if int(dataset.get("NumberOfFrames", 1) or 1) > 1 else None)
    except Exception as error:
        raise DicomError(f"DICOM pixel data corrupt or unreadable ({type(error).__name__})") from None
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if not photometric.startswith("MONOCHROME"):
        return DicomFrame(rgb=_colour(array, dataset, photometric, pydicom))
    if array.ndim != 2:
        raise DicomError(f"DICOM {photometric} frame of shape {array.shape}; expected one grey plane")
    return _grey(array, dataset, photometric == "MONOCHROME1", pydicom)


def _check_readable(dataset: Any, max_pixels: int) -> None:
    if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
        raise DicomError("DICOM file without pixel data (a report, DICOMDIR or other non-image object)")
    if str(dataset.get("BurnedInAnnotation", "")).upper() == "YES":
        raise DicomError("DICOM BurnedInAnnotation is YES: patient text may be drawn into the pixels, so the file "
                         "is left out; mask or crop the text, set BurnedInAnnotation to NO, and rebuild")
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    if rows * columns > max_pixels:
        raise DicomError(f"decompression bomb: {columns}x{rows} = {rows * columns} pixels exceeds the limit of "
                         f"{max_pixels} (--max-pixels)")
    syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    if syntax is not None and syntax.is_compressed:
        _check_decoder(syntax)


def _check_decoder(syntax: Any) -> None:
    from pydicom.pixels import get_decoder

    name = f"{syntax.name} ({syntax})"
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DicomError(f"DICOM transfer syntax {name}: no decoder for it exists for pydicom; convert the file "
                         f"to an uncompressed syntax (e.g. 'gdcmconv --raw IN OUT') and rebuild") from None
    if not decoder.is_available:
        raise DicomError(f"DICOM transfer syntax {name}: no installed decoder handles it; {INSTALL} "
                         f"(pydicom with pylibjpeg and its libjpeg and openjpeg plugins) and rebuild")


def _grey(array: np.ndarray, dataset: Any, monochrome1: bool, pydicom: Any) -> DicomFrame:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    modality = np.asarray(apply_modality_lut(array, dataset), dtype=np.float64)
    if "VOILUTSequence" in dataset:
        item = dataset.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2])
        shown, how = np.asarray(apply_voi_lut(modality, dataset, index=0, prefer_lut=True), np.float64) / (2**bits - 1), "voi-lut"
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        function = str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        shown, how = window(modality, _first(dataset.WindowCenter), _first(dataset.WindowWidth), function), "window"
    else:
        low, high = stored_range(dataset)
        shown, how = np.clip((modality - low) / max(high - low, 1e-12), 0.0, 1.0), "bits"
    shown = np.clip(shown, 0.0, 1.0)
    return DicomFrame(modality=modality, shown=1.0 - shown if monochrome1 else shown, inverted=monochrome1, how=how)


def stored_range(dataset: Any) -> tuple[float, float]:
    """The modality values of the smallest and largest stored value BitsStored allows."""
    from pydicom.pixels import apply_modality_lut

    bits = int(dataset.get("BitsStored", dataset.get("BitsAllocated", 16)))
    signed = int(dataset.get("PixelRepresentation", 0)) == 1
    ends = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1])
    mapped = np.asarray(apply_modality_lut(ends, dataset), dtype=np.float64)
    return float(mapped.min()), float(mapped.max())


def _colour(array: np.ndarray, dataset: Any, photometric: str, pydicom: Any) -> np.ndarray:
    """RGB uint8 of a colour frame (pydicom has already turned YBR into RGB)."""
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        array = apply_color_lut(array, dataset)
        top = 255 if array.dtype == np.uint8 else 65535
    else:
        top = 2 ** int(dataset.get("BitsStored", 8)) - 1
    if array.ndim != 3 or array.shape[-1] != 3:
        raise DicomError(f"DICOM {photometric} frame of shape {array.shape}; expected (rows, columns, 3)")
    if top == 255:
        return np.ascontiguousarray(array, dtype=np.uint8)
    return np.round(np.clip(array / top, 0.0, 1.0) * 255).astype(np.uint8)
