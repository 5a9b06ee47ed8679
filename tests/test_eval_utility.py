"""ddpm_eval.utility: the interval and verdict against reference numbers, the instrument against
controls whose answer is known, and `ddpm-eval --utility` through the CLI.

The controls run the real instrument (folds, arms, paired differences, corrected interval) on
tiles from `ddpm_data.synth` with a data-limited rare class (20 abnormal against 150 normal,
24 px): adding held-out real abnormal tiles must be called a help; noise or normal tiles labelled
abnormal must not; copies of the training fold's own abnormal tiles must not be called a gain.
"""
import json
import math

import numpy as np
import pytest
import torch
from eval_helpers import FAST, fresh_real, shared_shards, write_samples
from typer.testing import CliRunner

from cli import eval_app
from ddpm_eval.arms import Trainer, content_folds, cross_validate, joined, with_synthetic
from ddpm_eval.images import ImageSet
from ddpm_eval.utility import Estimate, UtilityConfig, estimate, summarise, t_quantile, verdict

# ---------------------------------------------------------------- statistics


def test_t_quantiles_match_the_tables():
    for dof, expected in ((1, 12.7062), (4, 2.7764), (9, 2.2622), (14, 2.1448), (100, 1.9840)):
        assert math.isclose(t_quantile(0.975, dof), expected, abs_tol=2e-4)
    assert math.isclose(t_quantile(0.95, 10), 1.8125, abs_tol=2e-4)


def test_the_standard_error_is_corrected_for_overlapping_training_folds():
    values = [0.1, 0.3, 0.2, 0.4, 0.0, 0.2]  # mean 0.2, sample variance 0.02
    result = estimate(values, folds=3)
    se = math.sqrt((1 / 6 + 1 / 2) * 0.02)
    assert math.isclose(result.mean, 0.2) and math.isclose(result.se, se)
    assert math.isclose(result.high - result.mean, t_quantile(0.975, 5) * se)
    assert math.isnan(estimate([0.5], folds=3).se) and math.isnan(estimate([math.nan], folds=3).mean)


def test_the_verdict_reads_the_interval_of_the_difference():
    assert verdict(Estimate(0.05, 0.01, 0.01, 0.09)) == "helped"
    assert verdict(Estimate(-0.05, 0.01, -0.09, -0.01)) == "hurt"
    assert verdict(Estimate(0.05, 0.04, -0.03, 0.13)) == "unclear"
    assert verdict(Estimate(0.05, math.nan, math.nan, math.nan)) == "unclear"


def test_arms_that_do_not_differ_are_unclear_with_a_zero_difference():
    scores = {"balanced_accuracy": np.array([[0.8, 0.7], [0.9, 0.6]]), "rare_recall": np.ones((2, 2)),
              "rare_auroc": np.full((2, 2), 0.5)}
    result = summarise({"real_only": scores, "real_plus_synthetic": scores, "synthetic_only": None}, folds=2)
    assert result["verdict"] == "unclear" and result["difference"]["balanced_accuracy"]["mean"] == 0
    assert result["arms"]["synthetic_only"] is None
    assert math.isclose(result["arms"]["real_only"]["balanced_accuracy"]["mean"], 0.75)


def test_settings_out_of_range_name_their_flag():
    with pytest.raises(ValueError, match="--utility-folds"):
        UtilityConfig(folds=1)
    with pytest.raises(ValueError, match="--utility-ratio"):
        UtilityConfig(ratio=0)


# ---------------------------------------------------------------- controls

SIZE, RARE, COMMON = 24, 20, 150
CONTROL = UtilityConfig(folds=5, seeds=3, steps=100, width=8)


def tiles(count: int, abnormal: bool, stream: int) -> ImageSet:
    """`count` sample-data tiles (3, SIZE, SIZE) of one class, each from its own seeded stream."""
    from ddpm_data.synth import render

    images = np.stack([render(np.random.default_rng([stream, i]), SIZE, abnormal)[0].transpose(2, 0, 1) for i in range(count)])
    label = 0 if abnormal else 1
    return ImageSet(images, np.full(count, label, dtype=np.int64), tuple(f"{stream}-{i}" for i in range(count)))


@pytest.fixture(scope="module")
def control():
    """The real set, its folds, a trainer, and the real-only arm's scores, shared by the controls."""
    real = joined(tiles(RARE, True, 1), tiles(COMMON, False, 2))
    folds = content_folds(real, CONTROL.folds)
    trainer = Trainer(CONTROL.classifier_config(), CONTROL.steps, 2, torch.device("cpu"))
    seeds = list(range(CONTROL.seeds))
    return real, folds, trainer, seeds, cross_validate(real, folds, lambda train, fold, seed: train, seeds, 0, trainer)


def with_added(control, training_set) -> dict:
    real, folds, trainer, seeds, real_only = control
    mixed = cross_validate(real, folds, training_set, seeds, 0, trainer)
    return summarise({"real_only": real_only, "real_plus_synthetic": mixed, "synthetic_only": None}, CONTROL.folds)


def test_control_held_out_real_rare_images_help(control):
    oracle = tiles(4 * RARE, True, 3)  # real abnormal tiles in no fold
    result = with_added(control, with_synthetic(oracle, 2, None))
    difference = result["difference"]["balanced_accuracy"]
    assert result["verdict"] == "helped", difference
    assert difference["low"] > 0 and result["difference"]["rare_recall"]["mean"] > 0.1


def test_control_noise_labelled_rare_does_not_help(control):
    shape = (4 * RARE, 3, SIZE, SIZE)
    noise = ImageSet(np.random.default_rng(4).integers(0, 256, shape, dtype=np.uint8), np.zeros(shape[0], dtype=np.int64),
                     tuple(map(str, range(shape[0]))))
    result = with_added(control, with_synthetic(noise, 2, None))
    assert result["verdict"] in ("hurt", "unclear") and result["difference"]["balanced_accuracy"]["mean"] < 0


def test_control_wrong_labels_do_not_help(control):
    normal = tiles(4 * RARE, False, 5)
    mislabelled = ImageSet(normal.images, np.zeros(len(normal), dtype=np.int64), normal.names)  # normal tiles called abnormal
    result = with_added(control, with_synthetic(mislabelled, 2, None))
    assert result["verdict"] in ("hurt", "unclear") and result["difference"]["balanced_accuracy"]["mean"] < 0


def test_control_copies_of_the_training_images_are_not_a_gain(control):
    def copies(train: ImageSet, fold: int, seed: int) -> ImageSet:
        return with_synthetic(train.of_class(0), 2, None)(train, fold, seed)  # the fold's own abnormal images again

    result = with_added(control, copies)
    assert result["verdict"] != "helped", result["difference"]["balanced_accuracy"]


# ---------------------------------------------------------------- ddpm-eval --utility

FAST_FLAGS = [f"--{key.replace('_', '-')}={value}" for key, value in FAST.items()]
UTILITY_FLAGS = ["--utility", "--utility-folds=2", "--utility-seeds=2", "--utility-steps=5", "--utility-width=4"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    shards = shared_shards(tmp_path_factory)
    images, labels = fresh_real(counts=(6, 6))
    return shards, write_samples(tmp_path_factory.mktemp("utility-samples"), images, labels)


def test_json_carries_the_verdict_and_the_numbers_under_utility(folders, tmp_path):
    shards, samples = folders
    result = CliRunner().invoke(eval_app, ["--real", str(shards), "--samples", str(samples), "--json", "--report",
                                           str(tmp_path / "report"), *FAST_FLAGS, *UTILITY_FLAGS])
    assert result.exit_code == 0, result.output
    utility = json.loads(result.stdout)["utility"]
    assert utility["verdict"] in ("helped", "hurt", "unclear") and utility["rare_class"] == "abnormal"
    for arm in ("real_only", "real_plus_synthetic", "synthetic_only"):
        assert set(utility["arms"][arm]) == {"balanced_accuracy", "rare_recall", "rare_auroc"}
        assert set(utility["arms"][arm]["balanced_accuracy"]) == {"mean", "se", "low", "high"}
        assert np.asarray(utility["units"][arm]["rare_auroc"]).shape == (2, 2)
    assert utility["synthetic_added"]["abnormal"] == 6 and utility["synthetic_added"]["normal"] == 0
    assert any("6 samples added per fold" in warning for warning in utility["warnings"])  # balance wanted more
    index = (tmp_path / "report" / "index.md").read_text()
    assert "Do the samples help a classifier?" in index and (tmp_path / "report" / "utility.png").is_file()


def test_the_table_shows_the_three_arms_and_the_verdict_line(folders):
    shards, samples = folders
    result = CliRunner().invoke(eval_app, ["--real", str(shards), "--samples", str(samples), "--class", "abnormal",
                                           *FAST_FLAGS, *UTILITY_FLAGS])
    assert result.exit_code == 0, result.output
    for text in ("real only", "real + synthetic", "synthetic only", "difference (real + synthetic - real only)",
                 "utility: ", "95% interval", "synthetic only: not run"):
        assert text in result.stdout


def test_too_many_folds_for_a_class_is_a_one_line_error(folders):
    shards, samples = folders
    result = CliRunner().invoke(eval_app, ["--real", str(shards), "--samples", str(samples), "--utility",
                                           "--utility-folds=40", *FAST_FLAGS])
    assert result.exit_code == 2 and "--utility-folds 40: too few real images of class abnormal 32" in result.output
