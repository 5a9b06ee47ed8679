"""ddpm_study.paired: the change against the baseline seed by seed, with Student's t interval."""
from __future__ import annotations

import math

import pytest

from ddpm_study.curves import curve_rows, format_curves_paired
from ddpm_study.paired import paired_change, seed_of, t975
from ddpm_study.table import METRICS, compare, format_markdown

JAGGEDNESS = next(metric for metric in METRICS if metric.key == "jaggedness")
ACCURACY = next(metric for metric in METRICS if metric.key == "class_accuracy")


def document(configuration: str, seed: int, **metrics) -> dict:
    return {"cell": f"{configuration}-s{seed}", "configuration": configuration, "metrics": metrics}


def test_t975_matches_the_tables_and_tends_to_the_normal_quantile():
    assert t975(1) == pytest.approx(12.706, abs=0.005)
    assert t975(2) == pytest.approx(4.303, abs=0.001)
    assert t975(10) == pytest.approx(2.228, abs=0.001)
    assert t975(60) == pytest.approx(2.000, abs=0.001)  # beyond the table: Cornish-Fisher
    assert t975(120) == pytest.approx(1.980, abs=0.001)
    assert t975(31) < t975(30) and t975(10_000) == pytest.approx(1.960, abs=0.001)
    with pytest.raises(ValueError, match="degree of freedom"):
        t975(0)


def test_the_seed_is_the_cell_name_after_its_configuration():
    assert seed_of(document("96px-bilinear-aug-ptiny-w32", 12)) == "12"


def test_a_shared_seed_effect_cancels_in_the_paired_change():
    # every seed moves both arms the same way (20, 26, 14); the cell is 1.5 to 2 points lower in each
    base = [document("40px", 0, jaggedness=20.0), document("40px", 1, jaggedness=26.0), document("40px", 2, jaggedness=14.0)]
    cell = [document("96px", 2, jaggedness=12.5), document("96px", 0, jaggedness=18.0), document("96px", 1, jaggedness=24.0)]
    change = paired_change(JAGGEDNESS, cell, base, None)
    differences = [2.0, 2.0, 1.5]  # matched by seed, not by order
    mean, sd = sum(differences) / 3, math.sqrt(sum((d - 11 / 6) ** 2 for d in differences) / 2)
    assert change["seeds"] == 3 and change["difference"] == pytest.approx(mean)
    assert change["high"] - change["low"] == pytest.approx(2 * 4.303 * sd / math.sqrt(3))
    assert change["improvement_pct"] == pytest.approx(mean / 20.0 * 100)  # of the baseline's mean excess
    assert change["clear"] is True
    unpaired = compare(base + cell, baseline="40px")["configurations"][1]["vs_baseline"]["jaggedness"]
    assert unpaired["within_noise"] is True  # the seeds' spread hides what pairing shows


def test_the_paired_change_uses_the_badness_and_needs_two_shared_seeds():
    base = [document("a", 0, class_accuracy=0.6), document("a", 1, class_accuracy=0.8)]
    cell = [document("b", 0, class_accuracy=0.7), document("b", 1, class_accuracy=0.7), document("b", 5, class_accuracy=0.1)]
    change = paired_change(ACCURACY, cell, base, None)  # seed 5 has no partner
    assert change["seeds"] == 2 and change["difference"] == pytest.approx(0.0)  # error rate 0.4 -> 0.3 and 0.2 -> 0.3
    assert change["clear"] is False
    assert paired_change(ACCURACY, cell[:1], base, None) is None
    assert paired_change(ACCURACY, [document("b", 0, class_accuracy=None), cell[1]], base, None) is None


def test_the_report_shows_the_paired_table_only_with_two_seeds_on_both_sides():
    base = {"jaggedness": 20.0, "swd": 0.2}
    two = [document("40px", 0, **base), document("40px", 1, **{**base, "jaggedness": 24.0}),
           document("96px", 0, **{**base, "jaggedness": 18.0}), document("96px", 1, **{**base, "jaggedness": 22.0})]
    markdown = format_markdown(compare(two, baseline="40px"), 96, "shards/96")
    assert "paired by seed" in markdown
    assert "| 96px | +9% (+9 to +9) |" in markdown  # 2 points of 22 on both seeds: no spread, clear
    one = [document("40px", 0, **base), document("96px", 0, **{**base, "jaggedness": 18.0})]
    assert "paired by seed" not in format_markdown(compare(one, baseline="40px"), 96, "shards/96")


def test_the_curves_pair_each_stage():
    def stage(images, shift):
        return [dict(document("40px", s, jaggedness=3.0 + s), training={"images_seen": images}) for s in (0, 1)] + \
               [dict(document("96px", s, jaggedness=2.0 + s + shift), training={"images_seen": images}) for s in (0, 1)]

    table = format_curves_paired(curve_rows({4000: stage(4000, 0.0), 8000: stage(8000, 0.5)}))
    assert "| 96px, 4,000 images | +29% (+29 to +29) |" in table  # 1 point of the mean 3.5
    assert "| 96px, 8,000 images | +14% (+14 to +14) |" in table
    assert "40px, 4,000" not in table  # the baseline has no row
