"""Checkerboard: spectral peaks at the frequencies a stride-2 up-sampling repeats its pattern on.

What it measures. A transposed convolution of stride 2 whose kernel does not overlap evenly
paints a pattern of period 2 px on its output (Odena, Dumoulin & Olah 2016, "Deconvolution and
checkerboard artifacts"); the same layer one level lower paints a period of 4 px on the image.
A periodic pattern puts its power on isolated frequencies, so it shows as spikes in the power
spectrum at the checkerboard frequencies

    F = {(u, v) : u, v in {0, N/4, N/2, 3N/4} cycles per image, (u, v) != (0, 0)}

(15 bins of the N x N discrete Fourier transform; N is a multiple of 4). Natural images have a
smooth spectrum there. For each bin, the power of a set of images (luminance, each image's mean
removed) is pooled over the images and taken against the pooled power of its 8 neighbouring bins
(wrapped), and the set is compared bin by bin with real images of the same size:

    R(f)         = sum over i of P_i(f) / sum over i of (mean over g in nbr(f) of P_i(g))
    checkerboard = mean over f in F of R_candidates(f) / R_real(f)

1 = peaks like real images' (none); 2 = on average the checkerboard bins stand twice as far above
their surroundings as in real images. Blur and noise take the neighbours along and stay near 1;
a 2 px checkerboard of +-1.3 grey levels (of 255) on the sample tiles reads about 1.4 and one of
+-2.6 levels about 2.7 (tests). Power is pooled before the ratio because a single image's bin is
as noisy as its power (an exponential variable): pooled, real against real reads 1.00 +- 0.05.

Noise: the standard error is the spread of the value over bootstrap resamples of the candidate
images (BOOTSTRAP draws, fixed seed).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

EPSILON = 1e-12  # power floor, so an exactly flat neighbourhood gives a finite ratio
BOOTSTRAP = 200  # resamples of the candidate images for the standard error


@dataclass(frozen=True)
class Checkerboard:
    value: float  # mean over the bins of R_candidates / R_real; 1 = like real
    standard_error: float  # over bootstrap resamples of the candidate images
    n: int


@dataclass(frozen=True)
class BinPower:
    """Per image (N, 15): the power at each checkerboard bin and the mean power of its 8 neighbours."""

    centre: np.ndarray
    around: np.ndarray

    def ratio(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """R(f) of the images `rows`, pooled: (15,)."""
        return (self.centre[rows].sum(axis=0) + EPSILON) / (self.around[rows].sum(axis=0) + EPSILON)


def checkerboard_bins(size: int) -> list[tuple[int, int]]:
    """The 15 bins F of an N x N transform (N a multiple of 4)."""
    if size % 4 or size < 8:
        raise ValueError(f"checkerboard: images of {size} px; needs a multiple of 4, at least 8")
    steps = [0, size // 4, size // 2, 3 * size // 4]
    return [(u, v) for u in steps for v in steps if (u, v) != (0, 0)]


def bin_power(images: torch.Tensor, chunk: int = 256) -> BinPower:
    """The checkerboard bins' power and their neighbours' of (N, C, H, W) float images with H == W."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"checkerboard: images are {tuple(images.shape[-2:])} px; needs square images")
    size = images.shape[-1]
    bins = checkerboard_bins(size)
    rows = np.array([u for u, _ in bins])
    cols = np.array([v for _, v in bins])
    offsets = [(du, dv) for du in (-1, 0, 1) for dv in (-1, 0, 1) if (du, dv) != (0, 0)]
    centres, arounds = [], []
    for start in range(0, len(images), chunk):
        luminance = images[start : start + chunk].double().mean(dim=1).cpu()
        luminance = luminance - luminance.mean(dim=(1, 2), keepdim=True)
        power = torch.fft.fft2(luminance).abs().square().numpy()
        centres.append(power[:, rows, cols])
        arounds.append(np.mean([power[:, (rows + du) % size, (cols + dv) % size] for du, dv in offsets], axis=0))
    empty = np.zeros((0, len(bins)))
    return BinPower(np.concatenate(centres) if centres else empty, np.concatenate(arounds) if arounds else empty)


def checkerboard(candidates: BinPower, real: BinPower) -> Checkerboard:
    """The measure of `candidates` against `real` (both from `bin_power`, images of one size)."""
    n = len(candidates.centre)
    if n == 0 or len(real.centre) == 0:
        raise ValueError("checkerboard: needs at least one candidate and one real image")
    if candidates.centre.shape[1:] != real.centre.shape[1:]:
        raise ValueError("checkerboard: candidates and real images have different bins")
    reference = real.ratio()
    value = float(np.mean(candidates.ratio() / reference))
    rng = np.random.default_rng(0)
    draws = [np.mean(candidates.ratio(rng.integers(n, size=n)) / reference) for _ in range(BOOTSTRAP)] if n > 1 else []
    return Checkerboard(value, float(np.std(draws, ddof=1)) if draws else float("nan"), n)
