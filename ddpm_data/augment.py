"""Batched, per-sample random augmentation on the batch's device, with the parameters reported.

One call turns a reader batch, uint8 (N, C, S, S) at the stored size, into float (N, C, size, size)
in [-1, 1]. Per sample: an integer `size` crop out of the stored margin, horizontal/vertical flip,
rotation about the crop centre, optional zoom, then brightness and contrast jitter (torchvision
`ColorJitter`'s factors and order, as one affine map per sample). The geometric part is one 2x3
matrix per sample and the image is resampled once. The default `fourier` turns by three exact
Fourier-shift shears. With `shifted-linear` interpolation (Blu, Thevenaz, Unser 2004; 3-5x
faster) the mirror-padded batch is first turned into coefficients by a short recursive prefilter,
then sampled bilinearly at a grid shifted by TAU ~ 0.21 px: the cost of bilinear plus four passes
over the batch, and on average every frequency keeps its power (bilinear weights halve it near
Nyquist). `bilinear`/`bicubic` are `F.grid_sample` modes with
reflection padding. Rotated corners show mirrored content, never a constant colour. Samples whose
transform is only an integer crop plus flips are copied by slicing, bit-exact, without resampling.
Where a zoom shrinks the content (more than one stored pixel per output pixel) the source is first
blurred with a Gaussian of sigma 0.5 sqrt(z^2 - 1) so it does not alias; crop, flips and rotation
keep the pixel scale at 1 and need no blur.

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
# Shifted linear interpolation (Blu, Thevenaz, Unser 2004, "Linear interpolation revitalized", IEEE TIP 13(5)):
# f(u) = sum_k c[k] beta1(u - k - TAU), the coefficients from (1 - TAU) c[k] + TAU c[k-1] = f[k].
SHIFT_TAU = 0.5 - math.sqrt(3) / 6  # ~0.2113: their optimal shift (least asymptotic error)
SHIFT_POLE = 2 - math.sqrt(3)  # TAU / (1 - TAU): c[k] = (f[k] - TAU c[k-1]) / (1 - TAU) decays as (-POLE)^j
PREFILTER_STAGES = 2  # the recursion's first 2**2 = 4 taps: the gain is off by at most 2 POLE**4 / (1 - POLE**4) ~ 1 %
CACHE_BYTES = 1 << 20  # the CPU prefilters this many bytes of samples at a time: its passes then stay in L2
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
        centre, size = pad + (self.size - 1) / 2, self.size  # the crop's centre, where the shears turn
        a, b = (torch.from_numpy(amount).to(images.device, torch.float32) for amount in (a, b))
        windows = _shear(_shear(windows, a, -1, centre), b, -2, centre)
        rows = _shear(windows[..., pad : pad + size, :], a, -1, centre, first_line=pad)  # rows shift alone: the crop's
        crop = rows[..., pad : pad + size]
        return _crops(crop, [(0, 0)] * len(crop), size, draw["vflip"], draw["hflip"])

    def _resample(self, images: torch.Tensor, draw: dict[str, np.ndarray]) -> torch.Tensor:
        """One resampling of the composed crop/flip/rotation/zoom map: float (N, C, size, size) in [0, 255]."""
        zoom = np.exp(draw["log_zoom"])
        shrink = np.flatnonzero(zoom > 1)
        if self.config.interpolation in (Interpolation.shifted_linear, Interpolation.fourier):
            coefficients, origin = self._coefficients(images, zoom, shrink, self._reach(draw, zoom, images.shape[-1]))
            theta = torch.from_numpy(self._theta(draw, zoom, coefficients.shape[-1], origin)).to(images.device)
            # zeros padding is never read (the coefficients cover the reach) and costs less than reflection
            return F.grid_sample(coefficients, self._grid(theta), mode="bilinear", padding_mode="zeros",
                                 align_corners=False)
        source = self._antialias(images.float(), zoom, shrink) if len(shrink) else images.float()
        theta = torch.from_numpy(self._theta(draw, zoom, images.shape[-1])).to(images.device)
        mode = self.config.interpolation.value
        return F.grid_sample(source, self._grid(theta), mode=mode, padding_mode="reflection", align_corners=False)

    def _coefficients(self, images: torch.Tensor, zoom: np.ndarray, shrink: np.ndarray,
                      reach: int) -> tuple[torch.Tensor, float]:
        """Shifted-linear coefficients of the mirror-padded batch: (float (N, C, E, E), origin).

        Stored pixel u is coefficient u + origin (the prefilter's delay and the shift TAU included);
        the mirror padding reaches `reach` pixels beyond the stored image, plus the bilinear kernel's one.
        """
        lag = 2**PREFILTER_STAGES - 1
        pad = reach + 1 + lag
        n, channels, stored = images.shape[0], images.shape[1], images.shape[-1]
        extent = stored + 2 * pad - lag
        coefficients = torch.empty((n, channels, extent, extent), dtype=torch.float32, device=images.device)
        blurred = self._antialias(images.float(), zoom, shrink) if len(shrink) else None
        chunk = n if images.is_cuda else max(1, CACHE_BYTES // (4 * channels * (stored + 2 * pad) ** 2))
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            if blurred is None:
                source = _reflect_pad(images[rows], pad).float()  # uint8: a quarter of the bytes to mirror
            else:
                source = _reflect_pad(blurred[rows], pad)
            shifted_linear_prefilter(source, out=coefficients[rows])
        return coefficients, pad - lag - SHIFT_TAU

    @staticmethod
    def _antialias(source: torch.Tensor, zoom: np.ndarray, shrink: np.ndarray) -> torch.Tensor:
        """Blur the samples whose zoom shrinks the content; `source` float (N, C, S, S), changed in place."""
        # The bilinear kernel already smooths with sigma ~0.5 px; add what the scale z needs.
        index = torch.from_numpy(shrink).to(source.device)
        sigma = torch.from_numpy(0.5 * np.sqrt(zoom[shrink] ** 2 - 1)).to(source.device)
        source.index_copy_(0, index, _gaussian_blur(source.index_select(0, index), sigma))
        return source

    def _reach(self, draw: dict[str, np.ndarray], zoom: np.ndarray, stored: int) -> int:
        """Pixels beyond the stored image that the batch's output corners map to (0 if none)."""
        cos, sin = np.abs(np.cos(draw["angle"])), np.abs(np.sin(draw["angle"]))
        half = zoom * (self.size - 1) / 2 * (cos + sin)  # corner extent from the crop centre, per axis
        centre = draw["offset"] + (self.size - 1) / 2  # (n, 2)
        beyond = np.maximum(half[:, None] - centre, centre + half[:, None] - (stored - 1))
        return max(0, int(math.ceil(float(beyond.max()))))

    def _theta(self, draw: dict[str, np.ndarray], zoom: np.ndarray, extent: int, origin: float = 0.0) -> np.ndarray:
        """(N, 2, 3) float32 affine maps from output positions into an `extent`-pixel source, grid_sample's units.

        Output pixel j maps to stored pixel offset + c + M (j - c), c = (size - 1)/2, M = zoom R F
        (R rotation, F flips), which is index u + origin of the source; normalised (align_corners=False)
        theta = [size/E M | 2/E (offset + origin - (E - size)/2)], E = extent.
        """
        cos, sin = np.cos(draw["angle"]), np.sin(draw["angle"])
        fx, fy = 1 - 2 * draw["hflip"], 1 - 2 * draw["vflip"]
        scale = zoom * self.size / extent
        shift = (draw["offset"] + origin - (extent - self.size) / 2) * (2 / extent)
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


def shifted_linear_prefilter(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Shifted-linear coefficients of float samples (..., H, W): (..., H - K, W - K), K = 2**PREFILTER_STAGES - 1.

    Along each axis c[k] = (f[k] - TAU c[k-1]) / (1 - TAU) = (1 + POLE) sum_j (-POLE)^j f[k-j], cut
    after 2**stages taps as the product of stages (1 + q z^-L), q = (-POLE)^L, L = 1, 2, 4, ...
    (one add each), then rescaled to a gain of 1 at frequency 0, so flat images stay flat. Output
    index i holds the coefficient of input index i + K (the first K samples only feed the recursion).
    """
    gain = 1.0
    for dim in (-1, -2):
        for stage in range(PREFILTER_STAGES):
            lag = 2**stage
            q = (-SHIFT_POLE) ** lag
            kept = x.shape[dim] - lag
            last = dim == -2 and stage == PREFILTER_STAGES - 1
            x = torch.add(x.narrow(dim, lag, kept), x.narrow(dim, 0, kept), alpha=q, out=out if last else None)
            gain *= 1 + q
    return x.mul_(1 / gain)


def _shear(x: torch.Tensor, amount: torch.Tensor, dim: int, centre: float, first_line: int = 0) -> torch.Tensor:
    """Shift each line along `dim` by amount[n] * (its position across - centre), exactly (phase ramp).

    x (N, C, H, W); dim -1: row y is read at x + amount (y - c); dim -2: column x at y + amount (x - c).
    `first_line`: the position across of x's first line (x may hold only some lines of a window).
    """
    if dim == -2:
        return _shear(x.transpose(-1, -2), amount, -1, centre, first_line).transpose(-1, -2)
    length = x.shape[-1]
    across = torch.arange(x.shape[-2], device=x.device, dtype=torch.float32) + first_line - centre
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
