"""ddpm_eval.evaluate end to end: metric sanity against the references, copies, determinism, report."""
import json

import pytest
from eval_helpers import CLASSES, FAST, blur, fresh_real, jaggy, make_shards, noisy, shared_shards, write_samples

from ddpm_eval.evaluate import EvalConfig, evaluate
from ddpm_eval.images import EvalInputError, load_real

METRICS = ("swd", "swd_levels", "spectrum_hf_ratio", "spectrum_distance", "jaggedness", "jaggedness_se", "checkerboard",
           "edge_roughness",
           "edge_orientation_distance",
           "class_accuracy", "classifier_val_accuracy", "frechet_classifier_distance", "copies", "copy_fraction", "nn_ratio")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return shared_shards(tmp_path_factory)


@pytest.fixture(scope="module")
def results(shards, tmp_path_factory):
    """Evaluate a fresh real set and degraded copies of it once for the module."""
    root = tmp_path_factory.mktemp("eval-samples")
    images, labels = fresh_real()
    sets = {"fresh": images, "blur": blur(images), "noise": noisy(images), "jaggy": jaggy(images)}
    report = root / "report"
    return {name: evaluate(EvalConfig(real=shards, samples=write_samples(root / name, x, labels),
                                      report=report if name == "jaggy" else None, **FAST))
            for name, x in sets.items()} | {"_report": report, "_root": root}


def test_result_has_the_named_keys_at_the_top_level(results):
    result = results["fresh"]
    assert set(METRICS) <= set(result)
    assert len(result["swd_levels"]) == len(result["swd_level_sizes"]) == 2
    assert set(result["per_class"]) == set(CLASSES)
    assert set(METRICS) - {"classifier_val_accuracy"} <= set(result["reference"]["val_vs_train"])
    assert "NOT Inception FID" in result["frechet_note"]
    json.dumps(result, allow_nan=False)


def test_a_fresh_real_set_scores_like_the_val_floor(results):
    result, floor = results["fresh"], results["fresh"]["reference"]["val_vs_train"]
    assert result["classifier_val_accuracy"] >= 0.9 and result["class_accuracy"] >= 0.9
    assert result["swd"] < 2 * floor["swd"]
    assert 0.6 < result["spectrum_hf_ratio"] < 1.5
    assert result["copies"] == 0 and 0.7 < result["nn_ratio"] < 1.4
    assert abs(result["jaggedness"]) < 3 * result["jaggedness_se"] + 1
    assert 0.7 < result["checkerboard"] < 1.4


def test_jaggedness_is_reported_per_class_with_its_standard_error(results):
    import numpy as np

    result = results["fresh"]
    per_class = [result["per_class"][name] for name in CLASSES]
    assert result["jaggedness"] == pytest.approx(np.mean([row["jaggedness"] for row in per_class]))
    assert result["jaggedness_se"] == pytest.approx(np.sqrt(sum(row["jaggedness_se"] ** 2 for row in per_class)) / len(per_class))
    assert result["jaggedness_se"] > 0


def test_blurred_noisy_and_jaggy_sets_rank_worse_than_fresh_real(results):
    fresh = results["fresh"]
    for name in ("blur", "noise", "jaggy"):
        assert results[name]["swd_levels"][0] > 2 * fresh["swd_levels"][0], name
        assert results[name]["spectrum_distance"] > 2 * fresh["spectrum_distance"], name
        assert results[name]["frechet_classifier_distance"] > fresh["frechet_classifier_distance"], name
    assert results["blur"]["spectrum_hf_ratio"] < 0.3 < fresh["spectrum_hf_ratio"]
    assert results["jaggy"]["spectrum_hf_ratio"] > 1.5 and results["noise"]["spectrum_hf_ratio"] > 1.5
    assert results["jaggy"]["edge_roughness"] > 2 * fresh["edge_roughness_real"]
    ceiling = fresh["reference"]["blurred_vs_train"]
    assert ceiling["spectrum_hf_ratio"] < 0.3 and ceiling["edge_roughness"] < fresh["edge_roughness_real"]


def test_report_holds_numbers_grids_and_plots(results):
    report = results["_report"]
    assert results["jaggy"]["report"] == str(report / "index.md")
    text = (report / "index.md").read_text()
    for name in ("grid-abnormal.png", "grid-normal.png", "swd-levels.png", "spectrum.png", "NOT Inception FID"):
        assert name in text
    for name in ("grid-abnormal.png", "grid-normal.png", "swd-levels.png", "spectrum.png", "results.json"):
        assert (report / name).stat().st_size > 0


def test_an_injected_training_image_is_flagged_as_a_copy(shards, tmp_path):
    real = load_real(shards)
    images, labels = fresh_real(counts=(4, 6))
    images[-1], labels[-1] = real.train.images[5], real.train.labels[5]
    result = evaluate(EvalConfig(real=shards, samples=write_samples(tmp_path / "s", images, labels), report=tmp_path / "r", **FAST))
    assert result["copies"] == 1
    assert result["flagged_copies"][0]["train_key"] == real.train.names[5]
    assert result["flagged_copies"][0]["sample"].endswith("00009.png")
    assert (tmp_path / "r" / "copies.png").is_file()
    assert result["reference"]["val_vs_train"]["copies"] == 0


def test_same_seed_same_numbers_other_seed_other_patches(results, shards):
    again = evaluate(EvalConfig(real=shards, samples=results["_root"] / "fresh", **FAST))
    strip = lambda result: {k: v for k, v in result.items() if k not in ("seconds", "classifier")}
    assert strip(again) == strip(results["fresh"])
    reseeded = evaluate(EvalConfig(real=shards, samples=results["_root"] / "fresh", seed=1, **FAST))
    assert reseeded["swd"] != results["fresh"]["swd"]


def test_one_class_only(results, shards):
    result = evaluate(EvalConfig(real=shards, samples=results["_root"] / "fresh", class_name="abnormal", **FAST))
    assert list(result["per_class"]) == ["abnormal"] and result["classes"] == ["abnormal"]
    assert result["n"] == 12


def test_bad_options_name_the_flag(shards, tmp_path):
    with pytest.raises(ValueError, match="--copy-ratio"):
        EvalConfig(real=shards, samples=tmp_path, copy_ratio=2.0)
    with pytest.raises(EvalInputError, match="--samples"):
        evaluate(EvalConfig(real=shards, samples=tmp_path / "missing", **FAST))
    with pytest.raises(ValueError, match="manifest.json"):
        evaluate(EvalConfig(real=tmp_path, samples=tmp_path, **FAST))


def test_grey_shards_read_rgb_samples_as_grey(tmp_path):
    shards = make_shards(tmp_path / "grey", counts=(12, 12), channels=1)
    images, labels = fresh_real(counts=(3, 3))
    result = evaluate(EvalConfig(real=shards, samples=write_samples(tmp_path / "s", images, labels), **FAST))
    assert result["n"] == 6 and result["swd"] is not None and result["edge_roughness"] is not None
