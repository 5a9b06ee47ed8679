"""bench/seeds.py: several bench/quality.py seeds summarised per arm, with the excess ratio."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "bench" / "seeds.py"
spec = importlib.util.spec_from_file_location("bench_seeds", PATH)
seeds = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = seeds
spec.loader.exec_module(seeds)


def result(swd: float, floor: float = 0.1, twin: float | None = None) -> dict:
    ours = {"swd": swd, "swd_floor": floor, "frechet_classifier_distance": 1.0, "class_accuracy": 1.0,
            "spectrum_hf_ratio": 0.9, "nn_ratio": 1.0}
    document = {"ours": ours, "samplers": [{"sampler": "ddim", "steps": 50, **ours, "swd": swd + 0.02}]}
    if twin is not None:
        document["baseline_monai"] = {**ours, "swd": twin, "swd_floor": None}
    return document


def test_arms_average_their_seeds_and_ratios_pair_the_seeds(tmp_path):
    for seed, (ours, shifted) in enumerate([(0.2, 0.3), (0.3, 0.2)]):
        (tmp_path / f"default-s{seed}.json").write_text(json.dumps(result(ours, twin=0.5)))
        (tmp_path / f"shifted-s{seed}.json").write_text(json.dumps(result(shifted)))
    (tmp_path / "notes.json").write_text("{}")  # not ARM-sSEED.json: ignored
    arms = seeds.collect(tmp_path)
    assert set(arms) == {"default", "default:monai", "default:ddim:50", "shifted", "shifted:ddim:50"}
    rows = {row["arm"]: row for row in seeds.summarize(arms, "default")}
    assert rows["default"]["swd"] == pytest.approx((0.25, 0.05))
    assert rows["default:monai"]["excess"][0] == pytest.approx(0.4)  # the twin's excess over our floor
    assert rows["shifted"]["ratio"][0] == pytest.approx((0.1 / 0.2 + 0.2 / 0.1) / 2)  # per seed, then the mean
    table = seeds.markdown(list(rows.values()), "default")
    assert "| default | 0,1 | 0.250 ± 0.050 |" in table


def test_a_folder_without_results_or_a_bad_file_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no ARM-sSEED.json"):
        seeds.collect(tmp_path)
    (tmp_path / "default-s0.json").write_text("not json")
    with pytest.raises(SystemExit, match="default-s0.json: not a bench/quality.py result"):
        seeds.collect(tmp_path)
