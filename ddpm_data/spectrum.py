"""Azimuthally averaged power spectrum, and how a set's high-frequency tail compares with real images.

Staircase ("jaggy") edges, checkerboard upsampling and aliasing put energy near the Nyquist
frequency (0.5 cycles/pixel) that smooth real edges do not have; blur removes it. Comparing the
tail of the spectrum with the real images' therefore reads in both directions: ratio > 1 means
extra high-frequency energy (jaggies, aliasing, noise), ratio < 1 means over-smoothing.
Durall et al. 2020, "Watch your Up-Convolution", use the same 1-D spectrum to expose upsampling
artefacts of generators.
"""
from __future__ import annotations

import numpy as np
import torch

HIGH_FREQUENCY_START = 0.25  # cycles/pixel; the tail is the upper half of the band below Nyquist (0.5)


def radial_power_spectrum(images: torch.Tensor, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Mean azimuthally averaged power of (N, C, H, W) float images (luminance = channel mean).

    Returns (frequency (B,) in cycles/pixel, power (B,)) for radius bins 1 .. min(H, W) // 2; each
    image has its mean removed and a Hann window applied so borders do not leak into high frequencies.
    """
    height, width = images.shape[-2:]
    window = torch.hann_window(height, periodic=False)[:, None] * torch.hann_window(width, periodic=False)[None, :]
    total = torch.zeros(height, width, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        luminance = images[start : start + chunk].float().mean(dim=1).cpu()
        luminance = luminance - luminance.mean(dim=(-2, -1), keepdim=True)
        power = torch.fft.fft2(luminance * window).abs().square()
        total += power.sum(dim=0).double()
    total /= len(images) * window.square().sum().double()
    side = min(height, width)
    radius = torch.sqrt(torch.fft.fftfreq(height)[:, None] ** 2 + torch.fft.fftfreq(width)[None, :] ** 2)
    bins = torch.round(radius * side).long().flatten()
    keep = bins <= side // 2
    sums = torch.bincount(bins[keep], weights=total.flatten()[keep], minlength=side // 2 + 1)
    counts = torch.bincount(bins[keep], minlength=side // 2 + 1).clamp_min(1)
    power = (sums / counts)[1:].numpy()
    frequency = np.arange(1, side // 2 + 1) / side
    return frequency, power


def high_frequency_ratio(frequency: np.ndarray, power: np.ndarray, reference: np.ndarray) -> float:
    """Power above HIGH_FREQUENCY_START relative to the reference's; 1 = like real, >1 rougher, <1 smoother."""
    tail = frequency >= HIGH_FREQUENCY_START
    return float(power[tail].sum() / max(reference[tail].sum(), 1e-20))


def log_spectrum_distance(power: np.ndarray, reference: np.ndarray) -> float:
    """Mean |log10 power - log10 reference| over all frequency bins (decades); 0 = identical spectra."""
    floor = 1e-20
    return float(np.mean(np.abs(np.log10(np.maximum(power, floor)) - np.log10(np.maximum(reference, floor)))))
