"""The pure helpers of bench/train.py (the bench itself trains for minutes; it is not run here)."""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

from ddpm_model.presets import PRESETS

PATH = Path(__file__).resolve().parents[1] / "bench" / "train.py"
spec = importlib.util.spec_from_file_location("bench_train", PATH)
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # dataclasses look their module up while the file runs
spec.loader.exec_module(bench)


def line(step: int, img_per_s: float, data_wait: float = 0.0) -> dict:
    return {"step": step, "images": 16 * step, "loss": 0.5, "img_per_s": img_per_s, "data_wait": data_wait}


def test_steady_figures_drop_the_first_steps_and_validation_lines():
    records = [line(1, 1.0), line(2, 2.0), line(3, 10.0, 0.1), line(4, 20.0, 0.3), line(5, 40.0, 0.2),
               {"step": 5, "images": 80, "val_loss": 0.4, "val_loss_ema": 0.5}]
    figures = bench.steady_figures(records, skip=2)
    assert figures["steps"] == 3
    assert figures["img_s"] == pytest.approx(20.0)
    assert figures["data_wait"] == pytest.approx(0.2)


def test_steady_figures_take_the_median_step_time_not_the_median_rate():
    # two lines: median seconds per image (1/10 + 1/40) / 2 = 1/16, so 16 img/s, not (10 + 40) / 2
    figures = bench.steady_figures([line(1, 1.0), line(2, 10.0), line(3, 40.0)], skip=1)
    assert figures["img_s"] == pytest.approx(16.0)


def test_steady_figures_name_the_fix_when_nothing_is_left():
    with pytest.raises(ValueError, match="raise --steps"):
        bench.steady_figures([line(1, 5.0), line(2, 5.0)], skip=2)


def test_ratios_and_goals():
    values = bench.ratios(trainer_img_s=45.0, ours_img_s=50.0, twin_img_s=40.0, ours_trainer_format_img_s=47.0)
    assert values == pytest.approx({"ours_over_twin": 1.25, "trainer_over_ours": 45.0 / 47.0})  # the trainer's format
    values = bench.ratios(trainer_img_s=45.0, ours_img_s=50.0, twin_img_s=40.0, ours_trainer_format_img_s=50.0)
    assert bench.verdicts(values) == {"ours_over_twin": True, "trainer_over_ours": False}
    assert bench.verdicts({"ours_over_twin": 1.0, "trainer_over_ours": 0.95}) == {
        "ours_over_twin": True, "trainer_over_ours": True}


def test_ratios_refuse_a_zero_throughput():
    with pytest.raises(ValueError, match="> 0"):
        bench.ratios(0.0, 1.0, 1.0, 1.0)


def test_trainer_args_time_only_steps():
    config = bench.TrainBenchConfig(steps=5, warmup=2)
    args = bench.trainer_args(config, Path("shards/32"), Path("runs/x"))
    flags = dict(zip(args, args[1:]))  # each flag -> the word after it
    assert config.trainer_steps() == 8 and flags["--max-steps"] == "8"
    assert flags["--log-every"] == "1" and flags["--device"] == "cpu" and flags["--preset"] == "tiny"
    for interval in ("--val-every", "--checkpoint-every"):
        assert int(flags[interval]) > config.trainer_steps()
    assert flags["--quality-every"] == "0"
    assert "--batch-size" not in args  # the trainer's default for the preset


def test_trainer_args_pass_a_given_batch_size():
    args = bench.trainer_args(bench.TrainBenchConfig(batch_size=4), Path("s"), Path("r"))
    assert args[args.index("--batch-size") + 1] == "4"


def test_parse_sizes():
    assert bench.parse_sizes("32, 96", "tiny") == (32, 96)
    with pytest.raises(ValueError, match="--sizes .*multiple of 4"):
        bench.parse_sizes("30", "tiny")
    with pytest.raises(ValueError, match="--sizes"):
        bench.parse_sizes("32,x", "tiny")


def test_parse_args_defaults_and_errors(capsys):
    config = bench.parse_args([])
    assert (config.sizes, config.preset, config.batch_size, config.threads) == ((32, 96), "tiny", None, 1)
    with pytest.raises(SystemExit):
        bench.parse_args(["--steps", "0"])
    assert "--steps 0" in capsys.readouterr().err


def test_layout_mismatch():
    preset = PRESETS["tiny"]
    resolved = dataclasses.replace(preset, image_size=96, num_classes=2, in_channels=3, aug_dim=9, dropout=0.1)
    assert bench.layout_mismatch(resolved, preset) == []
    wider = dataclasses.replace(resolved, model_channels=64, num_classes=3)
    assert bench.layout_mismatch(wider, preset) == ["model_channels", "num_classes"]


def test_format_table_shows_the_figures_and_verdicts():
    values = bench.ratios(45.0, 50.0, 40.0, 50.0)
    row = {"size": 32, "preset": "tiny", "batch_size": 16, "trainer_img_s": 45.0, "trainer_steps": 5,
           "trainer_data_wait": 0.02, "ours_img_s": 50.0, "ours_format": "channels_last", "twin_img_s": 40.0,
           "twin_format": "contiguous", **values, "meets": bench.verdicts(values)}
    table = bench.format_table(row)
    assert "45.00 img/s" in table and "1.250" in table and "0.900" in table
    assert "goal >= 0.95: not met" in table and "goal >= 1: met" in table


def test_steps_seconds_sums_each_metrics_line_interval():
    records = [{"step": 50, "images": 800, "img_per_s": 8.0}, {"step": 50, "images": 800, "val_loss": 0.1},
               {"step": 100, "images": 1600, "img_per_s": 16.0}]
    assert bench.steps_seconds(records) == pytest.approx(800 / 8.0 + 800 / 16.0)
    with pytest.raises(ValueError, match="logged no step"):
        bench.steps_seconds([{"step": 1, "images": 16, "val_loss": 0.2}])


def test_fixed_cost_args_keep_every_default_but_the_length():
    args = bench.fixed_cost_args(bench.TrainBenchConfig(fixed_cost_steps=100), Path("shards/96"), Path("runs/d"))
    flags = dict(zip(args, args[1:]))
    assert flags["--max-steps"] == "100" and flags["--preset"] == "tiny"
    assert not {"--val-every", "--checkpoint-every", "--quality-every", "--sample-every", "--batch-size"} & set(args)
