"""ddpm_eval.jaggedness: staircase controls made from the bundled sample data rank as they must."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm_data.synth import SynthConfig, synthesize
from ddpm_eval.images import to_float
from ddpm_eval.jaggedness import axis_energy, class_references, jaggedness, per_class_jaggedness
from ddpm_study.controls import make_controls, measure_controls, read_folder

SIZE = 96
LOW = SIZE * 40 // 128  # the 40-of-128 px ratio of the user's problem


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = synthesize(SynthConfig(out=tmp_path_factory.mktemp("synth") / "data", normal=14, abnormal=14, size=SIZE,
                                  seed=3, masks=False))
    return read_folder(root)


@pytest.fixture(scope="module")
def controls(synth):
    return measure_controls(*synth, low=LOW)


def test_staircase_control_is_far_jaggier_than_real(controls):
    real, jaggy = controls["real"], controls["jaggy"]
    assert real["jaggedness"] == pytest.approx(0.0, abs=1e-9)  # the real set against itself
    assert jaggy["jaggedness"] > 5.0
    assert jaggy["jaggedness"] > 10 * jaggy["standard_error"]


def test_soft_control_is_not_jaggier_than_real(controls):
    soft = controls["soft"]
    assert soft["jaggedness"] <= 0.0 + 2 * soft["standard_error"]
    assert controls["jaggy"]["jaggedness"] - soft["jaggedness"] > 10 * controls["jaggy"]["standard_error"]


def test_the_edge_roughness_alone_calls_the_staircase_smoother(controls):
    # why the measure exists: the evaluator's roughness angle ranks the jaggy control below real
    assert controls["jaggy"]["edge_roughness"] < controls["real"]["edge_roughness"]


def test_other_real_images_blur_and_noise(synth):
    images, labels = synth
    references = class_references(to_float(images[::2]), labels[::2])
    held_out = to_float(images[1::2])
    other = per_class_jaggedness(held_out, labels[1::2], references)[0]
    jaggy = per_class_jaggedness(to_float(make_controls(images[1::2], LOW)["jaggy"]), labels[1::2], references)[0]
    noise = held_out + 0.1 * torch.randn(held_out.shape, generator=torch.Generator().manual_seed(0))
    noisy = per_class_jaggedness(noise.clamp(-1, 1), labels[1::2], references)[0]
    from ddpm_eval.filters import gaussian_blur

    blurred = per_class_jaggedness(gaussian_blur(held_out, 1.0), labels[1::2], references)[0]
    assert abs(other.value) < jaggy.value / 4  # new real images sit near 0
    assert abs(noisy.value) < jaggy.value / 4  # isotropic noise is not a staircase
    assert blurred.value < jaggy.value / 4


def test_axis_energy_of_straight_edges():
    ramp = torch.linspace(-1, 1, 24)
    vertical = ramp.view(1, 1, 1, 24).expand(1, 3, 24, 24)  # gradient along x only: all energy on an axis
    diagonal = ((ramp.view(24, 1) + ramp.view(1, 24)) / 2).expand(1, 3, 24, 24)  # gradient at 45 degrees
    straight, slanted = axis_energy(vertical), axis_energy(diagonal)
    assert straight.axis[0] == pytest.approx(straight.gradient[0])  # cos(4 * 0) = 1
    assert slanted.axis[0] == pytest.approx(-slanted.gradient[0])  # cos(4 * 45 deg) = -1


def test_value_and_standard_error_follow_the_definition():
    from ddpm_eval.jaggedness import AxisEnergy

    real = AxisEnergy(axis=np.array([0.1, 0.3]), gradient=np.array([1.0, 3.0]))
    candidates = AxisEnergy(axis=np.array([0.5, 0.7, 0.9]), gradient=np.ones(3))
    result = jaggedness(candidates, real)
    assert result.value == pytest.approx(100 * (0.7 - 0.2) / 2.0)
    assert result.standard_error == pytest.approx(100 * 0.2 / np.sqrt(3) / 2.0)
    assert result.n == 3


def test_tiny_images_and_missing_classes_are_refused():
    with pytest.raises(ValueError, match="too small"):
        axis_energy(torch.zeros(1, 3, 6, 6))
    references = class_references(torch.zeros(2, 3, 16, 16), np.array([0, 0]))
    with pytest.raises(ValueError, match="no real images of class 1"):
        per_class_jaggedness(torch.zeros(2, 3, 16, 16), np.array([1, 1]), references)
