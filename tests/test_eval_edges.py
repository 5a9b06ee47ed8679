"""ddpm_eval.edges: roughness along strong edges and the orientation histogram."""
import numpy as np
import pytest
import torch
from eval_helpers import blur, fresh_real, jaggy, noisy

from ddpm_eval.edges import ORIENTATION_BINS, edge_statistics, orientation_distance
from ddpm_eval.images import to_float


@pytest.fixture(scope="module")
def images():
    return fresh_real(counts=(8, 8))[0]


def test_jaggy_and_noisy_edges_are_rougher_than_real_and_blur_is_smoother(images):
    roughness = {name: edge_statistics(to_float(x)).roughness
                 for name, x in {"real": images, "blur": blur(images), "jaggy": jaggy(images), "noise": noisy(images)}.items()}
    assert roughness["jaggy"] > 2 * roughness["real"]
    assert roughness["noise"] > 2 * roughness["real"]
    assert roughness["blur"] < roughness["real"]


def test_orientation_histogram_is_a_distribution_and_distance_is_bounded(images):
    stats = edge_statistics(to_float(images))
    assert stats.orientation_histogram.shape == (ORIENTATION_BINS,)
    assert stats.orientation_histogram.sum() == pytest.approx(1.0)
    assert orientation_distance(stats.orientation_histogram, stats.orientation_histogram) == 0.0
    one_hot = np.eye(ORIENTATION_BINS)
    assert orientation_distance(one_hot[0], one_hot[1]) == pytest.approx(1.0)


def test_staircase_edges_pile_up_on_the_axes(images):
    real = edge_statistics(to_float(images)).orientation_histogram
    stairs = edge_statistics(to_float(jaggy(images))).orientation_histogram
    axes = [0, ORIENTATION_BINS // 2]
    assert stairs[axes].sum() > real[axes].sum()


def test_flat_images_have_no_edges():
    stats = edge_statistics(torch.zeros(2, 3, 16, 16))
    assert np.isnan(stats.roughness)
