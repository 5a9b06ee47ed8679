"""Jaggedness: gradient energy that staircase edges put on the 0/90 degree axes, beyond real images'.

What it measures. A staircase ("jaggy") boundary is made of short horizontal and vertical steps,
whatever direction the boundary runs in. Its gradient energy therefore sits on the pixel axes.
A smooth boundary puts its gradient energy along its own normal, and over a set of images with
boundaries in every direction, that energy is spread evenly over the angles. The measure is the
fourth circular harmonic of the distribution of gradient energy over orientation: for each
pixel, |g|^2 cos(4 theta), where theta is the gradient direction. This is +|g|^2 on the axes
(0, 90, 180, 270 degrees), -|g|^2 on the diagonals, and 0 on average over isotropic content:

    a_i = mean over the pixels of image i of |g|^2 cos(4 theta)
        = mean of ((gx^2 - gy^2)^2 - (2 gx gy)^2) / (gx^2 + gy^2)

The gradients are the evaluator's Sobel gradients of the luminance (the channel mean, in [-1, 1]),
with BORDER px dropped at the edges, as in `ddpm_eval.edges`. The result is given relative to
the real images of the same class:

    jaggedness = 100 * (mean_i a_i(candidates) - mean_i a_i(real)) / mean_i E_i(real),

where E_i is the mean |g|^2 of image i. The unit is per cent of the real images' gradient energy:
0 means the same axis preference as real images, +20 means that the extra axis-aligned gradient
energy equals a fifth of all the gradient energy real images have, and a value below 0 means
less axis preference than real.

Why this form. The controls it was designed on are 160 sample images (`ddpm-data synth`, 128 px)
measured against themselves. The evaluator's existing numbers did not separate the controls
(docs/study.md). This measure does, clearly:

| control (128 px display size, `python -m ddpm_study.controls`) | jaggedness | s.e. |
|---|---|---|
| real images                                                     |   0.0      | 0.2  |
| downsampled to 40 px (LANCZOS), nearest-neighbour upscaled      | +20.3      | 0.9  |
| downsampled to 40 px, bicubic upscaled (soft)                   |  -0.8      | 0.1  |
| downsampled to 96 px, nearest-neighbour upscaled                |  +7.0      | 0.4  |
| downsampled to 96 px, bicubic upscaled                          |  +0.1      | 0.1  |

- The edge-roughness angle of `ddpm_eval.edges` compares each pixel with a structure tensor at
  sigma = 1.5 px. That tensor follows a 3 px long stair step, so nearest-neighbour staircases
  look *straighter* than real texture there. The measure here uses no neighbourhood at all, so it
  has no scale to tune, and it sees steps of any length.
- Energy, not a histogram of angles. The histogram (`edge_orientation_distance`) counts every
  strong edge alike. A separable interpolator such as bicubic leaves blobs faintly square: their
  own angle histogram leans towards the axes (own-energy anisotropy 0.06 against 0.03 for real).
  Weighting by |g|^2 and dividing by the *real* images' gradient energy, not the candidate's, keeps
  such faint, soft steps small, while hard steps count in full. So the soft control comes out at
  or below real, and a blurred set comes out below real.
- Isotropic noise puts as much energy on the diagonals as on the axes. It raises |g|^2 but leaves
  the harmonic at about 0, so noise is not reported as jaggedness; `spectrum_hf_ratio` reports
  noise. A data set whose real images are themselves axis-aligned (text, grids) is accounted for,
  because the candidates' value is compared with the real images'.

No published metric is used here. The idea is close to blocking-artefact measures, which find
energy in horizontal and vertical pixel differences (Wang, Bovik & Evans 2000, "Blind measurement
of blocking artifacts in images", ICIP). Those measures assume a block grid with a fixed period.
The measure here does not: nearest-neighbour upscaling by 3.2, or a generator's staircases, have
no fixed period.

a_i is a mean over images, so the standard error of the mean is the noise over sample images
(std / sqrt(n)); a bootstrap over images would give the same number.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

BORDER = 3  # px ignored at the border, where reflect padding invents axis-aligned edges
_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


@dataclass(frozen=True)
class AxisEnergy:
    """Per-image sums behind the measure: both arrays are (N,) float64."""

    axis: np.ndarray  # mean |g|^2 cos(4 theta) per image (gradients of luminance in [-1, 1] units)
    gradient: np.ndarray  # mean |g|^2 per image


@dataclass(frozen=True)
class Jaggedness:
    value: float  # per cent of the real images' gradient energy; 0 = like real, > 0 jaggier
    standard_error: float  # same units; the noise over sample images
    n: int  # images measured


def axis_energy(images: torch.Tensor, chunk: int = 128) -> AxisEnergy:
    """Per-image axis and gradient energy of (N, C, H, W) float images in [-1, 1] (luminance = channel mean)."""
    if images.shape[-1] <= 2 * BORDER or images.shape[-2] <= 2 * BORDER:
        raise ValueError(f"jaggedness: images of {tuple(images.shape[-2:])} px are too small (need > {2 * BORDER} px)")
    kx = _SOBEL.view(1, 1, 3, 3)
    ky = _SOBEL.t().contiguous().view(1, 1, 3, 3)
    axis, gradient = [], []
    for start in range(0, len(images), chunk):
        luminance = images[start : start + chunk].float().mean(dim=1, keepdim=True).cpu()
        padded = F.pad(luminance, (1, 1, 1, 1), mode="reflect")
        gx = F.conv2d(padded, kx)[:, 0, BORDER:-BORDER, BORDER:-BORDER].double()
        gy = F.conv2d(padded, ky)[:, 0, BORDER:-BORDER, BORDER:-BORDER].double()
        energy = gx * gx + gy * gy
        harmonic = ((gx * gx - gy * gy) ** 2 - (2 * gx * gy) ** 2) / energy.clamp_min(1e-12)  # |g|^2 cos(4 theta)
        axis.append(harmonic.mean(dim=(1, 2)).numpy())
        gradient.append(energy.mean(dim=(1, 2)).numpy())
    return AxisEnergy(np.concatenate(axis), np.concatenate(gradient))


def jaggedness(candidates: AxisEnergy, real: AxisEnergy) -> Jaggedness:
    """The measure of `candidates` against `real` (both from `axis_energy`), per cent of real gradient energy."""
    n = len(candidates.axis)
    if n == 0 or len(real.axis) == 0:
        raise ValueError("jaggedness: needs at least one candidate and one real image")
    scale = 100.0 / max(float(real.gradient.mean()), 1e-12)
    value = (float(candidates.axis.mean()) - float(real.axis.mean())) * scale
    error = float(candidates.axis.std(ddof=1)) / np.sqrt(n) * scale if n > 1 else float("nan")
    return Jaggedness(value, error, n)


def class_references(real: torch.Tensor, labels: np.ndarray) -> dict[int, AxisEnergy]:
    """`axis_energy` of the real (N, C, H, W) images of each class in `labels` (N,): computed once, measured against often."""
    labels = np.asarray(labels)
    return {int(label): axis_energy(real[torch.from_numpy(labels == label)]) for label in np.unique(labels)}


def per_class_jaggedness(candidates: torch.Tensor, labels: np.ndarray,
                         references: dict[int, AxisEnergy]) -> tuple[Jaggedness, dict[int, Jaggedness]]:
    """Jaggedness of each class of (N, C, H, W) `candidates` (labels (N,)) against that class's real
    images (`class_references`), and the unweighted mean over classes, as `ddpm-eval` averages.

    The mean's standard error combines the classes' as independent: sqrt(sum se^2) / classes.
    """
    labels = np.asarray(labels)
    per_class = {}
    for label in sorted(int(label) for label in np.unique(labels)):
        if label not in references:
            raise ValueError(f"jaggedness: no real images of class {label}")
        per_class[label] = jaggedness(axis_energy(candidates[torch.from_numpy(labels == label)]), references[label])
    values = list(per_class.values())
    mean = float(np.mean([result.value for result in values]))
    error = float(np.sqrt(np.sum([result.standard_error ** 2 for result in values]))) / len(values)
    return Jaggedness(mean, error, sum(result.n for result in values)), per_class
