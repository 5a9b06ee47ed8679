"""ddpm_study.measure: cells of different sizes measured at one display size, by the real ddpm-eval."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from eval_helpers import make_shards
from PIL import Image
from study_helpers import FakeTools, option

from ddpm_study.cells import grid_cells
from ddpm_study.config import Budget, Grid, SampleSettings, StudyConfig
from ddpm_study.measure import display_dir, metrics_path, resize_folder
from ddpm_study.files import cell_dir
from ddpm_study.runner import run_study

QUICK_EVAL = ("--classifier-epochs", "1", "--swd-descriptors", "64", "--swd-directions", "8")


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_shards):
    root = tmp_path_factory.mktemp("display")
    make_shards(root / "32", size=32, counts=(12, 16))  # rendered shapes: edges to measure
    shutil.copytree(root / "32" / "shards", root / "shards" / "32")
    shutil.copytree(tiny_shards, root / "shards" / "16")
    return root / "shards"


def config_for(tmp_path, shards, **changes) -> StudyConfig:
    settings = dict(root=tmp_path / "study", grid=Grid(sizes=(16, 32)), budget=Budget(images=64),
                    shards=str(shards / "{size}"), eval_args=QUICK_EVAL, sample=SampleSettings(n=8))
    return StudyConfig(**{**settings, **changes})


def test_every_cell_is_resized_to_the_display_size_and_measured_against_its_shards(tmp_path, shards):
    config = config_for(tmp_path, shards)
    tools = FakeTools(real_evals=2)  # the real evaluator for both cells: its jaggedness is the smooth view's
    assert run_study(config, tools=tools).failures == {}
    assert config.display == 32
    small, large = grid_cells(config.grid)
    for cell in (small, large):
        call = next(c for c in tools.tools("ddpm-eval") if cell.name in option(c.argv, "--samples"))
        assert option(call.argv, "--real") == str(shards / "32")
        assert option(call.argv, "--samples") == str(display_dir(config, cell))
        document = json.loads(metrics_path(config, cell).read_text())
        assert document["counts"]["samples"] == {"abnormal": 8, "normal": 8}
        assert set(document["metrics"]) >= {"jaggedness", "swd", "swd_finest", "spectrum_hf_ratio", "edge_roughness",
                                            "class_accuracy", "frechet_classifier_distance"}
        assert all(document["metrics"][key] is not None for key in ("jaggedness", "swd", "spectrum_hf_ratio"))
        assert document["noise"]["jaggedness"] > 0
        assert document["real_val"]["jaggedness"] is not None and document["real_val"]["n"] > 0
    native = Image.open(cell_dir(config, small) / "study" / "samples" / "normal" / "0003.png")
    shown = Image.open(display_dir(config, small) / "normal" / "0003.png")
    assert native.size == (16, 16) and shown.size == (32, 32)
    assert np.array_equal(np.asarray(shown), np.asarray(native.resize((32, 32), Image.Resampling.LANCZOS)))
    enlarged = Image.open(display_dir(config, small, nearest=True) / "normal" / "0003.png")  # as a plain viewer shows it
    assert np.array_equal(np.asarray(enlarged), np.asarray(native.resize((32, 32), Image.Resampling.NEAREST)))
    small_metrics, large_metrics = (json.loads(metrics_path(config, cell).read_text()) for cell in (small, large))
    assert small_metrics["noise"]["jaggedness_nearest"] > 0
    assert large_metrics["metrics"]["jaggedness_nearest"] == pytest.approx(large_metrics["metrics"]["jaggedness"])  # 32 px at 32
    report = json.loads((config.root / "report" / "study.json").read_text())
    assert report["display_size"] == 32 and len(report["table"]["configurations"]) == 2


def test_a_new_display_size_or_eval_option_remeasures_without_retraining(tmp_path, shards):
    config = config_for(tmp_path, shards, grid=Grid(sizes=(16,)), display_size=16, eval_args=())
    run_study(config, tools=FakeTools())
    tools = FakeTools()
    run_study(config_for(tmp_path, shards, grid=Grid(sizes=(16,)), display_size=32, eval_args=()), tools=tools)
    assert [call.tool for call in tools.calls] == ["ddpm-eval"]
    cell = grid_cells(config.grid)[0]
    assert (cell_dir(config, cell) / "study" / "metrics-16.json").is_file()
    assert (cell_dir(config, cell) / "study" / "metrics-32.json").is_file()


def test_bootstrap_runs_give_each_evaluator_metric_a_noise_level(tmp_path, shards):
    config = config_for(tmp_path, shards, grid=Grid(sizes=(16,)), display_size=16, eval_args=(), eval_bootstrap=3)
    tools = FakeTools()
    run_study(config, tools=tools)
    evals = tools.tools("ddpm-eval")
    assert len(evals) == 4  # the samples, then 3 resamples
    cell = grid_cells(config.grid)[0]
    document = json.loads(metrics_path(config, cell).read_text())
    assert set(document["noise"]) >= {"jaggedness", "swd", "class_accuracy"}
    assert not any(path.name.endswith("-bootstrap") for path in (cell_dir(config, cell) / "study").iterdir())


def test_resize_folder_keeps_class_folders_and_ignores_loose_files(tmp_path):
    source = tmp_path / "samples"
    (source / "normal").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(source / "normal" / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(source / "normal-grid.png")
    counts = resize_folder(source, tmp_path / "shown", 24)
    assert counts == {"normal": 1}
    assert Image.open(tmp_path / "shown" / "normal" / "a.png").size == (24, 24)
    assert not (tmp_path / "shown" / "normal-grid.png").exists()
