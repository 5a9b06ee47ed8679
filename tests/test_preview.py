"""`ddpm-data preview`: class shares as JSON, the augmentation grid, and its error messages."""
from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

import cli
from ddpm_data.augment import AugmentConfig
from ddpm_data.preview import PreviewConfig, preview
from ddpm_data.stream import ReaderConfig


def invoke(*args: str):
    return CliRunner().invoke(cli.data_app, ["preview", *map(str, args)])


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_json_reports_shares_near_the_balance(tiny_shards, mode):
    result = invoke(tiny_shards, "--n", 800, "--balance", "normal=1,abnormal=3", "--mode", mode, "--batch-size", 16, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == 800 and report["mode"] == mode and set(report["fractions"]) == {"abnormal", "normal"}
    assert report["fractions"]["abnormal"] == pytest.approx(0.75, abs=0.07)
    assert sum(report["fractions"].values()) == pytest.approx(1.0)
    assert report["expected"] == {"abnormal": 0.75, "normal": 0.25}
    assert report["epoch_samples"] == 34 * 4 and report["epoch_length"] == 9  # ceil(136 / 16)
    assert report["train_counts"] == {"abnormal": 15, "normal": 34}


def test_text_report_auto_mode_and_grid_flags(tiny_shards, tmp_path):
    path = tmp_path / "none.png"
    result = invoke(tiny_shards, "--n", 100, "--balance", "balanced", "--augment", "none", "--degrees", 5, "--grid", path)
    assert result.exit_code == 0, result.output
    assert "mode memory" in result.stdout and "abnormal" in result.stdout and "epoch =" in result.stdout
    assert path.is_file() and f"grid: {path}" in result.stdout


def test_grid_has_an_augmented_and_a_plain_row_per_class(tiny_shards, tmp_path):
    path = tmp_path / "preview.png"
    report = preview(tiny_shards, PreviewConfig(n=64, grid=path, per_class=4, reader=ReaderConfig(balance="balanced")))
    assert report["grid"] == str(path)
    with Image.open(path) as image:
        assert image.size == (110 + 4 * (64 + 2), 4 * (64 + 2))  # grid.py: label column + tiles with 2 px gaps


def test_reports_how_much_detail_the_augmentation_keeps(tiny_shards):
    sharp = preview(tiny_shards, PreviewConfig(n=96))["spectrum_hf_ratio"]
    blurred = preview(tiny_shards, PreviewConfig(n=96, augment=AugmentConfig(interpolation="bilinear", degrees=20.0)))
    none = preview(tiny_shards, PreviewConfig(n=96, augment=AugmentConfig.none()))
    assert none["spectrum_hf_ratio"] == pytest.approx(1.0)
    assert sharp == pytest.approx(1.0, abs=0.1) and blurred["spectrum_hf_ratio"] < sharp - 0.1
    result = invoke(tiny_shards, "--n", 64)
    assert result.exit_code == 0 and "spectrum HF ratio vs the plain crops: " in result.stdout


def test_same_seed_same_report(tiny_shards):
    config = PreviewConfig(n=200, reader=ReaderConfig(balance="sqrt", seed=4))
    assert preview(tiny_shards, config) == preview(tiny_shards, config)


@pytest.mark.filterwarnings("ignore:.*skipped \\(--skip-bad-shards\\)")
def test_errors_name_the_fix(tiny_shards, copy_shards, tmp_path):
    result = invoke(tmp_path)
    assert result.exit_code == 2 and "ddpm-data build" in result.stderr
    result = invoke(tiny_shards, "--balance", "normal=1,tumour=2")
    assert result.exit_code == 2 and "--balance" in result.stderr and "tumour" in result.stderr
    result = invoke(tiny_shards, "--augment", "strong")
    assert result.exit_code == 2 and "valid: default, none" in result.stderr
    shard_dir = copy_shards()
    bad = shard_dir / "train-normal-000002.tar"
    bad.write_bytes(bad.read_bytes()[:100])
    result = invoke(shard_dir, "--mode", "stream")
    assert result.exit_code == 2 and "train-normal-000002.tar" in result.stderr and "--skip-bad-shards" in result.stderr
    result = invoke(shard_dir, "--mode", "stream", "--skip-bad-shards", "--json", "--n", 40)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [entry["path"] for entry in report["skipped"]] == [str(bad)] and report["train_counts"]["normal"] == 30
