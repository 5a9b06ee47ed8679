"""The dataset-level intensity rule: how high-bit-depth grey values become 8-bit grey levels.

8-bit images (PNG, JPEG, ...) are display-ready and pass unchanged under every rule. The rule
touches 16-bit (and 32-bit integer) grey PNG/TIFF files and grey DICOM files, and it is the same
for every image of a build, so relative brightness between images is kept (no per-image
stretching):
- `auto`: PNG/TIFF values are read from 0..2**bits - 1, where `bits` is the bit length of the
  largest value in the dataset's high-bit files (12-bit data in a 16-bit container: 0..4095);
  DICOM files as a DICOM viewer shows them (their VOI LUT or first window; dicom.py).
- `window`: one fixed window --window LOW,HIGH -> [0, 1], clipped: on PNG/TIFF values, and on
  DICOM modality values (after RescaleSlope/Intercept: Hounsfield units for CT). This is MONAI's
  `ScaleIntensityRange(a_min=LOW, a_max=HIGH, b_min=0, b_max=1, clip=True)` after `LoadImage`.
- `percentile`: the window is the --percentiles LOW,HIGH of the pooled values of the dataset's
  high-bit files (PNG/TIFF and DICOM pooled apart, as their units differ). MONAI's
  `ScaleIntensityRangePercentiles` computes them per image; here they are computed once for the
  whole dataset, so a dark image stays darker than a bright one.
MONOCHROME1 DICOM is inverted after the window in every rule.

`exposure` flags stored images that come out near-black or saturated, so a rule that does not
fit the data is named in the build's warnings instead of training on black squares.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddpm_data.config import IntensityRule
from ddpm_data.dicom import DicomFrame

NEAR_BLACK_LEVEL = 16     # an image whose 99th-percentile grey level is below this (of 255) is near-black
SATURATED_FRACTION = 0.5  # an image with more than this share of pixels at 255 is saturated
PERCENTILE_LEVELS = np.linspace(0.0, 100.0, 401)  # each high-bit image's value distribution, in 0.25 % steps


@dataclass(frozen=True)
class Intensity:
    """The rule resolved for one dataset (`survey.Survey.intensity`); picklable for the workers."""

    rule: IntensityRule = IntensityRule.auto
    bits: int = 16                                    # auto: PNG/TIFF values read from 0..2**bits - 1
    window: tuple[float, float] | None = None         # window/percentile: PNG/TIFF values -> [0, 1]
    dicom_window: tuple[float, float] | None = None   # window/percentile: DICOM modality values -> [0, 1]

    def scale_raw(self, values: np.ndarray) -> tuple[np.ndarray, str]:
        """(values in [0, 1], "rescaled" or "windowed") of a high-bit PNG/TIFF image."""
        if self.window is None:
            return np.clip(values / (2**self.bits - 1), 0.0, 1.0), "rescaled"
        return linear_window(values, *self.window), "windowed"

    def scale_dicom(self, frame: DicomFrame) -> tuple[np.ndarray, str]:
        """(values in [0, 1], "rescaled" or "windowed") of a grey DICOM frame, MONOCHROME1 inverted."""
        if self.dicom_window is None:
            return frame.shown, "rescaled" if frame.how == "bits" else "windowed"
        shown = linear_window(frame.modality, *self.dicom_window)
        return (1.0 - shown if frame.inverted else shown), "windowed"

    def to_json(self) -> dict:
        """The rule as the manifest records it."""
        document: dict = {"rule": self.rule.value}
        if self.rule is IntensityRule.auto:
            document.update(high_bit_range=[0, 2**self.bits - 1], dicom="each file's VOI LUT or first window")
        else:
            document.update(window=_listed(self.window), dicom_window=_listed(self.dicom_window))
        return document


def _listed(window: tuple[float, float] | None) -> list[float] | None:
    return None if window is None else [round(float(v), 6) for v in window]


def linear_window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """(values - low) / (high - low), clipped to [0, 1]: MONAI's ScaleIntensityRange onto [0, 1]."""
    return np.clip((np.asarray(values, dtype=np.float64) - low) / max(high - low, 1e-12), 0.0, 1.0)


def bits_for(maximum: float) -> int:
    """Bits needed for the largest value (at least 8): 4095 -> 12, 4096 -> 13, 65535 -> 16."""
    return max(8, int(max(maximum, 0)).bit_length())


def summarise(values: np.ndarray) -> np.ndarray:
    """An image's value distribution as its quantiles at PERCENTILE_LEVELS (pooled by `pooled_percentiles`)."""
    return np.percentile(np.asarray(values, dtype=np.float64), PERCENTILE_LEVELS)


def pooled_percentiles(summaries: list[tuple[np.ndarray, int]], levels: tuple[float, float]) -> tuple[float, float]:
    """The `levels` percentiles of the dataset's pooled values, from each image's (quantiles, pixels).

    Each quantile point stands for pixels / len(PERCENTILE_LEVELS) of its image, so large images
    weigh more, as when all values were pooled; exact to within one quantile step of each image.
    """
    points = np.concatenate([quantiles for quantiles, _ in summaries])
    weights = np.concatenate([np.full(len(quantiles), pixels / len(quantiles)) for quantiles, pixels in summaries])
    order = np.argsort(points, kind="stable")
    cumulative = (np.cumsum(weights[order]) - 0.5 * weights[order]) / weights.sum()
    return tuple(float(np.interp(level / 100.0, cumulative, points[order])) for level in levels)


def exposure(histogram: np.ndarray) -> str | None:
    """"near-black", "saturated" or None for a stored image's 256-bin grey-level histogram."""
    total = histogram.sum()
    if total == 0:
        return None
    if np.searchsorted(np.cumsum(histogram), 0.99 * total) < NEAR_BLACK_LEVEL:
        return "near-black"
    if histogram[255] > SATURATED_FRACTION * total:
        return "saturated"
    return None


class IntensityRecord:
    """What the rule did, per class, as the manifest's `intensity` section records it.

    Per class: the sources by kind, how many were windowed, rescaled from a bit range or
    inverted (MONOCHROME1), and the stored grey levels' 1st/50th/99th percentiles and range.
    Only counts and grey levels: nothing of a file's header.
    """

    KINDS = ("8-bit", "high-bit", "dicom")

    def __init__(self, classes: list[str], intensity: Intensity, channels_note: str) -> None:
        self.intensity, self.channels_note = intensity, channels_note
        self.counts = {name: {key: 0 for key in (*self.KINDS, "windowed", "rescaled", "inverted")} for name in classes}
        self.histograms = {name: np.zeros(256, dtype=np.int64) for name in classes}
        self.flagged: dict[str, list[str]] = {"near-black": [], "saturated": []}
        self.colourless = self.images = 0

    def add(self, class_name: str, relpath: str, kind: str, how: str | None, inverted: bool,
            histogram: np.ndarray, colourless: bool) -> None:
        """One stored image: its source kind, rendering, grey-level histogram (256 bins)."""
        counts = self.counts[class_name]
        counts[kind] += 1
        if how is not None:
            counts[how] += 1
        counts["inverted"] += inverted
        self.histograms[class_name] += histogram
        flag = exposure(histogram)
        if flag is not None:
            self.flagged[flag].append(relpath)
        self.images += 1
        self.colourless += colourless

    def warnings(self, channels: int) -> list[str]:
        """One line per thing a user should act on: near-black or saturated images, or grey
        images stored as RGB."""
        lines = []
        if channels == 3 and self.images and self.colourless == self.images:
            lines.append("note: every image has R = G = B (grey stored as colour); --channels 1 stores and "
                         "trains on a third of the data")
        advice = {"near-black": f"99 % of their pixels below grey level {NEAR_BLACK_LEVEL} of 255",
                  "saturated": f"over {SATURATED_FRACTION:.0%} of their pixels at 255"}
        for flag, paths in self.flagged.items():
            if paths:
                shown = ", ".join(sorted(paths)[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
                lines.append(f"warning: {len(paths)} image(s) come out {flag} ({advice[flag]}): {shown}; check the "
                             f"intensity rule (--intensity {self.intensity.rule.value}; try --intensity window "
                             f"--window LOW,HIGH or --intensity percentile); 'ddpm-data stats' lists them")
        return lines

    def to_json(self) -> dict:
        classes = {}
        for name, histogram in self.histograms.items():
            cumulative = np.cumsum(histogram)
            levels = {f"p{p}": int(np.searchsorted(cumulative, p / 100 * cumulative[-1])) if cumulative[-1] else None
                      for p in (1, 50, 99)}
            present = np.flatnonzero(histogram)
            grey_range = [int(present[0]), int(present[-1])] if present.size else None
            classes[name] = {**self.counts[name], "grey_levels": {**levels, "range": grey_range}}
        return {**self.intensity.to_json(), "channels": self.channels_note, "classes": classes,
                "near_black": sorted(self.flagged["near-black"]), "saturated": sorted(self.flagged["saturated"])}
