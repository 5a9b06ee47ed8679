"""`ddpm-study` through Typer's CliRunner: a wrong grid fails with one line and exit status 2."""
from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

import cli


def invoke(*args):
    return CliRunner().invoke(cli.study_app, [str(arg) for arg in args])


def one_line_error(result, status: int = 2) -> str:
    assert result.exit_code == status, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    return errors[0]


@pytest.mark.parametrize("args, message", [
    (["--sizes", "40"], "budget: missing; pass exactly one of --budget-images N"),
    (["--sizes", "40", "--budget-images", "10", "--budget-minutes", "5"], "budget: both given"),
    (["--budget-images", "10"], "grid sizes: missing; pass --sizes 40,96,128"),
    (["--sizes", "40", "--budget-images", "10", "--upsample", "lanczos"], "--upsample 'lanczos': unknown; valid: bilinear"),
    (["--sizes", "40,fifty", "--budget-images", "10"], "--sizes 'fifty': expected an integer"),
    (["--sizes", "40", "--budget-images", "10", "--cells", "5/4"], "--cells '5/4': expected k/n with 1 <= k <= n"),
    (["--sizes", "40", "--budget-images", "10", "--baseline", "96px"], "--baseline 96px: no such cell or configuration"),
    (["--sizes", "40", "--budget-images", "10", "--train-args", "--epochs 3"], "train_args: --epochs is set by the study"),
    (["--sizes", "40", "--budget-images", "10", "--report-only"], "no such study; --report-only reports on a study that has run"),
])
def test_a_wrong_grid_fails_with_one_line_naming_the_fix(tmp_path, args, message):
    assert message in one_line_error(invoke(tmp_path / "study", *args))
    assert not (tmp_path / "study" / "study.toml").exists()


def test_a_size_without_shards_and_without_src_names_both_fixes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(invoke("study", "--sizes", "40,96", "--budget-images", "10"))
    assert line == (f"error: {tmp_path}/shards/40/manifest.json: missing, and no --src to build it from; pass --src DATA "
                    "(an image folder) or run 'ddpm-data build --src DATA --size 40,96 --out shards/{size}'")


def test_an_unknown_key_in_study_toml_fails_naming_it(tmp_path):
    (tmp_path / "study.toml").write_text("[grid]\nsizes = [40]\nseed = [1]\n[budget]\nimages = 10\n")
    assert "unknown key 'seed' in [grid]; valid: augment, design, model_channels, preset, seeds, sizes, upsample" in \
        one_line_error(invoke(tmp_path))


def test_an_unknown_flag_is_a_usage_error(tmp_path):
    result = invoke(tmp_path, "--sizes", "40", "--budget-images", "10", "--size", "96")
    assert result.exit_code == 2 and "No such option" in result.output and "Traceback" not in result.output


def test_a_dry_run_prints_every_cell_and_writes_nothing(tmp_path, tiny_shards, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_shards, tmp_path / "shards" / "16")
    result = invoke("study", "--sizes", "16", "--seeds", "0,1", "--budget-images", "100", "--dry-run",
                    "--launcher", "torchrun --nproc_per_node 2 --no-python", "--cells", "2/2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("16px-bilinear-aug-auto-s1: new  ddpm-train --shards")
    assert "--max-images 100" in lines[0]
    assert not (tmp_path / "study").exists()


def test_the_first_run_saves_the_settings_for_the_tasks_of_a_job_array(tmp_path, tiny_shards, monkeypatch):
    from ddpm_study.config import load_study

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_shards, tmp_path / "shards" / "16")
    # no training happens: the option check (ddpm-train --dry-run) refuses the preset first
    result = invoke("study", "--sizes", "16", "--budget-images", "100", "--preset", "no-such-preset",
                    "--train-args", "--device cpu")
    assert "cell 16px-bilinear-aug-pno-such-preset-s0: ddpm-train refuses its options" in one_line_error(result)
    config, fresh = load_study(tmp_path / "study", {})
    assert not fresh and config.grid.preset == ("no-such-preset",) and config.train_args == ("--device", "cpu")


def test_shards_at_a_url_stay_a_url_and_a_url_with_credentials_is_refused_unseen(tmp_path, tiny_shards, monkeypatch):
    from helpers_remote import http_server

    monkeypatch.chdir(tmp_path)
    line = one_line_error(invoke("study", "--sizes", "16", "--budget-images", "10", "--dry-run",
                                 "--shards", "http://reader:pa55word@127.0.0.1:9/{size}"))
    assert "holds credentials" in line and "pa55word" not in line
    with http_server(tiny_shards.parent) as base:
        result = invoke("study", "--sizes", "16", "--budget-images", "10", "--dry-run", "--shards", f"{base}/{{size}}")
    assert result.exit_code == 0, result.output
    assert f"--shards {base}/16 " in result.output
    assert not (tmp_path / "http:").exists() and not any(tmp_path.rglob("http:*"))
