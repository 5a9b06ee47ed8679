"""ddpm_eval.jaggedness: staircase controls made from photographs and from the sample tiles rank as they must.

The photographs (tests/data/photos, CC0 and public domain; see LICENSE.md there) are data the measure
was not designed on: portraits, a cat, objects, a launch tower, a retina, brick, grass and gravel.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_data.synth import SynthConfig, synthesize
from ddpm_eval.jaggedness import SCALE, axis_preference, jaggedness, mean_over_classes, staircase_index
from ddpm_study.controls import make_controls, measure_controls, read_folder, read_patches

PHOTOS = Path(__file__).parent / "data" / "photos"
DISPLAY = 128
SOFT = ("bicubic-40", "lanczos-40", "bilinear-40", "bicubic-96", "lanczos-96", "bilinear-96", "noise")


@pytest.fixture(scope="module")
def photo_controls():
    images, labels = read_patches(PHOTOS, DISPLAY)
    assert len(images) >= 90  # nine photographs, 128 px patches every 64 px
    return measure_controls(images, labels, lows=(40, 96), others=False)


@pytest.fixture(scope="module")
def tile_controls(tmp_path_factory):
    root = synthesize(SynthConfig(out=tmp_path_factory.mktemp("synth") / "data", normal=24, abnormal=24, size=DISPLAY,
                                  seed=3, masks=False))
    return measure_controls(*read_folder(root), lows=(40, 96), others=False)


@pytest.fixture(params=["photographs", "tiles"])
def controls(request, photo_controls, tile_controls):
    return photo_controls if request.param == "photographs" else tile_controls


def test_the_40px_staircase_stands_far_above_real(controls):
    real = controls["real"]["jaggedness"]
    spread = max(abs(controls[name]["jaggedness"] - real) for name in SOFT)  # soft and noisy sets around real
    assert controls["staircase-40"]["jaggedness"] - real > 3 * spread
    assert controls["staircase-40"]["jaggedness"] > 20


def test_the_96px_staircase_is_smaller_but_still_seen(controls):
    staircase_96 = controls["staircase-96"]["jaggedness"]
    assert controls["staircase-40"]["jaggedness"] > 2 * staircase_96
    assert staircase_96 - controls["real"]["jaggedness"] > 3 * controls["staircase-96"]["standard_error"]


def test_held_out_real_images_score_near_zero(controls):
    assert abs(controls["real"]["jaggedness"]) < 3 * controls["real"]["standard_error"] + 0.5


def test_soft_and_noisy_images_are_not_read_as_jaggy(controls):
    real = controls["real"]
    for name in SOFT:
        row = controls[name]
        assert row["jaggedness"] - real["jaggedness"] < 3 * np.hypot(row["standard_error"], real["standard_error"]) + 1, name


def test_axis_preference_of_straight_edges():
    ramp = torch.linspace(-1, 1, 24)
    vertical = ramp.view(1, 1, 1, 24).expand(1, 1, 24, 24)  # gradient along x only: cos(4 * 0) = 1
    diagonal = ((ramp.view(24, 1) + ramp.view(1, 24)) / 2).view(1, 1, 24, 24)  # gradient at 45 degrees: -1
    flat = torch.zeros(1, 1, 24, 24)  # no gradient at all: no preference
    assert axis_preference(vertical)[0] == pytest.approx(1.0)
    assert axis_preference(diagonal)[0] == pytest.approx(-1.0)
    assert axis_preference(flat)[0] == 0.0


def test_a_diagonal_staircase_leans_to_the_axes_only_at_the_finest_scale():
    size, step = 48, 4
    rows, cols = np.mgrid[:size, :size]
    smooth = np.clip((cols - rows) / 2.0, -1, 1)  # a straight 45-degree edge, a little soft
    blocky = np.where((cols // step) * step > (rows // step) * step, 1.0, -1.0)  # the same edge as 4 px stairs
    index = staircase_index(torch.tensor(np.stack([smooth, blocky]), dtype=torch.float32)[:, None].expand(2, 3, size, size))
    assert abs(index[0]) < 0.1  # a smooth edge points the same way at both scales
    assert index[1] > 0.5  # a staircase: axes at the pixel scale, its diagonal once blurred by SCALE px
    assert SCALE < step  # the coarse view is meant to merge steps of a few px


def test_value_and_standard_error_follow_the_definition():
    result = jaggedness(np.array([0.5, 0.7, 0.9]), np.array([0.1, 0.3]))
    assert result.value == pytest.approx(100 * (0.7 - 0.2))
    assert result.standard_error == pytest.approx(100 * 0.2 / np.sqrt(3))
    assert result.n == 3
    combined = mean_over_classes([result, jaggedness(np.array([0.2, 0.4]), np.array([0.3]))])
    assert combined.value == pytest.approx((50 + 0) / 2)
    assert combined.standard_error == pytest.approx(np.hypot(result.standard_error, 100 * np.std([0.2, 0.4], ddof=1) / np.sqrt(2)) / 2)


def test_controls_are_what_they_say():
    image = np.random.default_rng(0).integers(0, 256, (1, 3, 32, 32), dtype=np.uint8)
    controls = make_controls(image, lows=(8,))
    assert set(controls) == {"real", "staircase-8", "bicubic-8", "lanczos-8", "bilinear-8", "noise"}
    staircase = controls["staircase-8"][0]
    assert (staircase[:, :4, :4] == staircase[:, :1, :1]).all()  # 4x4 blocks of one value
    assert all(control.shape == image.shape and control.dtype == np.uint8 for control in controls.values())


def test_too_small_images_and_empty_sets_are_refused():
    with pytest.raises(ValueError, match="too small"):
        staircase_index(torch.zeros(1, 3, 6, 6))
    with pytest.raises(ValueError, match="at least one"):
        jaggedness(np.zeros(0), np.zeros(3))
    from ddpm_eval.jaggedness import class_references, per_class_jaggedness

    references = class_references(torch.zeros(2, 3, 16, 16), np.array([0, 0]))
    with pytest.raises(ValueError, match="no real images of class 1"):
        per_class_jaggedness(torch.zeros(2, 3, 16, 16), np.array([1, 1]), references)
