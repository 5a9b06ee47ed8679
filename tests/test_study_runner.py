"""ddpm_study.runner: which commands a study runs, and which it skips, resumes or restarts.

The console scripts are test doubles (study_helpers.FakeTools) that write what the real ones
write. The display-size shards are real (conftest's 16 px shards), so the measuring step and
the report run for real.
"""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from study_helpers import FakeTools, option

from ddpm_study.cells import grid_cells
from ddpm_study.config import Budget, Grid, StudyConfig, StudyError
from ddpm_study.files import STATE_NAME, cell_dir
from ddpm_study.runner import run_study, training_state


@pytest.fixture
def study(tmp_path, tiny_shards):
    """A function making a StudyConfig in tmp_path whose 16 px shards exist (real ones)."""
    shutil.copytree(tiny_shards, tmp_path / "shards" / "16")

    def make(**changes) -> StudyConfig:
        settings = dict(root=tmp_path / "study", grid=Grid(sizes=(16,), seeds=(0, 1)), budget=Budget(images=64),
                        shards=str(tmp_path / "shards" / "{size}"))
        settings.update(changes)
        return StudyConfig(**settings)

    return make


def test_a_new_study_checks_trains_samples_measures_and_reports(study):
    config, tools = study(launcher=("torchrun", "--nproc_per_node", "2", "--no-python")), FakeTools()
    outcome = run_study(config, tools=tools)
    assert outcome.failures == {}
    assert [call.tool for call in tools.calls] == ["ddpm-train-dry-run"] + ["ddpm-train", "ddpm-sample", "ddpm-eval"] * 2
    train = tools.tools("ddpm-train")[0]
    assert train.launcher == ("torchrun", "--nproc_per_node", "2", "--no-python")
    assert all(call.launcher == () for call in tools.calls if call.argv[0] != "ddpm-train" or "--dry-run" in call.argv)
    assert option(train.argv, "--max-images") == "64" and option(train.argv, "--seed") == "0"
    assert option(train.argv, "--out") == str(config.root / "cells" / "16px-bilinear-aug-auto-s0")
    sample = tools.tools("ddpm-sample")[1]
    assert option(sample.argv, "--seed") == "1" and "--overwrite" in sample.argv
    report = json.loads((config.root / "report" / "study.json").read_text())
    assert [row["configuration"] for row in report["table"]["configurations"]] == ["16px-bilinear-aug-auto"]
    assert report["table"]["configurations"][0]["values"]["jaggedness"]["noise_source"] == "seeds (2)"
    assert (config.root / "report" / "samples.png").is_file()
    assert "| 16px-bilinear-aug-auto | 2 | 128 | 64 |" in (config.root / "report" / "study.md").read_text()


def test_a_rerun_skips_every_finished_step(study):
    config, tools = study(), FakeTools()
    run_study(config, tools=tools)
    again = FakeTools()
    outcome = run_study(config, tools=again)
    assert again.calls == [] and outcome.failures == {}


def test_a_stopped_cell_is_not_sampled_and_resumes_with_the_same_command(study):
    config = study(grid=Grid(sizes=(16,)))
    first = FakeTools(stop_first_training=True)
    outcome = run_study(config, tools=first)
    assert outcome.failures == {"16px-bilinear-aug-auto-s0": "train: stopped at 32 of 64 images; rerun to resume"}
    assert first.tools("ddpm-sample") == []
    cell = grid_cells(config.grid)[0]
    assert training_state(config, cell) == "resume"
    second = FakeTools()
    assert run_study(config, tools=second).failures == {}
    assert [call.tool for call in second.calls] == ["ddpm-train", "ddpm-sample", "ddpm-eval"]  # no option check again
    assert second.calls[0].argv == first.tools("ddpm-train")[0].argv + ["--resume"]


def test_a_run_folder_without_a_checkpoint_starts_over(study):
    config = study(grid=Grid(sizes=(16,)))
    run = cell_dir(config, grid_cells(config.grid)[0])
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    tools = FakeTools()
    run_study(config, tools=tools)
    assert tools.tools("ddpm-train")[0].argv[-1] == "--overwrite"


def test_a_folder_that_is_not_a_run_folder_is_refused(study):
    config = study(grid=Grid(sizes=(16,)))
    run = cell_dir(config, grid_cells(config.grid)[0])
    run.mkdir(parents=True)
    (run / "notes.txt").write_text("mine")
    with pytest.raises(StudyError, match="not a ddpm-train run folder .*; delete it to train the cell anew"):
        run_study(config, tools=FakeTools())


def test_a_raised_budget_resumes_finished_cells_and_resamples_them(study):
    config = study(grid=Grid(sizes=(16,)))
    run_study(config, tools=FakeTools())
    tools = FakeTools()
    run_study(study(grid=Grid(sizes=(16,)), budget=Budget(images=128)), tools=tools)
    assert [call.tool for call in tools.calls] == ["ddpm-train", "ddpm-sample", "ddpm-eval"]
    assert option(tools.calls[0].argv, "--max-images") == "128" and "--resume" in tools.calls[0].argv


def test_a_wall_time_budget_stops_the_run_and_counts_its_time(study):
    config = study(grid=Grid(sizes=(16,)), budget=Budget(minutes=2.0))
    cell = grid_cells(config.grid)[0]
    run = cell_dir(config, cell)
    tools = FakeTools()
    run_study(config, tools=tools)
    train = tools.tools("ddpm-train")[0]
    assert train.time_limit == pytest.approx(120.0) and option(train.argv, "--max-steps") == str(10**9)
    assert json.loads((run / STATE_NAME).read_text())["train_seconds"] == pytest.approx(120.0)
    assert training_state(config, cell) == "done"
    (run / STATE_NAME).write_text(json.dumps({"train_seconds": 90.0, "launches": 1}))  # a launch cut short
    tools = FakeTools()
    run_study(config, tools=tools)
    assert tools.tools("ddpm-train")[0].time_limit == pytest.approx(30.0)


def test_only_the_cells_of_the_split_run_and_the_others_are_pending(study):
    config = study(grid=Grid(sizes=(16,), seeds=(0, 1, 2)))
    tools = FakeTools()
    run_study(config, split=(2, 2), tools=tools)
    assert [option(call.argv, "--seed") for call in tools.tools("ddpm-train")] == ["1"]
    report = (config.root / "report" / "study.md").read_text()
    assert "pending (no results yet): 16px-bilinear-aug-auto-s0, 16px-bilinear-aug-auto-s2" in report


def test_missing_sizes_are_built_once_from_src(study, tiny_shards, tmp_path):
    config = study(grid=Grid(sizes=(16, 20, 24)), display_size=16, src=tmp_path / "data")
    tools = FakeTools(shard_source=tiny_shards)
    run_study(config, tools=tools)
    builds = tools.tools("ddpm-data")
    assert len(builds) == 1 and option(builds[0].argv, "--size") == "20,24"
    assert option(builds[0].argv, "--src") == str(tmp_path / "data")
    assert (tmp_path / "shards" / "24" / "manifest.json").is_file()


def test_a_size_without_shards_and_without_src_fails_naming_the_fix(study, tmp_path):
    config = study(grid=Grid(sizes=(16, 20)))
    with pytest.raises(StudyError, match=r"shards/20/manifest.json: missing, and no --src to build it from; pass --src DATA"):
        run_study(config, tools=FakeTools())
    assert not (config.root / "cells").exists()


def test_options_ddpm_train_refuses_stop_the_study_before_any_training(study):
    tools = FakeTools(fail={"ddpm-train-dry-run": (2, "error: --preset huge: unknown; valid: 40, 96, 128, 256, tiny")})
    with pytest.raises(StudyError, match=r"cell 16px-bilinear-aug-phuge-s0: ddpm-train refuses its options "
                                         r"\(--preset huge: unknown; valid: 40, 96"):
        run_study(study(grid=Grid(sizes=(16,), preset=("huge",))), tools=tools)
    assert tools.tools("ddpm-train") == []


def test_a_failing_cell_is_reported_and_the_others_go_on(study):
    tools = FakeTools(fail={"ddpm-sample": (1, "error: out of memory")})
    outcome = run_study(study(), tools=tools)
    assert outcome.failures == {f"16px-bilinear-aug-auto-s{seed}": "sample: out of memory" for seed in (0, 1)}
    assert len(tools.tools("ddpm-train")) == 2


def test_train_args_may_not_set_what_the_grid_sets(study):
    with pytest.raises(StudyError, match="train_args: --seed is set by the study"):
        run_study(study(train_args=("--batch-size", "4", "--seed=3")), tools=FakeTools())


def test_an_unknown_baseline_fails_before_anything_runs(study):
    tools = FakeTools()
    with pytest.raises(StudyError, match="--baseline 40px: no such cell"):
        run_study(study(baseline="40px"), tools=tools)
    assert tools.calls == []


def test_a_dry_run_lists_the_cells_and_writes_nothing(study):
    lines = []
    config = study()
    run_study(config, dry_run=True, tools=FakeTools(), log=lines.append)
    assert lines[0].startswith("16px-bilinear-aug-auto-s0: new  ddpm-train --shards")
    assert not config.root.exists()
    staged = []
    run_study(study(budget=Budget(images=64, measure_at=(16, 32))), dry_run=True, tools=FakeTools(), log=staged.append)
    assert staged[0].startswith("stages: every cell is trained to 16, 32 images in turn") and staged[1:] == lines


def test_report_only_rebuilds_the_report_from_what_is_measured_and_runs_nothing(study):
    config = study()
    run_study(config, split=(1, 2), tools=FakeTools())  # seed 0 measured, seed 1 not
    shutil.rmtree(config.root / "report")
    wider = dataclasses.replace(config, grid=Grid(sizes=(16,), seeds=(0, 1, 2)))
    tools, lines = FakeTools(), []
    outcome = run_study(wider, tools=tools, log=lines.append, report_only=True)
    assert tools.calls == [] and outcome.report == config.root / "report" / "study.md"
    report = outcome.report.read_text()
    assert "| 16px-bilinear-aug-auto | 1 | 128 | 64 |" in report  # one seed: 128 samples, 64 images
    assert "pending (no results yet): 16px-bilinear-aug-auto-s1, 16px-bilinear-aug-auto-s2" in report
    assert not (config.root / "cells" / "16px-bilinear-aug-auto-s1").exists()
    for flags, fix in (({"dry_run": True}, "drop --dry-run"), ({"split": (1, 2)}, "drop --cells")):
        with pytest.raises(StudyError, match=fix):
            run_study(config, tools=FakeTools(), report_only=True, **flags)
    with pytest.raises(StudyError, match="no such study"):
        run_study(study(root=config.root.parent / "never-run"), tools=FakeTools(), report_only=True)


def test_an_interrupted_launch_still_counts_its_wall_time(study):
    config = study(grid=Grid(sizes=(16,)), budget=Budget(minutes=2.0))
    first = FakeTools()
    run_study(config, tools=first)  # a finished cell, then an interrupt while it is resumed
    run = cell_dir(config, grid_cells(config.grid)[0])
    (run / STATE_NAME).write_text(json.dumps({"train_seconds": 30.0, "launches": 1}))

    def interrupted(argv, **options):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(config, tools=interrupted)
    book = json.loads((run / STATE_NAME).read_text())
    assert book["launches"] == 2 and 30.0 <= book["train_seconds"] < 40.0


def test_a_damaged_time_book_is_named_and_a_running_launch_is_booked_as_it_goes(study, monkeypatch):
    from ddpm_study import runner

    config = study(grid=Grid(sizes=(16,)), budget=Budget(minutes=2.0))
    run_study(config, tools=FakeTools())
    run = cell_dir(config, grid_cells(config.grid)[0])
    (run / STATE_NAME).write_text("{not json")
    monkeypatch.setattr(runner.TrainingClock, "BOOK_EVERY_S", 0.05)
    booked = []

    def slow_train(argv, **options):  # while it runs, the book already holds its time
        import time

        time.sleep(0.3)
        booked.append(json.loads((run / STATE_NAME).read_text()))
        raise KeyboardInterrupt

    lines = []
    with pytest.raises(KeyboardInterrupt):
        run_study(config, tools=slow_train, log=lines.append)
    assert any(f"{run / STATE_NAME}: unreadable" in line and "restarts from 0" in line for line in lines), lines
    assert booked and booked[0]["train_seconds"] > 0.1 and booked[0]["launches"] == 1


def test_training_advice_a_study_cannot_follow_is_translated(study):
    config = study(grid=Grid(sizes=(16,)))
    line = "error: RUN/checkpoints/step.pt: does not fit this run (x); start a new run with another --out"
    outcome = run_study(config, tools=FakeTools(fail={"ddpm-train": (2, line)}))
    (failure,) = outcome.failures.values()
    run = cell_dir(config, grid_cells(config.grid)[0])
    assert failure.endswith(f"; in a study, delete {run} to train the cell anew"), failure


def test_measure_at_trains_every_cell_stage_by_stage_and_measures_each_stage(study):
    config, tools = study(budget=Budget(images=64, measure_at=(16, 32))), FakeTools()
    reports = []
    outcome = run_study(config, tools=tools, log=lambda line: reports.append(line) if "report" in line else None)
    assert [line.split("(")[1] for line in reports] == ["0 of 2 cells measured, 2 at 16 images, 0 at 32 images)",
                                                        "0 of 2 cells measured, 2 at 16 images, 2 at 32 images)",
                                                        "2 of 2 cells measured, 2 at 16 images, 2 at 32 images)"]
    assert outcome.failures == {}
    trains = [(option(call.argv, "--seed"), option(call.argv, "--max-images"), "--resume" in call.argv)
              for call in tools.tools("ddpm-train")]
    assert trains == [("0", "16", False), ("1", "16", False), ("0", "32", True), ("1", "32", True),
                      ("0", "64", True), ("1", "64", True)]  # stage by stage over all cells
    cell = cell_dir(config, grid_cells(config.grid)[0])
    for stage in (16, 32):
        measured = json.loads((cell / "study" / f"at-{stage}" / "metrics-16.json").read_text())
        assert measured["training"]["images_seen"] == stage and measured["stage"] == stage
        assert measured["metrics"]["checkerboard"] > 0
    assert json.loads((cell / "study" / "metrics-16.json").read_text())["training"]["images_seen"] == 64
    report = json.loads((config.root / "report" / "study.json").read_text())
    points = report["curves"]["16px-bilinear-aug-auto"]
    assert [point["images"] for point in points] == [16, 32, 64] and all(point["seeds"] == 2 for point in points)
    text = (config.root / "report" / "study.md").read_text()
    assert "## Along training" in text and "| 16px-bilinear-aug-auto | 32 | 2 |" in text
    assert (config.root / "report" / "curves.png").is_file()
    again = FakeTools()
    assert run_study(config, tools=again).failures == {} and again.calls == []


def test_a_stage_whose_samples_were_missed_is_named_not_drawn_from_a_later_checkpoint(study):
    config = study(grid=Grid(sizes=(16,)), budget=Budget(images=64, measure_at=(16,)))
    run_study(config, tools=FakeTools())
    changed = study(grid=Grid(sizes=(16,)), budget=Budget(images=64, measure_at=(16,)),
                    sample=dataclasses.replace(config.sample, steps=7))  # new settings after the cell trained on
    tools = FakeTools()
    outcome = run_study(changed, tools=tools)
    assert "trained past 16 images (64)" in outcome.failures["16px-bilinear-aug-auto-s0"]
    assert tools.tools("ddpm-sample") == []
