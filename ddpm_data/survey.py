"""A first look at every source image, before any is stored: what the dataset-level rules need.

`--channels auto` needs to know whether every image is grey, and the intensity rule
(intensity.py) needs the largest high-bit value (`auto`) or the pooled value distribution
(`percentile`). `probe_file` reads only the header of an 8-bit image or a DICOM file (whose
PhotometricInterpretation says grey or colour); it decodes the pixels of high-bit PNG/TIFF files,
and of grey DICOM files under the percentile rule. A file that cannot be read here is left to the
decode pass, which skips it with its reason.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
from PIL import Image

from ddpm_data import dicom
from ddpm_data.config import IntensityRule
from ddpm_data.images import HIGH_BIT_MODES, pil_bomb_check_disabled
from ddpm_data.intensity import Intensity, bits_for, pooled_percentiles, summarise
from ddpm_data.split import open_regular

GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"}) | HIGH_BIT_MODES


@dataclass
class Probe:
    """What the survey learns of one source file."""

    kind: str | None = None            # "8-bit", "high-bit", "dicom"; None: left to the decode pass
    grey: bool = False                 # one grey plane (L, I;16, MONOCHROME1/2, ...)
    maximum: float = 0.0               # high-bit PNG/TIFF: the largest value
    summary: np.ndarray | None = None  # percentile rule: intensity.summarise of the values
    pixels: int = 0


def probe_file(rule: IntensityRule, max_pixels: int, path: str) -> Probe:
    """The Probe of the source file at `path` (a process-pool task: plain arguments)."""
    try:
        with open_regular(path) as file, pil_bomb_check_disabled(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            head = file.read(dicom.PREAMBLE_END)
            file.seek(0)
            if dicom.has_preamble(head) or path.lower().endswith(tuple(dicom.DICOM_EXTENSIONS)):
                return _probe_dicom(file, rule, max_pixels, force=not dicom.has_preamble(head))
            image = Image.open(file)
            if image.mode not in HIGH_BIT_MODES:
                return Probe("8-bit", grey=image.mode in GREY_MODES)
            if image.width * image.height > max_pixels:
                return Probe()
            values = np.asarray(image, dtype=np.float64)
    except Exception:  # any reason at all: the decode pass reads the file again and names it
        return Probe()
    summary = summarise(values) if rule is IntensityRule.percentile else None
    return Probe("high-bit", grey=True, maximum=float(values.max()), summary=summary, pixels=values.size)


def _probe_dicom(file: BinaryIO, rule: IntensityRule, max_pixels: int, force: bool) -> Probe:
    """A DICOM file's probe: its header alone (read up to the pixel data), its pixels only under
    the percentile rule."""
    try:
        if rule is not IntensityRule.percentile:
            return Probe("dicom", grey=dicom.is_grey(dicom.read_header(file, force)))
        frame = dicom.read_frame(file.read(), max_pixels, force)
    except dicom.DicomError:
        return Probe()
    if frame.rgb is not None:
        return Probe("dicom")
    return Probe("dicom", grey=True, summary=summarise(frame.modality), pixels=frame.modality.size)


@dataclass
class Survey:
    """The probes of a whole source, added up."""

    images: int = 0                    # files the survey could read
    grey: int = 0
    high_bit_max: float | None = None  # the largest high-bit PNG/TIFF value, None without such files
    high_bit: list[tuple[np.ndarray, int]] = field(default_factory=list)  # percentile: (summary, pixels)
    dicom: list[tuple[np.ndarray, int]] = field(default_factory=list)

    def add(self, probe: Probe) -> None:
        if probe.kind is None:
            return
        self.images += 1
        self.grey += probe.grey
        if probe.kind == "high-bit":
            self.high_bit_max = max(self.high_bit_max or 0.0, probe.maximum)
        if probe.summary is not None:
            (self.dicom if probe.kind == "dicom" else self.high_bit).append((probe.summary, probe.pixels))

    def channels(self, requested: int | str) -> tuple[int, str]:
        """(channels to store, why) for --channels `requested` (1, 3 or "auto")."""
        if requested != "auto":
            return int(requested), f"--channels {requested}"
        if self.images and self.grey == self.images:
            return 1, "auto: every source image is grey"
        return 3, f"auto: {self.images - self.grey} of {self.images} source images are colour"

    def intensity(self, rule: IntensityRule, window: tuple[float, float] | None,
                  percentiles: tuple[float, float]) -> Intensity:
        """The rule resolved for this dataset."""
        if rule is IntensityRule.window:
            return Intensity(rule, window=window, dicom_window=window)
        if rule is IntensityRule.percentile:
            pooled = {name: pooled_percentiles(summaries, percentiles) if summaries else None
                      for name, summaries in (("high_bit", self.high_bit), ("dicom", self.dicom))}
            return Intensity(rule, window=pooled["high_bit"], dicom_window=pooled["dicom"])
        return Intensity(rule, bits=bits_for(self.high_bit_max) if self.high_bit_max is not None else 16)
