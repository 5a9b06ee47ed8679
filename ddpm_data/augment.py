"""Batched, per-sample random augmentation on the batch's device, with the parameters reported.

One call turns a reader batch, uint8 (N, C, S, S) at the stored size, into float (N, C, size, size)
in [-1, 1]. Per sample: an integer `size` crop out of the stored margin, horizontal/vertical flip,
rotation about the crop centre, optional zoom, then brightness and contrast jitter (torchvision
`ColorJitter`'s factors and order, as one affine map per sample). With the default `fourier`
interpolation a rotation is three shears by exact Fourier shifts, which keep the image's fine
detail (bilinear weights halve the power near Nyquist); otherwise, and for zoomed samples, the
geometric part is one 2x3 matrix per sample and the image is resampled once (`F.grid_sample`).
Both pad by reflection, so rotated corners show mirrored content instead of a constant colour. Samples whose transform is
only an integer crop plus flips are copied by slicing, bit-exact, without resampling. Where a zoom
shrinks the content (more than one stored pixel per output pixel) the source is first blurred with
a Gaussian of sigma 0.5 sqrt(z^2 - 1) so it does not alias; crop, flips and rotation keep the pixel
scale at 1 and need no blur.

The per-sample parameters (zeros = identity) let the model be conditioned on the augmentation and
asked for un-augmented images at sampling time (non-leaking augmentation, Karras et al. 2022,
"Elucidating the Design Space of Diffusion-Based Generative Models", arXiv 2206.00364, sec. 5).
Written here rather than with torchvision.transforms.v2 because v2 draws one set of parameters per
call (per batch), not per sample, and does not report them.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ddpm_data.config import AUGMENT_PRESETS, AugmentConfig, Interpolation, augment_config  # noqa: F401 (re-exported)

PARAM_NAMES = (
    "hflip",       # 1 if flipped left-right
    "vflip",       # 1 if flipped up-down
    "rot_sin",     # sin(angle)
    "rot_cos_m1",  # cos(angle) - 1
    "crop_dx",     # crop offset from the centre crop, in units of half the margin: [-1, 1]
    "crop_dy",
    "log_zoom",    # log of the zoom factor (> 0: content shrunk)
    "brightness",  # brightness factor - 1
    "contrast",    # contrast factor - 1
)
FOURIER_GUARD = 4  # extra mirrored pixels around the shears' reach, so the periodic wrap's ringing stays outside
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """In place: float in [0, 255] -> [-1, 1]."""
    return x.mul_(2.0 / 255.0).sub_(1.0)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, S, S) -> float (N, C, size, size) in [-1, 1], the centre `size` crop."""
    offset = _margin(images, size) // 2
    crop = images[..., offset : offset + size, offset : offset + size]
    return to_unit_range(crop.float())


def _margin(images: torch.Tensor, size: int) -> int:
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"expected square images (N, C, S, S), got shape {tuple(images.shape)}")
    margin = images.shape[-1] - size
    if margin < 0:
        raise ValueError(f"stored size {images.shape[-1]} is smaller than the crop size {size}")
    return margin


class Augmenter:
    """`augmenter(images_u8, generator) -> (x, params)`; see the module docstring."""

    num_params = len(PARAM_NAMES)

    def __init__(self, config: AugmentConfig, size: int):
        self.config = config
        self.size = size

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (N, C, S, S) on any device -> (float (N, C, size, size) in [-1, 1], float (N, 9)).

        Random numbers come from `generator` (on its own device), a fixed 9 per sample whatever is
        enabled, so the same generator state gives the same batch on every device.
        """
        if images.dtype != torch.uint8:
            raise ValueError(f"augment expects uint8 images, got {images.dtype}")
        margin = _margin(images, self.size)
        draw = self._draw(images.shape[0], margin, generator)
        out = self._geometry(images, draw)
        self._colour_to_unit_range(out, draw)
        params = torch.from_numpy(self._params(draw, margin)).to(images.device)
        return out, params

    # -- random parameters (per-sample scalars: numpy, ~10x less overhead than tiny tensors) ----
    def _draw(self, n: int, margin: int, generator: torch.Generator) -> dict[str, np.ndarray]:
        c = self.config
        u = torch.rand((n, 9), generator=generator, device=generator.device, dtype=torch.float64).cpu().numpy()
        if c.crop:
            offset = np.minimum(np.floor(u[:, 3:5] * (margin + 1)), margin)
        else:
            offset = np.full((n, 2), float(margin // 2))
        return {
            "hflip": (u[:, 0] < c.hflip).astype(np.float64),
            "vflip": (u[:, 1] < c.vflip).astype(np.float64),
            "angle": (2 * u[:, 2] - 1) * math.radians(c.degrees),
            "offset": offset,  # (n, 2) integer-valued x, y of the crop's top-left corner
            "log_zoom": (2 * u[:, 7] - 1) * math.log1p(c.zoom),
            "brightness": 1 + (2 * u[:, 5] - 1) * c.brightness,
            "contrast": 1 + (2 * u[:, 6] - 1) * c.contrast,
            # u[:, 8] is reserved, so adding a transform keeps the random stream's layout
        }

    def _params(self, draw: dict[str, np.ndarray], margin: int) -> np.ndarray:
        half = max(margin - margin // 2, 1)  # so the shift lies in [-1, 1]
        shift = (draw["offset"] - margin // 2) / half
        columns = [
            draw["hflip"],
            draw["vflip"],
            np.sin(draw["angle"]),
            np.cos(draw["angle"]) - 1,
            shift[:, 0],
            shift[:, 1],
            draw["log_zoom"],
            draw["brightness"] - 1,
            draw["contrast"] - 1,
        ]
        return np.stack(columns, axis=1).astype(np.float32)

    # -- geometry ----------------------------------------------------------------------------
    def _geometry(self, images: torch.Tensor, draw: dict[str, np.ndarray]) -> torch.Tensor:
        """Exact copies for integer crop + flips, one resampling for the rest; float in [0, 255]."""
        exact = (draw["angle"] == 0) & (draw["log_zoom"] == 0)
        turned = ~exact & (draw["log_zoom"] == 0) & (self.config.interpolation == Interpolation.fourier)
        groups = [(mask, method) for mask, method in
                  ((exact, self._slice), (turned, self._rotate_fourier), (~exact & ~turned, self._resample)) if mask.any()]
        if len(groups) == 1:
            return groups[0][1](images, draw).float()
        n, channels = images.shape[:2]
        out = torch.empty((n, channels, self.size, self.size), dtype=torch.float32, device=images.device)
        for mask, method in groups:
            rows = np.flatnonzero(mask)
            index = torch.from_numpy(rows).to(images.device)
            part = method(images.index_select(0, index), {key: value[rows] for key, value in draw.items()})
            out.index_copy_(0, index, part.float())
        return out

    def _slice(self, images: torch.Tensor, draw: dict[str, np.ndarray]) -> torch.Tensor:
        """Integer crop and flips by slicing: uint8 (N, C, size, size), bit-exact."""
        return _crops(images, draw["offset"].astype(int).tolist(), self.size, draw["vflip"], draw["hflip"])

    def _rotate_fourier(self, images: torch.Tensor, draw: dict[str, np.ndarray]) -> torch.Tensor:
        """Rotation about the crop centre by exact shifts, then crop and flips: float (N, C, size, size).

        R(phi) = Sx(a) Sy(b) Sx(a), a = -tan(phi/2), b = sin(phi), each shear a shift of every row
        (column) done as a phase ramp on its Fourier transform (Unser, Thevenaz, Yaroslavsky 1995,
        "Convolution-based interpolation for fast, high-quality rotation of images", IEEE TIP 4(10)).
        A shift keeps every frequency's power, where a bilinear kernel halves it near Nyquist.
        Quarter turns are exact rot90s, so |phi| <= 45 degrees. The window around the crop is
        reflect-padded far enough that the shears read only mirrored content, never wrapped-around.
        """
        quarter = np.round(draw["angle"] / (np.pi / 2)).astype(int)
        phi = draw["angle"] - quarter * (np.pi / 2)
        a, b = -np.tan(phi / 2), np.sin(phi)
        pad = _shear_reach(self.size, float(np.abs(a).max()), float(np.abs(b).max())) + FOURIER_GUARD
        side = self.size + 2 * pad
        source = _reflect_pad(images.float(), pad)
        windows = _crops(source, draw["offset"].astype(int).tolist(), side)  # centred on each crop centre
        for turns in (1, 2, 3):
            rows = np.flatnonzero(quarter % 4 == turns)
            if len(rows):
                index = torch.from_numpy(rows).to(images.device)
                windows.index_copy_(0, index, windows.index_select(0, index).rot90(turns, dims=(-2, -1)))
        for amount, dim in ((a, -1), (b, -2), (a, -1)):
            windows = _shear(windows, torch.from_numpy(amount).to(images.device, torch.float32), dim)
        size = self.size
        centre = windows[..., pad : pad + size, pad : pad + size]
        return _crops(centre, [(0, 0)] * len(centre), size, draw["vflip"], draw["hflip"])

    def _resample(self, images: torch.Tensor, draw: dict[str, np.ndarray]) -> torch.Tensor:
        zoom = np.exp(draw["log_zoom"])
        source = images.float()
        shrink = np.flatnonzero(zoom > 1)
        if len(shrink):
            # The bilinear kernel already smooths with sigma ~0.5 px; add what the scale z needs.
            index = torch.from_numpy(shrink).to(images.device)
            sigma = torch.from_numpy(0.5 * np.sqrt(zoom[shrink] ** 2 - 1)).to(images.device)
            source.index_copy_(0, index, _gaussian_blur(source.index_select(0, index), sigma))
        theta = torch.from_numpy(self._theta(draw, zoom, images.shape[-1])).to(images.device)
        mode = "bicubic" if self.config.interpolation == Interpolation.fourier else self.config.interpolation.value
        return F.grid_sample(source, self._grid(theta), mode=mode, padding_mode="reflection", align_corners=False)

    def _theta(self, draw: dict[str, np.ndarray], zoom: np.ndarray, stored: int) -> np.ndarray:
        """(N, 2, 3) float32 affine maps from output to source positions, grid_sample's units.

        Output pixel j maps to source pixel offset + c + M (j - c), c = (size - 1)/2, M = zoom R F
        (R rotation, F flips); normalised (align_corners=False) this is
        theta = [size/S M | 2/S (offset - (S - size)/2)].
        """
        cos, sin = np.cos(draw["angle"]), np.sin(draw["angle"])
        fx, fy = 1 - 2 * draw["hflip"], 1 - 2 * draw["vflip"]
        scale = zoom * self.size / stored
        shift = (draw["offset"] - (stored - self.size) / 2) * (2 / stored)
        rows = [scale * cos * fx, -scale * sin * fy, shift[:, 0], scale * sin * fx, scale * cos * fy, shift[:, 1]]
        return np.stack(rows, axis=1).reshape(-1, 2, 3).astype(np.float32)

    def _grid(self, theta: torch.Tensor) -> torch.Tensor:
        """(N, size, size, 2) sampling positions for `theta` (N, 2, 3), as F.affine_grid."""
        steps = (torch.arange(self.size, device=theta.device, dtype=torch.float32) * 2 + 1) / self.size - 1
        # Per coordinate k, a broadcast add (N, 1, W) + (N, H, 1) written into the interleaved grid:
        # ~3x cheaper than F.affine_grid's batched matmul or tiling tricks on the CPU, same numbers.
        # The grid must be contiguous: grid_sample is ~3x slower on a strided one.
        grid = torch.empty((theta.shape[0], self.size, self.size, 2), device=theta.device)
        for k in range(2):
            rows = theta[:, k, 1, None] * steps + theta[:, k, 2, None]  # (N, H)
            torch.add(theta[:, k, 0, None, None] * steps, rows[:, :, None], out=grid[..., k])
        return grid

    # -- colour ------------------------------------------------------------------------------
    def _colour_to_unit_range(self, x: torch.Tensor, draw: dict[str, np.ndarray]) -> None:
        """In place: float [0, 255] -> brightness b, contrast c -> [-1, 1], as one affine map per sample.

        y = c b x + (1 - c) b m, m the mean grey level of x (torchvision ColorJitter's order), folded
        with the mapping to [-1, 1] into one multiply, one add and one clamp. ColorJitter also clamps
        between the two; that differs only where brightness pushed a pixel past white.
        """
        if self.config.brightness == 0 and self.config.contrast == 0:
            to_unit_range(x).clamp_(-1.0, 1.0)  # the same arithmetic as center_crop: bit-equal crops
            return
        scale = torch.from_numpy(draw["brightness"] * (2.0 / 255.0)).to(x.device, torch.float32)
        shift = torch.full_like(scale, -1.0)
        if self.config.contrast > 0:
            contrast = torch.from_numpy(draw["contrast"]).to(x.device, torch.float32)
            channel_means = x.mean(dim=(2, 3))  # (N, C)
            if x.shape[1] == 3:
                grey = channel_means @ torch.tensor(GRAY_WEIGHTS, device=x.device, dtype=x.dtype)
            else:
                grey = channel_means[:, 0]
            shift = shift + (1 - contrast) * grey * scale
            scale = scale * contrast
        # mul_ + add_: an in-place addcmul (out=x) takes ~3x as long on the CPU
        x.mul_(scale[:, None, None, None]).add_(shift[:, None, None, None]).clamp_(-1.0, 1.0)


def _crops(images: torch.Tensor, offsets: list, size: int, vflip=None, hflip=None) -> torch.Tensor:
    """(N, C, size, size) crops at top-left corners `offsets` [(x, y)], flipped where vflip/hflip are 1.

    A loop of views: on the CPU a batched gather of the same pixels is ~10x slower."""
    n = len(offsets)
    vflip = np.zeros(n) if vflip is None else vflip
    hflip = np.zeros(n) if hflip is None else hflip
    crops = []
    for i, ((x, y), flip_y, flip_x) in enumerate(zip(offsets, vflip, hflip)):
        crop = images[i, :, y : y + size, x : x + size]
        dims = [d for d, flip in ((-2, flip_y), (-1, flip_x)) if flip]
        crops.append(crop.flip(dims) if dims else crop)
    return torch.stack(crops)


def _shear_reach(size: int, a: float, b: float) -> int:
    """Pixels beyond a `size` crop that the shears Sx(a) Sy(b) Sx(a) read from (worst case)."""
    half = size / 2
    reach_x = half * (1 + a) + a * half * (1 + b * (1 + a))  # the last Sx reads |x| <= half (1 + a), etc.
    reach_y = half * (1 + b * (1 + a))
    return int(math.ceil(max(reach_x, reach_y) - half))


def _reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Mirror-pad the last two dims by `pad`, in steps when `pad` exceeds what one reflection allows."""
    while pad > 0:
        step = min(pad, x.shape[-1] - 1)
        x = F.pad(x, (step, step, step, step), mode="reflect")
        pad -= step
    return x


def _shear(x: torch.Tensor, amount: torch.Tensor, dim: int) -> torch.Tensor:
    """Shift each line along `dim` by amount[n] * (its position across - centre), exactly (phase ramp).

    x (N, C, L, L); dim -1: row y is read at x + amount (y - c); dim -2: column x at y + amount (x - c).
    """
    if dim == -2:
        return _shear(x.transpose(-1, -2), amount, -1).transpose(-1, -2)
    length = x.shape[-1]
    across = torch.arange(length, device=x.device, dtype=torch.float32) - (length - 1) / 2
    shift = amount[:, None] * across  # (N, L): per line
    frequency = torch.fft.rfftfreq(length, device=x.device)
    ramp = torch.polar(torch.ones((), device=x.device), 2 * math.pi * shift[:, None, :, None] * frequency)
    return torch.fft.irfft(torch.fft.rfft(x, dim=-1) * ramp, n=length, dim=-1)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma (N,), reflect-padded; sigma 0 = identity."""
    n, channels, height, width = x.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    safe = sigma.to(x.dtype).clamp(min=1e-6)[:, None]
    kernel = torch.exp(-0.5 * (taps / safe) ** 2)
    kernel = torch.where(sigma[:, None] > 0, kernel, (taps == 0).to(x.dtype))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # (N*C, K)
    flat = x.reshape(1, n * channels, height, width)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=n * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=n * channels)
    return flat.reshape(n, channels, height, width)
