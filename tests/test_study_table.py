"""ddpm_study.table: means and noise per configuration, % improvement signed so that better is positive."""
from __future__ import annotations

import json
import math

import pytest

from ddpm_study.table import METRICS, compare, format_markdown

BASE = {"jaggedness": 20.0, "swd": 2.0, "swd_finest": 1.0, "spectrum_hf_ratio": 2.0, "edge_roughness": 12.0,
        "edge_orientation_distance": 0.4, "frechet_classifier_distance": 50.0, "class_accuracy": 0.6, "nn_ratio": 1.5}


def document(configuration: str, seed: int, noise: dict | None = None, **metrics) -> dict:
    return {"cell": f"{configuration}-s{seed}", "configuration": configuration, "metrics": {**BASE, **metrics},
            "noise": noise or {"jaggedness": 0.5}, "edge_roughness_real": 17.0,
            "real_val": {**BASE, "jaggedness": 0.2, "n": 44},
            "counts": {"samples": {"abnormal": 64, "normal": 64}}, "training": {"images_seen": 1000, "train_seconds": 600}}


def test_improvement_is_positive_when_better_in_each_direction():
    table = compare([document("40px", 0),
                     document("96px", 0, jaggedness=5.0, swd=1.0, spectrum_hf_ratio=1.0, edge_roughness=17.0,
                              class_accuracy=0.8, nn_ratio=1 / 1.5)], baseline="40px")
    change = {key: value["improvement_pct"] for key, value in table["configurations"][1]["vs_baseline"].items()}
    assert change["jaggedness"] == pytest.approx(75.0)  # 3/4 of the baseline's excess over real is gone
    assert change["swd"] == pytest.approx(50.0)  # lower is better
    assert change["spectrum_hf_ratio"] == pytest.approx(100.0)  # from 2x real to exactly real
    assert change["edge_roughness"] == pytest.approx(100.0)  # now equal to the real roughness
    assert change["class_accuracy"] == pytest.approx(50.0)  # error rate 0.4 -> 0.2
    assert change["nn_ratio"] == pytest.approx(0.0)  # 1.5x and 1/1.5x are equally far from real
    worse = compare([document("40px", 0), document("96px", 0, swd=3.0, class_accuracy=0.3)], baseline="40px")
    assert worse["configurations"][1]["vs_baseline"]["swd"]["improvement_pct"] == pytest.approx(-50.0)
    assert worse["configurations"][1]["vs_baseline"]["class_accuracy"]["improvement_pct"] == pytest.approx(-75.0)


def test_seeds_give_every_metric_a_noise_level_and_mark_differences_within_it():
    documents = [document("40px", 0, swd=2.0, jaggedness=20.0), document("40px", 1, swd=2.2, jaggedness=22.0),
                 document("96px", 0, swd=2.1, jaggedness=5.0), document("96px", 1, swd=2.3, jaggedness=6.0)]
    table = compare(documents, baseline=None)  # the first configuration
    assert table["baseline"] == "40px"
    base, cell = table["configurations"]
    assert base["values"]["swd"]["mean"] == pytest.approx(2.1)
    assert base["values"]["swd"]["noise"] == pytest.approx(0.1)  # std 0.1414 / sqrt(2)
    assert base["values"]["swd"]["noise_source"] == "seeds (2)"
    assert cell["vs_baseline"]["swd"]["within_noise"] is True  # +0.1 with a difference noise of 0.14
    assert cell["vs_baseline"]["jaggedness"]["within_noise"] is False  # -15.5 with a noise of about 1.1
    assert cell["vs_baseline"]["swd"]["noise"] == pytest.approx(math.hypot(0.1, 0.1))


def test_one_seed_uses_the_images_or_bootstrap_noise_and_says_when_there_is_none():
    documents = [document("40px", 0, noise={"jaggedness": 0.5, "swd": 0.05}), document("96px", 0)]
    table = compare(documents, baseline="40px")
    base, cell = table["configurations"]
    assert base["values"]["jaggedness"]["noise_source"] == "images"
    assert base["values"]["swd"]["noise_source"] == "bootstrap"
    assert cell["values"]["swd"]["noise"] is None
    assert cell["vs_baseline"]["swd"]["within_noise"] is None  # no estimate for one side: shown as '?'
    markdown = format_markdown(table, 128, "shards/128")
    assert "| 96px | +0% ≈ | – | – | +0% ? |" in markdown  # no nearest-view jaggedness or checkerboard in these documents


def test_markdown_shows_counts_the_floor_and_the_baseline_and_json_round_trips():
    table = compare([document("40px", 0), document("96px", 0, jaggedness=4.0)], baseline="40px")
    markdown = format_markdown(table, 128, "shards/128")
    assert "resized (LANCZOS) to 128 px and measured against the real train images of shards/128" in markdown
    assert "| real val (floor) | | 44 | | | +0.2 |" in markdown
    assert "| 40px | 1 | 128 | 1,000 | 10.0 | +20.0 ± 0.5 |" in markdown
    assert "Change against the baseline **40px**" in markdown
    assert "| 96px | +80% |" in markdown
    assert json.loads(json.dumps(table)) == table
    assert [metric["key"] for metric in table["metrics"]] == [metric.key for metric in METRICS]


def test_a_baseline_without_results_leaves_the_changes_empty():
    table = compare([document("96px", 0)], baseline="40px")
    assert table["baseline_measured"] is False and table["configurations"][0]["vs_baseline"] is None
    assert "(baseline 40px has no results yet)" in format_markdown(table, 128, "shards/128")


def test_missing_metrics_stay_missing():
    table = compare([document("40px", 0, nn_ratio=None), document("96px", 0)], baseline="40px")
    assert table["configurations"][0]["values"]["nn_ratio"]["mean"] is None
    assert table["configurations"][1]["vs_baseline"]["nn_ratio"]["improvement_pct"] is None


def test_no_percentage_of_a_baseline_that_is_already_as_good_as_real():
    documents = [document("40px", 0, noise={"jaggedness": 0.5}, jaggedness=-0.4, spectrum_hf_ratio=1.01),
                 document("96px", 0, jaggedness=-0.9, spectrum_hf_ratio=1.2)]
    change = compare(documents, baseline="40px")["configurations"][1]["vs_baseline"]
    assert change["jaggedness"]["improvement_pct"] is None  # -0.4 is within 2 x 0.5 of 0
    assert change["jaggedness"]["difference"] == pytest.approx(-0.5)
    assert change["spectrum_hf_ratio"]["improvement_pct"] == pytest.approx((math.log(1.01) - math.log(1.2)) / math.log(1.01) * 100)
