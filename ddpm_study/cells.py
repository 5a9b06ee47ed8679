"""The cells of a grid: one ddpm-train run per combination of the axes, each with a stable name.

A name spells out every axis, e.g. `96px-bilinear-aug-auto-s0`: size, up-sampling mode, `aug` or
`noaug` (ddpm-train --augment default | none), the model (`auto` = the preset ddpm-train picks
for the size, else the preset's name, plus `-w<channels>` for a width), and the seed. So adding a
value to one axis later adds cells and renames none. The seed-free part (`96px-bilinear-aug-auto`)
names a configuration: the cells that differ only by seed.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from ddpm_study.config import Grid, StudyError


@dataclass(frozen=True)
class Cell:
    size: int
    upsample: str
    augment: str
    preset: str  # 'auto' = ddpm-train's own choice for the size
    model_channels: int | None
    seed: int

    @property
    def configuration(self) -> str:
        augment = {"default": "aug", "none": "noaug"}.get(self.augment, f"aug{self.augment}")
        model = self.preset if self.preset == "auto" else f"p{self.preset}"
        width = f"-w{self.model_channels}" if self.model_channels is not None else ""
        return f"{self.size}px-{self.upsample}-{augment}-{model}{width}"

    @property
    def name(self) -> str:
        return f"{self.configuration}-s{self.seed}"

    @staticmethod
    def seed_in(name: str, configuration: str) -> str:
        """The seed part of a cell `name` of `configuration` (the inverse of `name`), e.g. '0'."""
        return name[len(configuration) + len("-s"):]

    def train_options(self) -> list[str]:
        """The ddpm-train options that make this cell what it is (besides --shards, --out, the budget)."""
        options = ["--upsample", self.upsample, "--augment", self.augment, "--seed", str(self.seed)]
        if self.preset != "auto":
            options += ["--preset", self.preset]
        if self.model_channels is not None:
            options += ["--model-channels", str(self.model_channels)]
        return options


def grid_cells(grid: Grid) -> list[Cell]:
    """The cells of `grid.design`, seeds innermost (the order of the table).

    grid: every combination, sizes outermost. one-at-a-time: the starting point (every axis' first
    value), then for each axis in turn each of its other values with the other axes at the start.
    """
    axes = (grid.sizes, grid.upsample, grid.augment, grid.preset, grid.model_channels)
    if grid.design == "grid":
        combinations = list(itertools.product(*axes))
    else:
        start = tuple(axis[0] for axis in axes)
        combinations = [start] + [start[:index] + (value,) + start[index + 1:]
                                  for index, axis in enumerate(axes) for value in axis[1:]]
    return [Cell(*combination, seed) for combination in combinations for seed in grid.seeds]


def parse_split(text: str) -> tuple[int, int]:
    """'2/4' -> (2, 4): the 2nd of 4 parts, for job array task 2 of 4 (1-based)."""
    try:
        part, parts = (int(word) for word in text.split("/"))
    except ValueError:
        part = parts = 0
    if not 1 <= part <= parts:
        raise StudyError(f"--cells {text!r}: expected k/n with 1 <= k <= n, e.g. --cells 2/4 "
                         "(a job array's task k of n; with a 0-based task id use $((ID + 1))/n)")
    return part, parts


def split_cells(cells: list[Cell], part: int, parts: int) -> list[Cell]:
    """Every `parts`-th cell starting at the `part`-th (1-based): the n parts are disjoint and cover all."""
    return cells[part - 1 :: parts]


def find_configuration(cells: list[Cell], name: str, flag: str = "--baseline") -> str:
    """The configuration that `name` (a cell name or a configuration name) refers to."""
    for cell in cells:
        if name in (cell.name, cell.configuration):
            return cell.configuration
    known = ", ".join(dict.fromkeys(cell.configuration for cell in cells))
    raise StudyError(f"{flag} {name}: no such cell or configuration in the grid; configurations: {known}")
