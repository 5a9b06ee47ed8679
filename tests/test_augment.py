"""Batched augmentation: identity, exactness, padding, range, reported parameters, determinism."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddpm_data.augment import (PARAM_NAMES, PREFILTER_STAGES, SHIFT_POLE, SHIFT_TAU, AugmentConfig, Augmenter,
                                Interpolation, center_crop, shifted_linear_prefilter)
from ddpm_data.synth import render
from ddpm_data.spectrum import high_frequency_ratio, radial_power_spectrum

SIZE, STORED = 16, 20
OFF = dict(crop=False, hflip=0.0, vflip=0.0, degrees=0.0, zoom=0.0, brightness=0.0, contrast=0.0)


def noise(n: int = 32, channels: int = 3, stored: int = STORED, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, stored, stored), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def run(config: AugmentConfig, images: torch.Tensor, seed: int = 1, size: int = SIZE):
    return Augmenter(config, size)(images, torch.Generator().manual_seed(seed))


def column(params: torch.Tensor, name: str) -> torch.Tensor:
    return params[:, PARAM_NAMES.index(name)]


def test_none_is_the_centre_crop_with_zero_params():
    images = noise()
    x, params = run(AugmentConfig.none(), images)
    offset = (STORED - SIZE) // 2
    expected = images[..., offset : offset + SIZE, offset : offset + SIZE].float() / 127.5 - 1
    assert torch.equal(x, center_crop(images, SIZE))
    assert torch.allclose(x, expected, atol=1e-6)
    assert params.shape == (32, Augmenter.num_params) and not params.any()


def test_flips_are_exact():
    images = noise()
    centre = center_crop(images, SIZE)
    x, params = run(AugmentConfig(**{**OFF, "hflip": 1.0}), images)
    assert torch.equal(x, centre.flip(-1)) and bool((column(params, "hflip") == 1).all())
    x, params = run(AugmentConfig(**{**OFF, "vflip": 1.0}), images)
    assert torch.equal(x, centre.flip(-2)) and bool((column(params, "vflip") == 1).all())
    x, params = run(AugmentConfig(**{**OFF, "hflip": 0.5}), images)
    flipped = column(params, "hflip").bool()
    assert 0 < int(flipped.sum()) < len(images)
    assert torch.equal(x[flipped], centre[flipped].flip(-1)) and torch.equal(x[~flipped], centre[~flipped])


def test_integer_crops_are_exact_and_reported():
    images = noise()
    margin = STORED - SIZE
    x, params = run(AugmentConfig(**{**OFF, "crop": True}), images)
    half = margin - margin // 2
    offsets = torch.round(params[:, 4:6] * half + margin // 2).long()
    assert int(offsets.min()) == 0 and int(offsets.max()) == margin  # 32 draws cover both ends of 0..4
    assert float(params[:, 4:6].abs().max()) <= 1.0
    for i, (ox, oy) in enumerate(offsets.tolist()):
        crop = images[i, :, oy : oy + SIZE, ox : ox + SIZE].float() / 127.5 - 1
        assert torch.allclose(x[i], crop, atol=1e-6)


# Shifted linear's prefilter keeps 2**stages taps of its recursion: per axis the samples come back
# off by POLE^L / (1 - POLE^L) (f[k] - f[k-L]), L = 2**stages, at most 2 of those for two axes in [-1, 1].
TRUNCATION = 4 * SHIFT_POLE ** 2**PREFILTER_STAGES / (1 - SHIFT_POLE ** 2**PREFILTER_STAGES)


@pytest.mark.parametrize("interpolation", list(Interpolation))
def test_resampling_agrees_with_the_exact_path(interpolation):
    """A negligible rotation is resampled; it must land on the pixels the exact slicing path copies."""
    images = noise()
    flips = {**OFF, "crop": True, "hflip": 0.5, "vflip": 0.5, "interpolation": interpolation}
    exact, _ = run(AugmentConfig(**flips), images)
    resampled, params = run(AugmentConfig(**{**flips, "degrees": 1e-6}), images)
    assert bool((column(params, "rot_sin") != 0).all())
    tolerance = TRUNCATION if interpolation == Interpolation.shifted_linear else 1e-3
    assert (resampled - exact).abs().max() < tolerance < 0.05


def test_shifted_linear_prefilter_inverts_the_interpolation():
    """(1 - TAU) c[k] + TAU c[k-1] = f[k] along each axis (Blu et al. 2004), up to the truncation."""
    f = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0)) * 2 - 1
    c = shifted_linear_prefilter(f.clone())
    lag = 2**PREFILTER_STAGES - 1
    x = (1 - SHIFT_TAU) * c[..., 1:] + SHIFT_TAU * c[..., :-1]
    xy = (1 - SHIFT_TAU) * x[..., 1:, :] + SHIFT_TAU * x[..., :-1, :]
    assert (xy - f[..., lag + 1 :, lag + 1 :]).abs().max() < TRUNCATION
    assert shifted_linear_prefilter(torch.full((1, 1, 9, 9), 0.7)).sub(0.7).abs().max() < 1e-6  # gain 1 at 0
    # the control: without the prefilter, bilinear weights at the shifted grid are off by ~TAU |f[k] - f[k-1]|
    x = (1 - SHIFT_TAU) * f[..., 1:] + SHIFT_TAU * f[..., :-1]
    assert (x - f[..., 1:]).abs().max() > 10 * TRUNCATION


@pytest.mark.parametrize("interpolation, tolerance", [(Interpolation.shifted_linear, 8.0), (Interpolation.fourier, 5.0),
                                                      (Interpolation.bicubic, 8.0), (Interpolation.bilinear, 8.0)])
def test_rotation_matches_the_analytic_rotation_of_a_band_limited_pattern(interpolation, tolerance):
    """A plane wave of 0.1 cycles/px, cropped, flipped and turned, against the wave evaluated where the
    output pixels land (grey levels, amplitude 100). Half a pixel off, or a wrong sign, errs by ~30."""
    stored, size, n = 72, 48, 16
    rng = np.random.default_rng(0)
    direction, phase = rng.uniform(0, np.pi, n), rng.uniform(0, 2 * np.pi, n)
    frequency = 0.1 * np.stack([np.cos(direction), np.sin(direction)], axis=1)  # (n, 2) cycles/px

    def wave(u: np.ndarray, v: np.ndarray) -> np.ndarray:  # (n, H, W) positions in stored pixels
        return 127.5 + 100 * np.cos(2 * np.pi * (frequency[:, 0, None, None] * u + frequency[:, 1, None, None] * v)
                                    + phase[:, None, None])

    ys, xs = np.mgrid[0:stored, 0:stored].astype(float)
    images = torch.from_numpy(np.round(wave(xs[None], ys[None]))).to(torch.uint8)[:, None]
    config = AugmentConfig(**{**OFF, "crop": True, "hflip": 0.5, "vflip": 0.5, "degrees": 30.0,
                              "interpolation": interpolation})
    x, params = run(config, images, seed=3, size=size)
    angle = torch.atan2(column(params, "rot_sin"), column(params, "rot_cos_m1") + 1).double().numpy()
    offset = np.round(params[:, 4:6].double().numpy() * (stored - size - (stored - size) // 2) + (stored - size) // 2)
    flip_x, flip_y = 1 - 2 * column(params, "hflip").double().numpy(), 1 - 2 * column(params, "vflip").double().numpy()
    centre = (size - 1) / 2
    jy, jx = np.mgrid[0:size, 0:size] - centre
    # output pixel j lands on stored pixel offset + c + R F (j - c), as documented in Augmenter._theta
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    fx, fy = flip_x[:, None, None] * jx, flip_y[:, None, None] * jy
    u = offset[:, 0, None, None] + centre + cos * fx - sin * fy
    v = offset[:, 1, None, None] + centre + sin * fx + cos * fy
    error = np.abs((x[:, 0].double().numpy() + 1) * 127.5 - wave(u, v))[:, 8:-8, 8:-8]
    assert float(np.degrees(np.abs(angle)).max()) > 20
    assert error.max() < tolerance


@pytest.mark.parametrize("interpolation", list(Interpolation))
def test_rotation_pads_by_reflection_not_a_constant(interpolation):
    flat = torch.full((8, 3, STORED, STORED), 200, dtype=torch.uint8)
    for turn in ({"degrees": 45.0}, {"degrees": 180.0, "zoom": 1.0, "crop": True}):  # the widest reach
        x, params = run(AugmentConfig(**{**OFF, **turn, "interpolation": interpolation}), flat)
        assert bool((column(params, "rot_sin").abs() > 0.1).any())
        assert torch.allclose(x, torch.full_like(x, 200 / 127.5 - 1), atol=1e-5)  # a zero border would give -1
    images = noise(8)
    x, _ = run(AugmentConfig(**{**OFF, "degrees": 45.0, "interpolation": interpolation}), images)
    corners = torch.stack([x[:, :, 0, 0], x[:, :, 0, -1], x[:, :, -1, 0], x[:, :, -1, -1]])
    assert corners.std() > 0.2  # mirrored content, not one fill value


@pytest.mark.parametrize("interpolation", list(Interpolation))
def test_rotation_turns_the_content(interpolation):
    """A bright blob off-centre moves on the circle around the crop centre by the reported angle."""
    ys, xs = torch.meshgrid(torch.arange(45.0), torch.arange(45.0), indexing="ij")
    blob = 255 * torch.exp(-((xs - 30) ** 2 + (ys - 22) ** 2) / (2 * 1.5**2))  # 8 px right of the centre
    images = blob.round().to(torch.uint8).expand(16, 1, 45, 45)  # its mirror images lie outside the window
    x, params = run(AugmentConfig(**{**OFF, "degrees": 90.0, "interpolation": interpolation}), images, size=33)
    angle = torch.atan2(column(params, "rot_sin"), column(params, "rot_cos_m1") + 1)
    ys, xs = torch.meshgrid(torch.arange(33.0), torch.arange(33.0), indexing="ij")
    for i in range(16):
        weights = (x[i, 0] + 1).clamp(min=0)
        cy, cx = float((weights * ys).sum() / weights.sum()) - 16, float((weights * xs).sum() / weights.sum()) - 16
        assert math.hypot(cx, cy) == pytest.approx(8, abs=0.3)
        # output pixel c + R^T v samples the source at c + v: the content turns by -angle
        assert math.atan2(cy, cx) == pytest.approx(-float(angle[i]), abs=0.05)


@pytest.mark.parametrize("interpolation", [Interpolation.shifted_linear, Interpolation.fourier])
def test_rotation_lands_where_bicubic_does_on_smooth_content(interpolation):
    """Same angle convention, crop, flips and quarter turns as the grid_sample path."""
    smooth = F.avg_pool2d(noise(16, stored=40).float(), 5, stride=1, padding=2, count_include_pad=False)
    images = smooth.round().to(torch.uint8)
    for degrees in (10.0, 180.0):
        config = AugmentConfig(**{**OFF, "crop": True, "hflip": 0.5, "vflip": 0.5, "degrees": degrees,
                                  "interpolation": interpolation})
        sharp, params = run(config, images, size=24)
        cubic, cubic_params = run(config.replace(interpolation=Interpolation.bicubic), images, size=24)
        assert torch.equal(params, cubic_params)
        inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))  # corners: the two paddings mirror differently
        assert (sharp - cubic)[inner].abs().mean() < 0.02 < 0.1 < cubic.std()  # unrelated crops differ by ~cubic.std()


def tiles(n: int = 24, stored: int = 36) -> torch.Tensor:
    """uint8 (n, 3, stored, stored) tiles of the bundled sample data's generator (nuclei, fibres: real detail)."""
    rng = np.random.default_rng(0)
    return torch.from_numpy(np.stack([render(rng, stored, abnormal=i % 3 == 0)[0] for i in range(n)])).permute(0, 3, 1, 2)


def augmented_high_frequency_ratio(config: AugmentConfig, images: torch.Tensor, size: int = 32) -> float:
    frequency, plain = radial_power_spectrum(center_crop(images, size))
    x, _ = run(config, images, size=size)
    return high_frequency_ratio(frequency, radial_power_spectrum(x)[1], plain)


@pytest.mark.parametrize("size, stored", [(32, 36), (96, 105)])
def test_default_augmentation_keeps_the_high_frequencies(size, stored):
    images = tiles(stored=stored)
    for config in (AugmentConfig(), AugmentConfig(degrees=180.0), AugmentConfig(zoom=0.1)):
        assert augmented_high_frequency_ratio(config, images, size) == pytest.approx(1.0, abs=0.1)
    # the control: the same rotations through bilinear weights lose a third or more of that power
    assert augmented_high_frequency_ratio(AugmentConfig(interpolation=Interpolation.bilinear), images, size) < 0.75


@pytest.mark.parametrize("interpolation", list(Interpolation))
def test_output_range_and_params_within_bounds(interpolation):
    images = noise(64)
    images[:8] = 255
    images[8:16] = 0
    config = AugmentConfig(degrees=30.0, zoom=0.5, brightness=0.5, contrast=0.5, vflip=0.5, interpolation=interpolation)
    x, params = run(config, images)
    assert x.dtype == torch.float32 and x.shape == (64, 3, SIZE, SIZE)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    angle = torch.atan2(column(params, "rot_sin"), column(params, "rot_cos_m1") + 1)
    assert float(angle.abs().max()) <= math.radians(30) + 1e-6 and float(angle.std()) > 0.1
    assert float(column(params, "log_zoom").abs().max()) <= math.log(1.5) + 1e-6
    for name in ("brightness", "contrast"):
        assert float(column(params, name).abs().max()) <= 0.5 and float(column(params, name).std()) > 0.05
    for name in ("hflip", "vflip"):
        assert set(column(params, name).tolist()) == {0.0, 1.0}


def test_brightness_scales_and_contrast_pulls_to_the_mean():
    images = torch.full((64, 1, STORED, STORED), 100, dtype=torch.uint8)
    x, params = run(AugmentConfig(**{**OFF, "brightness": 0.2}), images)
    expected = 100 * (1 + column(params, "brightness")) / 127.5 - 1
    assert torch.allclose(x[:, 0, 0, 0], expected, atol=1e-5)
    images = noise(64, channels=1) // 4 + 96  # 96..159: no clipping at +-50 % contrast
    x, params = run(AugmentConfig(**{**OFF, "contrast": 0.5}), images)
    base = center_crop(images, SIZE)
    ratio = (x - x.mean(dim=(1, 2, 3), keepdim=True)).std(dim=(1, 2, 3)) / (base - base.mean(dim=(1, 2, 3), keepdim=True)).std(dim=(1, 2, 3))
    assert torch.allclose(ratio, 1 + column(params, "contrast"), atol=1e-4)
    assert torch.allclose(x.mean(dim=(1, 2, 3)), base.mean(dim=(1, 2, 3)), atol=1e-4)


def test_zoom_out_is_antialiased():
    """White noise shrunk ~2x must lose most of its variance (an unfiltered resampling keeps it)."""
    images = noise(64, channels=1, stored=40)
    x, params = run(AugmentConfig(**{**OFF, "zoom": 1.0}), images, size=32)
    shrunk = column(params, "log_zoom") > math.log(1.8)
    assert int(shrunk.sum()) >= 3
    source_std = (images.float() / 127.5 - 1).std()
    assert float(x[shrunk].std(dim=(1, 2, 3)).max()) < 0.45 * float(source_std)


def test_deterministic_per_generator_and_device_independent_draws():
    images = noise()
    config = AugmentConfig(zoom=0.2, vflip=0.5)
    a, pa = run(config, images, seed=7)
    b, pb = run(config, images, seed=7)
    c, pc = run(config, images, seed=8)
    assert torch.equal(a, b) and torch.equal(pa, pb)
    assert not torch.equal(pa, pc)


def test_grey_images_and_bad_input():
    x, _ = run(AugmentConfig(), noise(4, channels=1))
    assert x.shape == (4, 1, SIZE, SIZE)
    with pytest.raises(ValueError, match="uint8"):
        run(AugmentConfig(), noise(4).float())
    with pytest.raises(ValueError, match="smaller than the crop"):
        run(AugmentConfig(), noise(4, stored=12))
    with pytest.raises(ValueError, match="--hflip"):
        AugmentConfig(hflip=1.5)
    with pytest.raises(ValueError, match="--degrees"):
        AugmentConfig(degrees=-1)
    with pytest.raises(ValueError, match="--interpolation 'nearest-ish': unknown; valid: shifted-linear, fourier, bilinear, bicubic"):
        AugmentConfig(interpolation="nearest-ish")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("config", [AugmentConfig(zoom=0.2), AugmentConfig(), AugmentConfig(interpolation="fourier")],
                         ids=["zoom", "shifted-linear", "fourier"])
def test_cuda_matches_cpu(config):
    images = noise()
    cpu, pcpu = run(config, images)
    gpu, pgpu = run(config, images.cuda())
    assert torch.allclose(pcpu, pgpu.cpu(), atol=1e-6)
    assert (cpu - gpu.cpu()).abs().max() < 1e-3



def test_the_last_shear_on_the_crop_rows_alone_equals_the_whole_window():
    from ddpm_data.augment import _shear

    window = torch.rand(4, 3, 52, 52) * 255
    a, b = torch.tensor([0.05, -0.1, 0.2, 0.0]), torch.tensor([-0.1, 0.19, -0.38, 0.0])
    pad, size = 10, 32
    centre = pad + (size - 1) / 2
    sheared = _shear(_shear(window, a, -1, centre), b, -2, centre)
    whole = _shear(sheared, a, -1, centre)[..., pad : pad + size, pad : pad + size]
    rows = _shear(sheared[..., pad : pad + size, :], a, -1, centre, first_line=pad)[..., pad : pad + size]
    assert torch.equal(rows, whole)
