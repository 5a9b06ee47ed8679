"""ddpm_eval.swd: Laplacian pyramid, level sizes, sliced Wasserstein distances."""
import torch

from ddpm_eval.swd import PyramidSWD, _expand, laplacian_pyramid, level_sizes, sliced_wasserstein, sorted_projections


def _smooth_images(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=generator) * 2 - 1
    return torch.nn.functional.interpolate(low, size=32, mode="bilinear", align_corners=False)


def test_level_sizes_halve_down_to_the_minimum():
    assert level_sizes(32, 16) == [32, 16]
    assert level_sizes(96, 16) == [96, 48, 24]
    assert level_sizes(128, 16) == [128, 64, 32, 16]
    assert level_sizes(12, 16) == [12]


def test_laplacian_pyramid_reconstructs_the_image():
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    bands = laplacian_pyramid(images, 3)
    assert [band.shape[-1] for band in bands] == [32, 16, 8]
    rebuilt = bands[-1]
    for band in reversed(bands[:-1]):
        rebuilt = band + _expand(rebuilt, band.shape[-2:])
    assert torch.allclose(rebuilt, images, atol=1e-5)


def test_sliced_wasserstein_of_shifted_gaussians_is_the_projected_shift():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(4096, 1, generator=generator)
    direction = torch.ones(1, 1)
    same = sliced_wasserstein(sorted_projections(a, direction), sorted_projections(a, direction))
    shifted = sliced_wasserstein(sorted_projections(a, direction), sorted_projections(a + 0.5, direction))
    assert same == 0.0
    assert abs(shifted - 0.5) < 1e-5


def test_identical_sets_are_near_zero_and_noise_is_far():
    reference = _smooth_images(64, seed=0)
    swd = PyramidSWD(reference, descriptors=2048, directions=64, min_level_size=16, seed=0)
    identical = swd.distances(reference)
    fresh = swd.distances(_smooth_images(64, seed=1))
    noisy = swd.distances((reference + 0.2 * torch.randn(reference.shape, generator=torch.Generator().manual_seed(2))).clamp(-1, 1))
    assert len(identical) == 2
    assert max(identical) < 0.1
    assert noisy[0] > 5 * fresh[0]  # the finest level sees the added noise


def test_distances_are_deterministic_for_a_seed():
    reference, candidate = _smooth_images(16, seed=0), _smooth_images(16, seed=1)
    first = PyramidSWD(reference, 512, 32, 16, seed=3).distances(candidate)
    again = PyramidSWD(reference, 512, 32, 16, seed=3).distances(candidate)
    other = PyramidSWD(reference, 512, 32, 16, seed=4).distances(candidate)
    assert first == again
    assert first != other
