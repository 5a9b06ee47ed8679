"""ddpm_eval.checkerboard: the measure against its closed form, and the controls it must separate."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm_data.synth import SynthConfig, synthesize
from ddpm_eval.checkerboard import bin_power, checkerboard, checkerboard_bins
from ddpm_study.controls import read_folder


def flat_spectrum_image(size: int, seed: int) -> np.ndarray:
    """A real image whose power is exactly 1 at every frequency but (0, 0)."""
    noise = np.random.default_rng(seed).standard_normal((size, size))
    spectrum = np.fft.fft2(noise)
    spectrum /= np.abs(spectrum)
    spectrum[0, 0] = 0.0
    return np.fft.ifft2(spectrum).real


def as_batch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images))[:, None]


def test_bins_are_the_fifteen_stride_two_frequencies():
    assert checkerboard_bins(40) == [(u, v) for u in (0, 10, 20, 30) for v in (0, 10, 20, 30) if (u, v) != (0, 0)]
    with pytest.raises(ValueError, match="multiple of 4"):
        checkerboard_bins(42)


def test_one_raised_bin_gives_the_closed_form():
    size = 32
    flat = [flat_spectrum_image(size, seed) for seed in range(3)]
    power = bin_power(as_batch(*flat))
    assert power.ratio() == pytest.approx(np.ones(15))  # |X|^2 = N^4 / N^2 ... equal everywhere: R = 1
    raised = []
    for image in flat:
        spectrum = np.fft.fft2(image)
        spectrum[size // 2, size // 2] *= 2.0  # power x4 at the 2 px checkerboard; still a real image
        raised.append(np.fft.ifft2(spectrum).real)
    # R = 4 at one of the 15 bins and 1 elsewhere (no bin of F neighbours another): mean (14 + 4) / 15
    result = checkerboard(bin_power(as_batch(*raised)), power)
    assert result.value == pytest.approx(18 / 15)
    assert result.standard_error == pytest.approx(0.0, abs=1e-9)


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    root = synthesize(SynthConfig(out=tmp_path_factory.mktemp("synth") / "data", normal=32, abnormal=32, size=40,
                                  seed=5, masks=False))
    images, _ = read_folder(root)
    return torch.from_numpy(images).float() / 127.5 - 1.0


def test_real_reads_one_and_faint_checkerboards_are_seen(tiles):
    reference, held_out = bin_power(tiles[::2]), bin_power(tiles[1::2])
    same = checkerboard(held_out, reference)
    assert abs(same.value - 1.0) < 0.1 and same.standard_error < 0.1
    rows, cols = torch.meshgrid(torch.arange(40), torch.arange(40), indexing="ij")
    for pattern in (((rows + cols) % 2 * 2 - 1), (cols % 2 * 2 - 1), ((cols // 2) % 2 * 2 - 1)):  # 2 px both axes, 2 px, 4 px
        faint = checkerboard(bin_power(tiles[1::2] + 0.02 * pattern.float()), reference)  # +-2.6 grey levels
        assert faint.value > 1.4 and faint.value - 1.0 > 3 * faint.standard_error


def test_blur_and_noise_stay_near_one(tiles):
    from ddpm_eval.filters import gaussian_blur

    reference = bin_power(tiles[::2])
    blurred = checkerboard(bin_power(gaussian_blur(tiles[1::2], 1.0)), reference)
    noisy = checkerboard(bin_power(tiles[1::2] + 0.05 * torch.randn_like(tiles[1::2])), reference)
    assert abs(blurred.value - 1.0) < 0.15 and abs(noisy.value - 1.0) < 0.15
