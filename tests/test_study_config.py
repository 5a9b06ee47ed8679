"""ddpm_study.config and cells: study.toml and flags, validation, cell names, the --cells k/n split."""
from __future__ import annotations

import dataclasses
import re

import pytest

from ddpm_study.cells import Cell, find_configuration, grid_cells, parse_split, split_cells
from ddpm_study.config import Budget, Grid, StudyError, load_study, read_toml, write_toml

TOML = """
src = "data"
baseline = "40px-bilinear-aug-auto"

[grid]
sizes = [40, 96, 128]
upsample = ["bilinear", "conv_transpose"]
augment = ["default", "none"]
seeds = [0, 1]

[budget]
images = 20000

[sample]
n = 32
eta = 0.5

[run]
launcher = "torchrun --standalone --nproc_per_node 4 --no-python"
train_args = ["--batch-size", "8"]
eval_args = "--device cuda"
"""


def no_flags(**given):
    keys = ("sizes", "upsample", "augment", "preset", "model_channels", "seeds", "images", "minutes", "src", "shards",
            "display_size", "baseline", "n", "steps", "eta", "guidance", "launcher", "train_args", "sample_args",
            "eval_args", "eval_bootstrap")
    return {key: given.get(key) for key in keys}


def test_study_toml_is_read_into_the_config(tmp_path):
    (tmp_path / "study.toml").write_text(TOML)
    config, fresh = load_study(tmp_path, no_flags())
    assert not fresh
    assert config.grid == Grid(sizes=(40, 96, 128), upsample=("bilinear", "conv_transpose"), augment=("default", "none"),
                               seeds=(0, 1))
    assert config.budget == Budget(images=20000)
    assert config.sample.n == 32 and config.sample.eta == 0.5 and config.sample.steps == 50
    assert config.launcher == ("torchrun", "--standalone", "--nproc_per_node", "4", "--no-python")
    assert config.train_args == ("--batch-size", "8") and config.eval_args == ("--device", "cuda")
    assert config.display == 128  # the largest size
    assert config.shard_dir(96) == (tmp_path.cwd() / "shards" / "96")
    assert len(grid_cells(config.grid)) == 3 * 2 * 2 * 2


def test_flags_override_the_file_and_a_budget_flag_replaces_the_files_budget(tmp_path):
    (tmp_path / "study.toml").write_text(TOML)
    config, _ = load_study(tmp_path, no_flags(sizes="40,96", minutes=30.0, seeds="3", display_size=128))
    assert config.grid.sizes == (40, 96) and config.grid.seeds == (3,)
    assert config.budget == Budget(minutes=30.0)
    assert config.display == 128


def test_flags_alone_make_a_config_that_round_trips_through_study_toml(tmp_path):
    flags = no_flags(sizes="16,32", upsample="bilinear,nearest", model_channels="16,32", images=400, src="data",
                     launcher="torchrun --nproc_per_node 2 --no-python", train_args="--batch-size 4 --lr 1e-3")
    config, fresh = load_study(tmp_path, flags)
    assert fresh
    write_toml(config)
    again, fresh = load_study(tmp_path, no_flags())
    assert not fresh
    assert again == config
    assert read_toml(tmp_path / "study.toml")["model_channels"] == [16, 32]


@pytest.mark.parametrize("text, message", [
    ("[grid]\nsizes = [40]\nsize = [96]\n[budget]\nimages = 1\n", "unknown key 'size' in [grid]; valid: augment, design, model_channels"),
    ("sizes = [40]\n", "'sizes' belongs in the [grid] table; move it below that header"),
    ("size = [40]\n", "unknown key 'size'; valid: baseline, display_size, shards, src, [grid], [budget]"),
    ("[grid]\nsizes = [40]\n", "budget: missing; pass exactly one of --budget-images N"),
    ("[grid]\nsizes = [40]\n[budget]\nimages = 10\nminutes = 5\n", "budget: both given"),
    ("[budget]\nimages = 10\n", "grid sizes: missing; pass --sizes 40,96,128"),
    ("[grid]\nsizes = [40, 30]\n[budget]\nimages = 10\n", "study.toml [grid] sizes 30: sizes must be multiples of 4"),
    ("[grid]\nsizes = [40]\nupsample = ['bilinear', 'lanczos']\n[budget]\nimages = 10\n", "'lanczos': unknown; valid: bilinear"),
    ("[grid]\nsizes = [40]\naugment = ['heavy']\n[budget]\nimages = 10\n", "'heavy': unknown; valid: default, none"),
    ("[grid]\nsizes = '40'\n[budget]\nimages = 'many'\n", "[budget] images 'many': expected an integer"),
    ("[grid\nsizes = [40]\n", "not valid TOML"),
    ("shards = 'shards'\n[grid]\nsizes = [40]\n[budget]\nimages = 10\n", "needs '{size}'"),
    ("[grid]\nsizes = [40]\n[budget]\nimages = 10\n[run]\neval_bootstrap = 1\n", "0 (off) or at least 2"),
])
def test_a_wrong_file_fails_naming_the_key_and_the_fix(tmp_path, text, message):
    (tmp_path / "study.toml").write_text(text)
    with pytest.raises(StudyError, match=re.escape(message)):
        load_study(tmp_path, no_flags())


def test_a_wrong_flag_names_the_flag(tmp_path):
    with pytest.raises(StudyError, match="--upsample 'bogus': unknown"):
        load_study(tmp_path, no_flags(sizes="40", images=10, upsample="bogus"))
    with pytest.raises(StudyError, match="--budget-images 0: must be >= 1"):
        load_study(tmp_path, no_flags(sizes="40", images=0))
    with pytest.raises(StudyError, match="--samples-per-class 1: need at least 2"):
        load_study(tmp_path, no_flags(sizes="40", images=10, n=1))


def test_cell_names_spell_out_every_axis_and_ddpm_train_options_follow():
    cell = Cell(size=96, upsample="conv_transpose", augment="none", preset="tiny", model_channels=32, seed=1)
    assert cell.name == "96px-conv_transpose-noaug-ptiny-w32-s1"
    assert cell.configuration == "96px-conv_transpose-noaug-ptiny-w32"
    assert cell.train_options() == ["--upsample", "conv_transpose", "--augment", "none", "--seed", "1",
                                    "--preset", "tiny", "--model-channels", "32"]
    auto = Cell(40, "bilinear", "default", "auto", None, 0)
    assert auto.name == "40px-bilinear-aug-auto-s0"
    assert "--preset" not in auto.train_options() and "--model-channels" not in auto.train_options()


def test_grid_order_is_sizes_outermost_and_seeds_innermost():
    cells = grid_cells(Grid(sizes=(40, 96), augment=("default", "none"), seeds=(0, 1)))
    assert [cell.name for cell in cells[:3]] == ["40px-bilinear-aug-auto-s0", "40px-bilinear-aug-auto-s1",
                                                 "40px-bilinear-noaug-auto-s0"]
    assert cells[-1].name == "96px-bilinear-noaug-auto-s1"


@pytest.mark.parametrize("parts", [1, 2, 3, 4, 7, 9])
def test_the_k_of_n_parts_are_disjoint_and_cover_every_cell(parts):
    cells = grid_cells(Grid(sizes=(40, 96, 128), augment=("default", "none"), seeds=(0, 1)))
    chunks = [split_cells(cells, part, parts) for part in range(1, parts + 1)]
    assert sorted(cell.name for chunk in chunks for cell in chunk) == sorted(cell.name for cell in cells)
    assert sum(len(chunk) for chunk in chunks) == len(cells)


def test_the_kth_part_takes_every_nth_cell_from_the_kth():
    cells = grid_cells(Grid(sizes=(16, 20, 24, 28, 32, 36, 40, 44)))
    assert [cell.size for cell in split_cells(cells, *parse_split("2/4"))] == [20, 36]


@pytest.mark.parametrize("text", ["0/4", "5/4", "2", "a/b", "2/4/1", ""])
def test_a_bad_split_is_refused(text):
    with pytest.raises(StudyError, match="expected k/n with 1 <= k <= n"):
        parse_split(text)


def test_the_baseline_may_be_a_cell_or_a_configuration():
    cells = grid_cells(Grid(sizes=(40, 96), seeds=(0, 1)))
    assert find_configuration(cells, "96px-bilinear-aug-auto-s1") == "96px-bilinear-aug-auto"
    assert find_configuration(cells, "40px-bilinear-aug-auto") == "40px-bilinear-aug-auto"
    with pytest.raises(StudyError, match="--baseline 64px: no such cell or configuration in the grid; configurations: 40px"):
        find_configuration(cells, "64px")


def test_one_at_a_time_changes_each_axis_alone_from_the_first_values():
    from ddpm_study.cells import grid_cells
    from ddpm_study.config import Grid

    grid = Grid(sizes=(40, 96), upsample=("conv_transpose", "bilinear"), augment=("none", "default"), seeds=(0, 1),
                design="one-at-a-time")
    configurations = list(dict.fromkeys(cell.configuration for cell in grid_cells(grid)))
    assert configurations == ["40px-conv_transpose-noaug-auto", "96px-conv_transpose-noaug-auto",
                              "40px-bilinear-noaug-auto", "40px-conv_transpose-aug-auto"]
    assert len(grid_cells(grid)) == 8  # four configurations, two seeds each
    assert len(grid_cells(dataclasses.replace(grid, design="grid"))) == 16


def test_an_unknown_design_is_refused_naming_the_choices(tmp_path):
    with pytest.raises(StudyError, match="--design 'full': unknown; valid: grid, one-at-a-time"):
        load_study(tmp_path, {"sizes": "40", "images": 10, "design": "full"})
    config, _ = load_study(tmp_path, {"sizes": "40,96", "images": 10, "design": "one-at-a-time"})
    assert config.grid.design == "one-at-a-time"
    assert 'design = "one-at-a-time"' in write_toml(config).read_text()
    assert load_study(tmp_path, {})[0].grid.design == "one-at-a-time"  # read back from study.toml


def test_measure_at_needs_an_image_budget_above_every_stage(tmp_path):
    config, _ = load_study(tmp_path / "s", {"sizes": "40", "images": 40000, "measure_at": "16000,4000"})
    assert config.budget.measure_at == (4000, 16000)
    for flags in ({"images": 4000, "measure_at": "4000"}, {"minutes": 5.0, "measure_at": "100"}):
        with pytest.raises(StudyError, match="--measure-at: needs --budget-images above every value"):
            load_study(tmp_path / "s", {"sizes": "40", **flags})


def test_measure_at_survives_the_toml_and_a_raised_budget(tmp_path):
    config, _ = load_study(tmp_path / "s", {"sizes": "40", "images": 40000, "measure_at": "4000"})
    write_toml(config)
    raised, _ = load_study(tmp_path / "s", {"images": 64000})
    assert raised.budget == Budget(images=64000, measure_at=(4000,))
    plain, _ = load_study(tmp_path / "t", {"sizes": "40", "images": 100})
    write_toml(plain)
    assert "measure_at" not in (tmp_path / "t" / "study.toml").read_text()
