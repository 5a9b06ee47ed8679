"""`ddpm-data build`, `stats`, `verify` through Typer's CliRunner."""
from __future__ import annotations

import inspect
import json

import pytest
from typer.testing import CliRunner

from cli import data_app
from ddpm_data.shards import BuildConfig
from helpers_data import flip_byte, make_folder

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(data_app, [str(a) for a in args])


def _output(result) -> str:
    return result.output + (result.stderr if result.stderr_bytes is not None else "")


@pytest.fixture
def src(tmp_path):
    return make_folder(tmp_path / "data", {"normal": 8, "abnormal": 4})


def test_build_stats_verify(src, tmp_path):
    out = tmp_path / "shards" / "{size}"
    result = _run("build", "--src", src, "--size", "24,32", "--out", out, "--workers", "0", "--shard-size", "4")
    assert result.exit_code == 0, _output(result)
    assert "size 24 (stored 26 px)" in result.output and "size 32 (stored 35 px)" in result.output
    folder = tmp_path / "shards" / "32"
    stats = _run("stats", folder, "--json")
    assert stats.exit_code == 0, _output(stats)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert json.loads(stats.stdout)["counts"] == manifest["counts"]
    text = _run("stats", folder, "--grid", tmp_path / "grid.png")
    assert text.exit_code == 0 and "abnormal" in text.output and (tmp_path / "grid.png").is_file()
    ok = _run("verify", folder)
    assert ok.exit_code == 0 and ": ok (" in ok.output
    shard = manifest["shards"][0]["path"]
    flip_byte(folder / shard, 600)
    bad = _run("verify", folder)
    assert bad.exit_code == 1 and shard in _output(bad)


def test_missing_source_shows_layout_and_synth_hint(tmp_path):
    result = _run("build", "--src", tmp_path / "nothing", "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert "folder does not exist" in _output(result) and "ddpm-data synth data" in _output(result)
    assert "Traceback" not in _output(result)


def test_existing_output_and_bad_options_fail_cleanly(src, tmp_path):
    out = tmp_path / "o"
    assert _run("build", "--src", src, "--size", "24", "--out", out, "--workers", "0").exit_code == 0
    again = _run("build", "--src", src, "--size", "24", "--out", out, "--workers", "0")
    assert again.exit_code == 2 and "--overwrite" in _output(again)
    assert _run("build", "--src", src, "--size", "24", "--out", out, "--workers", "0", "--overwrite").exit_code == 0
    for args, needle in [(["--fit", "zoom"], "'zoom' is not one of 'crop', 'squash', 'pad'"), (["--size", "24,32"], "{size}"),
                         (["--channels", "2"], "--channels"), (["--size", "big"], "--size")]:
        result = _run("build", "--src", src, "--out", tmp_path / "x", *args)
        assert result.exit_code == 2 and needle in _output(result), (args, _output(result))


def test_strict_turns_skips_into_an_error(src, tmp_path):
    (src / "normal" / "bad.png").write_text("not a png")
    result = _run("build", "--src", src, "--size", "24", "--out", tmp_path / "o", "--workers", "0", "--strict")
    assert result.exit_code == 2 and "normal/bad.png: not an image" in _output(result)
    assert not (tmp_path / "o").exists()


def test_stats_and_verify_on_missing_folder(tmp_path):
    for command in ("stats", "verify"):
        result = _run(command, tmp_path / "shards" / "96")
        assert result.exit_code != 0 and "ddpm-data build --size 96" in _output(result)


def test_cli_defaults_equal_build_config_defaults():
    from cli import build

    parameters = inspect.signature(build).parameters
    defaults = BuildConfig()
    assert str(defaults.src) == str(parameters["src"].default)
    assert ",".join(map(str, defaults.size)) == parameters["size"].default
    for name in ("out", "margin", "channels", "val_fraction", "shard_size", "workers", "max_pixels", "strict", "overwrite",
                 "buffer_mb"):
        assert getattr(defaults, name) == parameters[name].default, name
    assert defaults.fit.value == parameters["fit"].default
