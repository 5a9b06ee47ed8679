"""ddpm_data.spectrum: radial power spectrum and its high-frequency comparison."""
import numpy as np
import torch
from eval_helpers import blur, fresh_real, jaggy, noisy

from ddpm_eval.images import to_float
from ddpm_data.spectrum import high_frequency_ratio, log_spectrum_distance, radial_power_spectrum


def test_frequencies_run_up_to_nyquist():
    frequency, power = radial_power_spectrum(torch.rand(4, 1, 32, 32))
    assert frequency.shape == power.shape == (16,)
    assert frequency[0] == 1 / 32 and frequency[-1] == 0.5


def test_a_pure_tone_peaks_at_its_frequency():
    x = torch.arange(32.0)
    tone = torch.cos(2 * torch.pi * 8 / 32 * x)[None, None, None, :].expand(1, 1, 32, 32)
    frequency, power = radial_power_spectrum(tone)
    assert frequency[np.argmax(power)] == 0.25


def test_high_frequency_ratio_ranks_blur_below_and_jaggies_noise_above_real():
    images, _ = fresh_real(counts=(8, 8))
    reference_images, _ = fresh_real(counts=(8, 8), seed=5)
    frequency, reference = radial_power_spectrum(to_float(reference_images))
    ratio = {name: high_frequency_ratio(frequency, radial_power_spectrum(to_float(x))[1], reference)
             for name, x in {"real": images, "blur": blur(images), "jaggy": jaggy(images), "noise": noisy(images)}.items()}
    assert 0.7 < ratio["real"] < 1.4
    assert ratio["blur"] < 0.3
    assert ratio["jaggy"] > 1.5 and ratio["noise"] > 1.5
    assert log_spectrum_distance(reference, reference) == 0.0
