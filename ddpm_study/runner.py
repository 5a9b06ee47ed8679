"""Run a study: build missing shards, then train, sample and measure every cell, then write the report.

Each cell is an ordinary ddpm-train run folder, STUDY/cells/<cell>/, usable with ddpm-sample. The
study's own files for the cell go in STUDY/cells/<cell>/study/, which is created only after
training has made the run folder. Every step is skipped when its result is already there:

| step    | done when                                                     | otherwise                              |
|---|---|---|
| shards  | <shards>/manifest.json exists for every size needed           | `ddpm-data build --src` (once, locked) |
| train   | summary.json finished with >= budget images / >= budget time  | new run, `--resume`, or `--overwrite`  |
| sample  | study/samples.json names the latest checkpoint and settings    | `ddpm-sample --overwrite`              |
| measure | study/metrics-<D>.json was made from these samples and inputs | `ddpm-eval --json` + jaggedness        |

With `--measure-at N1,N2` every cell is first trained to N1 images, sampled and measured there
(files in study/at-N1/), then N2, then the budget: stage by stage over all cells, so the early
stages of every cell are in the report first. The steps are the same; a cell is resumed from one
stage to the next, and its learning rate is constant after the warm-up (ddpm-train), so the
stages do not change the training.

A stopped cell (pre-empted, Ctrl-C, out of time) resumes from its checkpoint by rerunning the
same ddpm-train command with `--resume`. A cell whose run folder has no checkpoint yet starts
over. A cell that fails is reported, and the study continues with the other cells.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ddpm_data.manifest import MANIFEST_NAME
from ddpm_data.remote import exists, is_url, join
from ddpm_study.cells import Cell, find_configuration, grid_cells, split_cells
from ddpm_study.config import StudyConfig, StudyError
from ddpm_study.files import (STATE_NAME, cell_dir, latest_checkpoint, matches, read_json, sample_marker, stage_dir,
                               write_json)
from ddpm_study.tools import Subprocesses, TerminationAsInterrupt, Tools

UNBOUNDED_STEPS = 10**9  # duration for a wall-time budget: the study stops the run, not ddpm-train
# ddpm-train options the study sets per cell; in train_args they would change what a cell is.
RESERVED_TRAIN = ("--shards", "--img-size", "--out", "--resume", "--overwrite", "--dry-run", "--seed", "--upsample",
                  "--augment", "--preset", "--model-channels", "--epochs", "--max-steps", "--max-images")


@dataclass
class Outcome:
    cells: list[Cell]  # the cells this invocation was responsible for (its --cells part)
    failures: dict[str, str] = field(default_factory=dict)  # cell name -> 'step: error'
    report: Path | None = None










def training_state(config: StudyConfig, cell: Cell, stage: int | None = None) -> str:
    """'new', 'resume', 'restart' (a run folder without a checkpoint) or 'done' for this budget (or `stage` images)."""
    run = cell_dir(config, cell)
    if not run.is_dir() or not any(run.iterdir()):
        return "new"
    if not (run / "config.json").is_file():
        raise StudyError(f"{run}: not a ddpm-train run folder (no config.json); delete it to train the cell anew")
    if latest_checkpoint(run) is None:
        return "restart"
    summary, state = read_json(run / "summary.json"), read_json(run / STATE_NAME)
    if config.budget.images is not None:
        done = summary.get("status") == "finished" and summary.get("images_seen", 0) >= (stage or config.budget.images)
    else:
        done = bool(summary) and state.get("train_seconds", 0.0) >= config.budget.minutes * 60
    return "done" if done else "resume"


class TrainingClock:
    """Books a cell's training time in its STATE_NAME file: every BOOK_EVERY_S seconds while the
    launch runs, and once at its end (an interrupted launch counts too: a wall-time budget must
    not grow with each pre-emption, and a study killed outright loses at most BOOK_EVERY_S)."""

    BOOK_EVERY_S = 30.0

    def __init__(self, run_dir: Path, book: dict) -> None:
        self.run_dir, self.before = run_dir, book.get("train_seconds", 0.0)
        self.launches = book.get("launches", 0) + 1
        self.started, self.seconds = time.monotonic(), None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)

    def __enter__(self) -> "TrainingClock":
        self._thread.start()
        return self

    def stop(self, seconds: float) -> None:
        """The launch's own measured time, booked instead of the clock's at exit."""
        self.seconds = seconds

    def _tick(self) -> None:
        while not self._done.wait(self.BOOK_EVERY_S):
            self._book(time.monotonic() - self.started)

    def _book(self, spent: float) -> None:
        if (self.run_dir / "config.json").is_file():  # ddpm-train made the run folder
            write_json(self.run_dir / STATE_NAME, {"train_seconds": self.before + spent, "launches": self.launches})

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self._book(self.seconds if self.seconds is not None else time.monotonic() - self.started)


def train_command(config: StudyConfig, cell: Cell, state: str, stage: int | None = None) -> list[str]:
    """The one ddpm-train command of a cell (to `stage` images on its way); a stopped cell reruns it with --resume."""
    if config.budget.images is not None:
        duration = ["--max-images", str(stage or config.budget.images)]
    else:
        duration = ["--max-steps", str(UNBOUNDED_STEPS)]
    command = ["ddpm-train", *config.train_args, "--shards", str(config.shard_dir(cell.size)),
               "--out", str(cell_dir(config, cell)), *duration, *cell.train_options()]
    return command + {"resume": ["--resume"], "restart": ["--overwrite"]}.get(state, [])


def check_train_args(config: StudyConfig) -> None:
    for word in config.train_args:
        if word.split("=")[0] in RESERVED_TRAIN:
            raise StudyError(f"train_args: {word.split('=')[0]} is set by the study for each cell (grid axes, budget, "
                             "folders); remove it from --train-args / [run] train_args")


def ensure_shards(config: StudyConfig, sizes: list[int], tools: Tools, log: Callable[[str], None]) -> None:
    """Build the missing sizes from --src in one `ddpm-data build`; a lock keeps parallel tasks from racing."""
    missing = _missing_sizes(config, sizes)
    if not missing:
        return
    with _lock(config.root / ".shards.lock"):
        missing = _missing_sizes(config, missing)
        if not missing:
            return
        log(f"study: building shards for {', '.join(map(str, missing))} px from {config.src}")
        pattern = config.shards if is_url(config.shards) else str(Path(config.shards).absolute())
        run = tools(["ddpm-data", "build", "--src", str(config.src), "--size", ",".join(map(str, missing)), "--out", pattern])
        if run.returncode != 0:
            raise StudyError(f"ddpm-data build --src {config.src}: {run.error_line}")


def _missing_sizes(config: StudyConfig, sizes: list[int]) -> list[int]:
    """The sizes whose shard folder (a path or a URL) has no manifest.json."""
    return [size for size in sizes if not exists(join(config.shard_dir(size), MANIFEST_NAME))]


def missing_shards_error(config: StudyConfig, sizes: list[int]) -> StudyError | None:
    missing = _missing_sizes(config, sizes)
    if not missing or config.src is not None:
        return None
    first = join(config.shard_dir(missing[0]), MANIFEST_NAME)
    return StudyError(f"{first}: missing, and no --src to build it from; pass --src DATA (an image folder) or run "
                      f"'ddpm-data build --src DATA --size {','.join(map(str, missing))} --out {config.shards}'")


def check_options(config: StudyConfig, cells: list[Cell], tools: Tools) -> None:
    """`ddpm-train --dry-run` once per new configuration: a bad grid value fails before hours of training."""
    seen = set()
    for cell in cells:
        if cell.configuration in seen:
            continue
        seen.add(cell.configuration)
        run = tools([*train_command(config, cell, "new"), "--dry-run"], capture=True, quiet=True)
        if run.returncode != 0:
            raise StudyError(f"cell {cell.name}: ddpm-train refuses its options ({run.error_line}); "
                             "fix the grid in study.toml or the flags")


def train_cell(config: StudyConfig, cell: Cell, tools: Tools, log: Callable[[str], None],
               stage: int | None = None) -> str | None:
    """Train (or resume) one cell up to the budget (or `stage` images); returns an error line or None."""
    state = training_state(config, cell, stage)
    if state == "done":
        return None
    run_dir = cell_dir(config, cell)
    book = read_json(run_dir / STATE_NAME, lambda line: log(f"warning: {line}: the cell's training time "
                                                            f"restarts from 0")) if state == "resume" else {}
    limit = None
    if config.budget.minutes is not None:
        limit = max(1.0, config.budget.minutes * 60 - book.get("train_seconds", 0.0))
    target = f" to {stage:,} images" if stage else ""
    log(f"study: {cell.name}: {state} training{target}" + (f" ({limit / 60:.1f} min left)" if limit else ""))
    with TrainingClock(run_dir, book) as clock:  # books the time while it runs: a killed study loses little
        run = tools(train_command(config, cell, state, stage), launcher=config.launcher, time_limit=limit)
        clock.stop(run.seconds)
    if run.returncode != 0 and not run.stopped:
        advice = f"; in a study, delete {run_dir} to train the cell anew" if "another --out" in run.error_line else ""
        return f"train: {run.error_line}{advice}"
    if training_state(config, cell, stage) != "done":
        summary = read_json(run_dir / "summary.json")
        seen = f"{summary.get('images_seen', 0)} of {stage or config.budget.images} images" if config.budget.images else "early"
        return f"train: stopped at {seen}; rerun to resume"
    return None


def sample_cell(config: StudyConfig, cell: Cell, tools: Tools, log: Callable[[str], None],
                stage: int | None = None) -> str | None:
    """Draw the cell's samples from its latest checkpoint unless they are already drawn; error line or None.

    On the way (`stage` N), the latest checkpoint must be the one at N images: samples missed there
    (new sampling settings after the cell trained on) cannot be drawn again."""
    run_dir, folder = cell_dir(config, cell), stage_dir(config, cell, stage)
    wanted = sample_marker(config, cell, stage)
    if wanted is None:
        return "sample: no checkpoint to sample from"
    marker = folder / "samples.json"
    if matches(read_json(marker), wanted):
        return None
    summary = read_json(run_dir / "summary.json")
    seen = summary.get("images_seen", 0)
    if stage is not None and not _at_stage(summary, stage):
        return (f"sample: the cell trained past {stage:,} images ({seen:,}) before its samples there were drawn with "
                f"these settings; keep the sampling settings of the first run, or delete {run_dir} to measure it anew")
    checkpoint = latest_checkpoint(run_dir)
    log(f"study: {cell.name}: sampling {config.sample.n} images per class from {checkpoint} ({seen:,} images seen)")
    settings = config.sample
    run = tools(["ddpm-sample", *config.sample_args, "--checkpoint", str(run_dir / "checkpoints" / checkpoint),
                 "--out", str(folder / "samples"),
                 "--n", str(settings.n), "--sampler", "ddim", "--steps", str(settings.steps), "--eta", str(settings.eta),
                 "--guidance", str(settings.guidance), "--seed", str(cell.seed), "--overwrite"])
    if run.returncode != 0:
        return f"sample: {run.error_line}"
    write_json(marker, {**wanted, "checkpoint": checkpoint, "images_seen": seen})
    return None


def _at_stage(summary: dict, stage: int) -> bool:
    """Whether a run stopped at `stage` images: seen >= stage, by less than one optimizer step more."""
    seen, step = summary.get("images_seen", 0), summary.get("step") or 0
    return step > 0 and stage <= seen < stage + seen / step


def stages(config: StudyConfig) -> list[int | None]:
    """The --measure-at stages in order, then the budget (None)."""
    return [*config.budget.measure_at, None]




def run_study(config: StudyConfig, split: tuple[int, int] | None = None, dry_run: bool = False,
              tools: Tools | None = None, log: Callable[[str], None] | None = None, save_settings: bool = False,
              report_only: bool = False) -> Outcome:
    """Everything the study still lacks for the cells of `split` (k, n), then the report over all cells.

    `save_settings`: write STUDY/study.toml once the settings have passed every check.
    `report_only`: rebuild the report from the cells measured so far; train, sample and measure nothing.
    """
    from ddpm_study.config import write_toml
    from ddpm_study.report import write_report

    log = log or (lambda line: None)
    tools = tools or Subprocesses()
    check_train_args(config)
    cells = grid_cells(config.grid)
    if config.baseline is not None:
        find_configuration(cells, config.baseline)
    if report_only:
        if dry_run or split:
            raise StudyError("--report-only: a report covers every cell and writes only report/; drop "
                             + ("--dry-run" if dry_run else "--cells"))
        if not config.root.is_dir():
            raise StudyError(f"{config.root}: no such study; --report-only reports on a study that has run")
        outcome = Outcome(cells)
        outcome.report = write_report(config, cells, {}, log)
        return outcome
    mine = split_cells(cells, *split) if split else cells
    states = {cell: training_state(config, cell) for cell in mine}
    sizes = sorted({cell.size for cell in mine if states[cell] != "done"} | {config.display})
    error = missing_shards_error(config, sizes)
    if error is not None:
        raise error
    outcome = Outcome(mine)
    if dry_run:
        if config.budget.measure_at:
            log(f"stages: every cell is trained to {', '.join(f'{n:,}' for n in config.budget.measure_at)} images "
                "in turn (sampled and measured at each, resumed between), then to the budget:")
        for cell in mine:
            log(f"{cell.name}: {states[cell]}  {' '.join(train_command(config, cell, states[cell]))}")
        return outcome
    if save_settings:
        log(f"study: settings written to {write_toml(config)}")
    with TerminationAsInterrupt():
        ensure_shards(config, sizes, tools, log)
        check_options(config, [cell for cell in mine if states[cell] in ("new", "restart")], tools)
        from ddpm_study.measure import measure_cell

        for stage in stages(config):
            for cell in mine:
                if cell.name in outcome.failures:
                    continue
                for step in (train_cell, sample_cell, measure_cell):
                    failure = step(config, cell, tools, log, stage)
                    if failure:
                        outcome.failures[cell.name] = failure if stage is None else f"at {stage:,} images: {failure}"
                        log(f"study: {cell.name}: {outcome.failures[cell.name]}")
                        break
            if stage is not None:  # a long study shows each stage as it completes
                write_report(config, cells, outcome.failures, log)
        outcome.report = write_report(config, cells, outcome.failures, log)
    return outcome


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive advisory lock on `path` (flock; also honoured across NFS clients on Linux)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
