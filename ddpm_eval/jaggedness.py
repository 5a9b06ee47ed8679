"""Jaggedness: the axis-aligned gradient energy that the finest scale adds to an image's own boundaries.

What it measures. A staircase ("jaggy") boundary is made of short horizontal and vertical steps,
whatever direction the boundary runs in. Seen at the pixel scale, its gradient energy sits on the
pixel axes. Seen a little coarser (the image blurred by SCALE px), the steps merge and the energy
turns to the boundary's own normal. A smooth boundary points the same way at both scales. So for
each image i the measure compares its axis preference at the two scales:

    A_i(s)    = sum over pixels of |g_s|^2 cos(4 theta_s) / sum over pixels of |g_s|^2
              = the |g|^2-weighted mean of cos(4 theta), in [-1, 1]
    D_i       = A_i(0) - A_i(SCALE)                          (the image's staircase index)

with g_s the Sobel gradient of the luminance (channel mean, in [-1, 1]) after a Gaussian blur of
s px (s = 0: none), theta_s its direction, and BORDER px dropped at the edges. cos(4 theta) is
+1 on the axes (0, 90, 180, 270 degrees), -1 on the diagonals and 0 on average over directions
spread evenly. The result is given against real images of the same class:

    jaggedness = 100 * (mean_i D_i(candidates) - mean_i D_i(real))

in percentage points of axis preference: 0 = real images' own difference between the scales;
+30 = the finest gradients lean 0.3 further towards the axes than the image's boundaries do (a
45 degree staircase seen against its smoothed self reaches +200); below 0 = finer gradients lean
less to the axes than real ones (blur, noise, smooth interpolation).

Why this form. Two earlier forms failed on real photographs, though both separated our sample tiles:
- Axis energy |g|^2 cos(4 theta) averaged over images and divided by the *real* images' gradient
  energy. Down-sampling a photograph removes most of its fine gradient energy, so a staircase's
  gain was cancelled by the detail it lost. And a photograph's axis energy varies strongly from
  image to image (buildings, brick, text), so the noise was larger than the effect: a 40 px
  staircase scored +10 +- 2.5 against real +1 +- 4.
- The same harmonic divided by each image's own energy (A_i(0) alone) fixes the first cause but
  not the second: the spread of A_i over photographs stays about 4 points.
Taking the difference within each image removes both. A wall of bricks leans to the axes at both
scales, so its D_i is near 0, and the spread over photographs drops about fourfold. A staircase
leans to the axes only at the finest scale. Blur, bicubic or LANCZOS up-sampling and isotropic
noise change the finest scale without favouring the axes, and come out at or below real.

Validated on data it was not designed on (tests/test_eval_jaggedness.py; nine CC0 and public-domain
photographs in tests/data/photos: portraits, a cat, a cup, a launch tower, a retina, brick, grass,
gravel), cut into 99 patches of 128 px; every other patch is the reference and the controls are made
from the others. The tiles are 160 `ddpm-data synth` images of 128 px, split the same way
(`python -m ddpm_study.controls tests/data/photos`, `... DATA`):

| control (display 128 px)                       | photographs   | sample tiles  |
|---|---|---|
| real (the held-out half)                       |  -0.7 +- 1.0  |  -0.1 +- 0.2  |
| 40 px, nearest-neighbour upscaled (staircase)  | +32.0 +- 2.0  | +37.9 +- 0.2  |
| 96 px, nearest-neighbour upscaled              |  +6.7 +- 1.1  |  +6.8 +- 0.2  |
| 40 px, bicubic / LANCZOS / bilinear upscaled   | -0.9 / -4.4 / +0.3 | +2.2 / -0.6 / +1.9 |
| 96 px, bicubic / LANCZOS / bilinear upscaled   | -2.9 / -3.1 / -2.4 | +0.4 / +1.3 / -1.2 |
| Gaussian noise (sigma 12 of 255)               |  -4.7 +- 1.4  |  -0.5 +- 0.2  |

The 40 px staircase stands 8x (photographs) and 16x (tiles) the largest distance of a soft or
noisy control from real above real. The evaluator's other numbers do not separate it: its edge
roughness rates the staircase smoother than real tiles (12.9 against 17.1 degrees), and its
spectrum ratio puts the photographs' staircase below real (0.50), where blur goes.

SCALE = 1.5 px. A finer coarse view (1 px) misses staircases of large steps (20 px shown at 128:
+15 against +32); a coarser one (3 px) raises the soft controls on the tiles (bicubic +4).
A 2x nearest-neighbour enlargement is barely seen (2 px steps, about +3): at that size the 3 px
Sobel window already spans a step.

Close to: blocking-artefact measures (Wang, Bovik & Evans 2000, "Blind measurement of blocking
artifacts in images", ICIP), which find energy in horizontal and vertical pixel differences on a
fixed block grid. Staircases from nearest-neighbour enlargement by 2.4 or from a generator have
no fixed period, so no grid is assumed here. The fourth circular harmonic of the orientation
distribution is the usual measure of four-fold (square-grid) anisotropy.

Noise. D_i is per image, so the standard error over the candidate images, std(D) / sqrt(n),
is the noise of the value (a bootstrap over images gives the same). The real reference's own error
is shared by every candidate set measured against it, so it cancels when two sets are compared.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SCALE = 1.5  # px, Gaussian sigma of the coarse view; see the module docstring for the choice
BORDER = 3  # px ignored at the border, where padding invents axis-aligned edges
_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


@dataclass(frozen=True)
class Jaggedness:
    value: float  # percentage points of axis preference against real; 0 = like real, > 0 jaggier
    standard_error: float  # same units; the noise over the candidate images
    n: int  # images measured


def axis_preference(luminance: torch.Tensor) -> np.ndarray:
    """A_i: the |g|^2-weighted mean of cos(4 theta) of each (N, 1, H, W) image, (N,) float64 in [-1, 1]."""
    padded = F.pad(luminance, (1, 1, 1, 1), mode="reflect")
    gx = F.conv2d(padded, _SOBEL.view(1, 1, 3, 3))[:, 0, BORDER:-BORDER, BORDER:-BORDER].double()
    gy = F.conv2d(padded, _SOBEL.t().contiguous().view(1, 1, 3, 3))[:, 0, BORDER:-BORDER, BORDER:-BORDER].double()
    energy = gx * gx + gy * gy
    harmonic = ((gx * gx - gy * gy) ** 2 - (2 * gx * gy) ** 2) / energy.clamp_min(1e-12)  # |g|^2 cos(4 theta)
    return (harmonic.sum(dim=(1, 2)) / energy.sum(dim=(1, 2)).clamp_min(1e-12)).numpy()


def staircase_index(images: torch.Tensor, chunk: int = 128) -> np.ndarray:
    """D_i = A_i(0) - A_i(SCALE) of (N, C, H, W) float images in [-1, 1]: (N,) float64."""
    from ddpm_eval.filters import gaussian_blur

    if images.shape[-1] <= 2 * BORDER or images.shape[-2] <= 2 * BORDER:
        raise ValueError(f"jaggedness: images of {tuple(images.shape[-2:])} px are too small (need > {2 * BORDER} px)")
    parts = []
    for start in range(0, len(images), chunk):
        luminance = images[start : start + chunk].float().mean(dim=1, keepdim=True).cpu()
        parts.append(axis_preference(luminance) - axis_preference(gaussian_blur(luminance, SCALE)))
    return np.concatenate(parts) if parts else np.zeros(0)


def jaggedness(candidates: np.ndarray, real: np.ndarray) -> Jaggedness:
    """The measure of `candidates` against `real`, both staircase indices (N,) from `staircase_index`."""
    n = len(candidates)
    if n == 0 or len(real) == 0:
        raise ValueError("jaggedness: needs at least one candidate and one real image")
    value = 100.0 * (float(np.mean(candidates)) - float(np.mean(real)))
    error = 100.0 * float(np.std(candidates, ddof=1)) / np.sqrt(n) if n > 1 else float("nan")
    return Jaggedness(value, error, n)


def class_references(real: torch.Tensor, labels: np.ndarray) -> dict[int, np.ndarray]:
    """`staircase_index` of the real (N, C, H, W) images of each class in `labels` (N,): computed once, used often."""
    labels = np.asarray(labels)
    return {int(label): staircase_index(real[torch.from_numpy(labels == label)]) for label in np.unique(labels)}


def per_class_jaggedness(candidates: torch.Tensor, labels: np.ndarray,
                         references: dict[int, np.ndarray]) -> tuple[Jaggedness, dict[int, Jaggedness]]:
    """Jaggedness of each class of (N, C, H, W) `candidates` (labels (N,)) against that class's real
    images (`class_references`), and the unweighted mean over classes, as `ddpm-eval` averages.

    The mean's standard error combines the classes' as independent: sqrt(sum se^2) / classes.
    """
    labels = np.asarray(labels)
    per_class = {}
    for label in sorted(int(label) for label in np.unique(labels)):
        if label not in references:
            raise ValueError(f"jaggedness: no real images of class {label}")
        per_class[label] = jaggedness(staircase_index(candidates[torch.from_numpy(labels == label)]), references[label])
    return mean_over_classes(list(per_class.values())), per_class


def mean_over_classes(results: list[Jaggedness]) -> Jaggedness:
    """The unweighted mean of per-class results; standard error sqrt(sum se^2) / classes."""
    mean = float(np.mean([result.value for result in results]))
    error = float(np.sqrt(np.sum([result.standard_error ** 2 for result in results]))) / len(results)
    return Jaggedness(mean, error, sum(result.n for result in results))
