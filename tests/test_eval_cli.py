"""`ddpm-eval` through Typer's CliRunner: JSON output, the text table, and one-line errors."""
import json

import pytest
from eval_helpers import FAST, fresh_real, shared_shards, write_samples
from typer.testing import CliRunner

from cli import eval_app

FAST_FLAGS = [f"--{key.replace('_', '-')}={value}" for key, value in FAST.items()]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    shards = shared_shards(tmp_path_factory)
    images, labels = fresh_real(counts=(4, 6))
    return shards, write_samples(tmp_path_factory.mktemp("cli-samples"), images, labels)


def test_json_has_the_metrics_at_the_top_level(folders):
    shards, samples = folders
    result = CliRunner().invoke(eval_app, ["--real", str(shards), "--samples", str(samples), "--json", *FAST_FLAGS])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    for key in ("swd", "swd_levels", "class_accuracy", "classifier_val_accuracy", "spectrum_hf_ratio", "jaggedness",
                "jaggedness_se", "edge_roughness",
                "frechet_classifier_distance", "copies", "nn_ratio", "reference"):
        assert key in document


def test_text_summary_shows_references_and_directions(folders):
    shards, samples = folders
    result = CliRunner().invoke(eval_app, ["--real", str(shards), "--samples", str(samples), "--class", "normal", *FAST_FLAGS])
    assert result.exit_code == 0, result.output
    for text in ("val (floor)", "blurred (ceiling)", "SWD level 32 px (finest: edges)", "NOT Inception FID", "normal:",
                 "jaggedness (staircase edges, points)", "not staircases"):
        assert text in result.stdout


def test_errors_are_one_line_with_exit_code_2(folders, tmp_path):
    shards, samples = folders
    (tmp_path / "dogs").mkdir()
    result = CliRunner().invoke(eval_app, ["--real", str(shards), "--samples", str(tmp_path)])
    assert result.exit_code == 2
    assert "error: --samples" in result.output and "dogs unknown to the shards" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(eval_app, ["--real", str(samples), "--samples", str(samples)])
    assert result.exit_code == 2 and "manifest.json" in result.output
