"""Gaussian blur of image batches.

torchvision.transforms.functional.gaussian_blur does the same, but importing torchvision costs
several seconds (it loads torch._dynamo), which every `ddpm-eval` run would pay.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (sigma in px, radius ceil(3 sigma)) of (N, C, H, W) float, reflected borders."""
    radius = max(1, min(math.ceil(3 * sigma), min(images.shape[-2:]) - 1))  # reflect padding needs radius < size
    taps = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    channels = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
