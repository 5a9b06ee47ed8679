"""DICOM test files written with pydicom, carrying patient data that must never reach an output."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# Header values that must appear in no output file (tests grep every byte for them).
PATIENT = {"PatientName": "Doe^Jane^Secret", "PatientID": "PID-7731-XQ", "PatientBirthDate": "19410623",
           "InstitutionName": "St Elsewhere Imaging", "AccessionNumber": "ACC99812", "StudyDate": "20210314"}


def viewer_window(x, c, w):
    """The standard's LINEAR window (PS3.3 C.11.2.1.2.1) onto [0, 1], written out piecewise as it
    reads there: the reference the tests hold the code to."""
    below, above = x <= c - 0.5 - (w - 1) / 2, x > c - 0.5 + (w - 1) / 2
    return np.where(below, 0.0, np.where(above, 1.0, (x - (c - 0.5)) / (w - 1) + 0.5))


def smooth_image(rows: int, columns: int, low: int, high: int, seed: int = 0) -> np.ndarray:
    """A smooth (rows, columns) ramp with a soft disc, integer values in [low, high] (float64)."""
    y, x = np.mgrid[0:rows, 0:columns] / max(rows, columns)
    rng = np.random.default_rng(seed)
    cy, cx = rng.uniform(0.3, 0.7, 2)
    disc = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 0.03)
    unit = np.clip(0.6 * x + 0.2 * y + 0.4 * disc, 0.0, 1.0) / 1.2
    return np.round(low + (high - low) * unit)


def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 12,
                signed: bool = False, slope: float | None = None, intercept: float | None = None,
                window: tuple[float, float] | None = None, voi_function: str | None = None,
                syntax: str | None = None, burned_in: str | None = None, preamble: bool = True) -> Path:
    """Write `pixels` ((rows, cols), (frames, rows, cols) or (rows, cols, 3) stored values) as a
    DICOM file with the patient data of PATIENT; `syntax` compresses it (RLE, JPEG 2000)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID,
                             generate_uid)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if not preamble else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    frames = pixels.ndim == 3 and photometric.startswith("MONOCHROME")
    dtype = (np.int16 if signed else np.uint16) if bits_stored > 8 else np.uint8
    ds.set_pixel_data(pixels.astype(dtype), photometric, bits_stored)
    if frames:
        ds.NumberOfFrames = pixels.shape[0]
    if slope is not None or intercept is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope if slope is not None else 1, intercept or 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    if syntax is not None:
        ds.compress(UID(syntax))
    ds.save_as(path, enforce_file_format=preamble)
    return path
