"""ddpm_eval.frechet: Fréchet distance between Gaussian fits, checked against closed forms."""
import numpy as np
import pytest

from ddpm_eval.frechet import frechet_distance


def test_identical_sets_are_zero():
    features = np.random.default_rng(0).normal(size=(200, 8))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)


def test_diagonal_gaussians_match_the_closed_form():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4000, 3)) * [1.0, 2.0, 0.5]
    b = rng.normal(size=(4000, 3)) * [2.0, 1.0, 0.5] + [1.0, 0.0, 0.0]
    mean_a, mean_b = a.mean(0), b.mean(0)
    std_a, std_b = np.sqrt(np.diag(np.cov(a, rowvar=False))), np.sqrt(np.diag(np.cov(b, rowvar=False)))
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((std_a - std_b) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.05)


def test_rank_deficient_sets_still_give_a_finite_number():
    rng = np.random.default_rng(2)
    value = frechet_distance(rng.normal(size=(3, 16)), rng.normal(size=(5, 16)))
    assert np.isfinite(value) and value > 0
