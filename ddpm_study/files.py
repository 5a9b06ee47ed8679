"""Where a study keeps its files, and how it reads and writes them: the helpers every study module shares.

It imports nothing of the study but its config, so runner, measure and report all build on it and
none of them needs another for a path or a JSON file.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from ddpm_study.cells import Cell
from ddpm_study.config import StudyConfig

CELLS_DIR = "cells"
STATE_NAME = "study-cell.json"  # in a run folder: wall time spent training it, over all launches


def cell_dir(config: StudyConfig, cell: Cell) -> Path:
    return config.root / CELLS_DIR / cell.name


def stage_dir(config: StudyConfig, cell: Cell, stage: int | None = None) -> Path:
    """The study's files of a cell: at the budget (stage None) study/, on its way (--measure-at N) study/at-N/."""
    folder = cell_dir(config, cell) / "study"
    return folder if stage is None else folder / f"at-{stage}"


def read_json(path: Path, on_damage: Callable[[str], None] | None = None) -> dict:
    """The JSON object in `path`; {} when it is missing, unreadable or not an object.
    `on_damage(line)` hears of a file that exists but cannot be read as an object."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        document = error
    if not isinstance(document, dict):
        if on_damage is not None:
            reason = f"{type(document).__name__}: {document}" if isinstance(document, Exception) else "not an object"
            on_damage(f"{path}: unreadable ({reason}); read as empty")
        return {}
    return document


def write_json(path: Path, document: dict) -> Path:
    """Written whole to a temporary file and renamed: parallel tasks and readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    temporary.replace(path)
    return path


def latest_checkpoint(run_dir: Path) -> str | None:
    names = sorted(path.name for path in (run_dir / "checkpoints").glob("step-*.pt"))
    return names[-1] if names else None


def sample_marker(config: StudyConfig, cell: Cell, stage: int | None = None) -> dict | None:
    """What the cell's samples must have been drawn from and with; None without a checkpoint.

    At the budget: the latest checkpoint. On the way (`stage` N): the images seen, as the checkpoint
    of that moment is replaced once the cell trains on."""
    checkpoint = latest_checkpoint(cell_dir(config, cell))
    if checkpoint is None:
        return None
    origin = {"checkpoint": checkpoint} if stage is None else {"images": stage}
    return {**origin, **asdict(config.sample), "seed": cell.seed, "sample_args": list(config.sample_args)}


def matches(marker: dict, wanted: dict) -> bool:
    """Whether a stored marker records every item of `wanted` (it may record more, e.g. the checkpoint used)."""
    return bool(marker) and all(marker.get(key) == value for key, value in wanted.items())
