"""A study's settings: the grid of configurations, the shared budget and how cells are sampled.

The settings come from STUDY/study.toml (read with tomllib), and flags override it. When the file
is missing, the settings resolved from the flags are written to it, so the tasks of a job array
need only `ddpm-study STUDY --cells k/n`. Standard library only, so `ddpm-study --help` answers at
once. Every bad value raises StudyError, whose message names the key or flag and says how to fix it.
"""
from __future__ import annotations

import dataclasses
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddpm_data.config import AUGMENT_PRESETS
from ddpm_data.redact import redact
from ddpm_data.remote import as_location

TOML_NAME = "study.toml"
UPSAMPLE_MODES = ("bilinear", "bicubic", "nearest", "conv_transpose")  # ddpm-train --upsample
MIN_SIZE = 16  # px; the smallest size ddpm-data builds and the tiny preset trains
DESIGNS = ("grid", "one-at-a-time")  # every combination | the first values, then each other value alone


class StudyError(ValueError):
    """An unusable study setting or state; the message names the key, flag or folder and the fix."""


@dataclass(frozen=True)
class Grid:
    """The axes of the study and how they combine into cells (one ddpm-train run per cell and seed).

    design 'grid': every combination. 'one-at-a-time': the first value of every axis (the starting
    point), then each other value of each axis with the rest kept at the starting point: 1 + the
    sum of (values - 1) configurations instead of their product.
    """

    sizes: tuple[int, ...]  # training resolutions, px; shards come from the --shards pattern
    upsample: tuple[str, ...] = ("bilinear",)  # ddpm-train --upsample
    augment: tuple[str, ...] = ("default",)  # ddpm-train --augment: default | none
    preset: tuple[str, ...] = ("auto",)  # ddpm-train --preset; auto = the preset ddpm-train picks for the size
    model_channels: tuple[int | None, ...] = (None,)  # ddpm-train --model-channels; None = the preset's width
    seeds: tuple[int, ...] = (0,)  # ddpm-train --seed; 2+ seeds give every metric a noise level
    design: str = "grid"  # grid | one-at-a-time (see the class docstring)


@dataclass(frozen=True)
class Budget:
    """What every cell gets, whatever its size: exactly one of the two."""

    images: int | None = None  # images seen (ddpm-train --max-images): equal data, unequal compute
    minutes: float | None = None  # wall time of ddpm-train per cell: equal compute, unequal data
    measure_at: tuple[int, ...] = ()  # images seen at which every cell is also sampled and measured on its way


@dataclass(frozen=True)
class SampleSettings:
    """How each cell's samples are drawn (ddpm-sample), the same for every cell."""

    n: int = 64  # images per class; below 50 ddpm-eval warns that its numbers are noisy
    steps: int = 50  # DDIM steps
    eta: float = 0.0  # DDIM eta; 0 as in ddpm-sample (measured best with v-prediction, docs/benchmarks.md)
    guidance: float = 2.0  # classifier-free guidance scale


@dataclass(frozen=True)
class StudyConfig:
    root: Path  # the study folder: study.toml, cells/<cell>/, report/
    grid: Grid
    budget: Budget
    src: Path | None = None  # ImageFolder that missing shard sizes are built from
    shards: str = "shards/{size}"  # shard folder of each size; '{size}' is replaced
    display_size: int | None = None  # px every cell is evaluated at; None = the largest trained size
    baseline: str | None = None  # cell (or cell without its -s<seed>) the others are compared with
    sample: SampleSettings = field(default_factory=SampleSettings)
    launcher: tuple[str, ...] = ()  # prefix of every ddpm-train command, e.g. torchrun ... --no-python
    train_args: tuple[str, ...] = ()  # extra ddpm-train options for every cell
    sample_args: tuple[str, ...] = ()  # extra ddpm-sample options (e.g. --batch-size 64)
    eval_args: tuple[str, ...] = ()  # extra ddpm-eval options (e.g. --device cuda)
    eval_bootstrap: int = 0  # extra ddpm-eval runs per cell on resampled sample sets: noise without seeds

    @property
    def display(self) -> int:
        return self.display_size or max(self.grid.sizes)

    def shard_dir(self, size: int) -> Path | str:
        """The shard folder of `size`: an absolute path, or a URL kept as one (remote.py)."""
        location = as_location(self.shards.replace("{size}", str(size)), "--shards")
        return location.absolute() if isinstance(location, Path) else location


# TOML layout: top-level keys, then tables. One entry per field, so unknown keys fail by name.
_TOP = {"src", "shards", "display_size", "baseline"}
_TABLES = {
    "grid": {f.name for f in dataclasses.fields(Grid)},
    "budget": {f.name for f in dataclasses.fields(Budget)},
    "sample": {f.name for f in dataclasses.fields(SampleSettings)},
    "run": {"launcher", "train_args", "sample_args", "eval_args", "eval_bootstrap"},
}


def read_toml(path: Path) -> dict[str, Any]:
    """The settings of a study.toml as a flat {key: value} dict (table keys unprefixed)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise StudyError(f"{path}: reading TOML needs Python >= 3.11 or 'pip install tomli'") from None
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise StudyError(f"{path}: unreadable ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise StudyError(f"{path}: not valid TOML ({error}); fix the file or delete it and pass flags") from None
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if key in _TABLES:
            if not isinstance(value, dict):
                raise StudyError(f"{path}: '{key}' must be a table ([{key}])")
            unknown = sorted(set(value) - _TABLES[key])
            if unknown:
                raise StudyError(f"{path}: unknown key '{unknown[0]}' in [{key}]; valid: {', '.join(sorted(_TABLES[key]))}")
            flat.update(value)
        elif key in _TOP:
            flat[key] = value
        elif _table_of(key):
            raise StudyError(f"{path}: '{key}' belongs in the {_table_of(key).strip()} table; move it below that header")
        else:
            valid = ", ".join(sorted(_TOP) + [f"[{name}]" for name in _TABLES])
            raise StudyError(f"{path}: unknown key '{key}'; valid: {valid}")
    return flat


def write_toml(config: StudyConfig) -> Path:
    """Write `config` as STUDY/study.toml (the settings only, none of the defaults left implicit)."""
    def value(item: Any) -> str:
        if isinstance(item, (list, tuple)):
            return "[" + ", ".join(value(part) for part in item) + "]"
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, (int, float)):
            return repr(item)
        return '"' + str(item).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["# ddpm-study settings; flags given on the command line override them (docs/study.md)."]
    top = {"src": config.src, "shards": config.shards, "display_size": config.display_size, "baseline": config.baseline}
    lines += [f"{key} = {value(item)}" for key, item in top.items() if item is not None]
    grid = {name: items if isinstance(items, str) else [item for item in items if item is not None]
            for name, items in dataclasses.asdict(config.grid).items()}
    run = {"launcher": shlex.join(config.launcher), "train_args": list(config.train_args),
           "sample_args": list(config.sample_args), "eval_args": list(config.eval_args),
           "eval_bootstrap": config.eval_bootstrap}
    for table, items in (("grid", grid), ("budget", dataclasses.asdict(config.budget)),
                         ("sample", dataclasses.asdict(config.sample)), ("run", run)):
        lines += ["", f"[{table}]"] + [f"{key} = {value(item)}" for key, item in items.items() if item not in (None, [], (), "")]
    path = config.root / TOML_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load_study(root: Path, flags: dict[str, Any]) -> tuple[StudyConfig, bool]:
    """STUDY/study.toml (if present) overridden by `flags` (name -> value, None = not given).

    Returns (config, whether study.toml was absent and should be written).
    """
    root = Path(root).absolute()
    path = root / TOML_NAME
    settings = read_toml(path) if path.is_file() else {}
    where = {key: f"{path.name} {_table_of(key)}{key}" for key in settings}
    given = {key: item for key, item in flags.items() if item is not None}
    if given.keys() & {"images", "minutes"}:  # a budget flag replaces the file's budget, whichever kind
        for key in ("images", "minutes"):
            settings.pop(key, None)
        if "minutes" in given:  # stages are images seen: a wall-time budget has none
            settings.pop("measure_at", None)
    for key, item in given.items():
        settings[key], where[key] = item, flag_name(key)
    config = _build(root, settings, where, path)
    return config, not path.is_file()


_FLAGS = {"images": "--budget-images", "minutes": "--budget-minutes", "n": "--samples-per-class",
          "steps": "--sample-steps", "eta": "--sample-eta"}


def flag_name(key: str) -> str:
    """The ddpm-study flag of a settings key: images -> --budget-images, model_channels -> --model-channels."""
    return _FLAGS.get(key, "--" + key.replace("_", "-"))


def _table_of(key: str) -> str:
    return next((f"[{table}] " for table, keys in _TABLES.items() if key in keys), "")


def _build(root: Path, settings: dict[str, Any], where: dict[str, str], path: Path) -> StudyConfig:
    def get(key: str, kind, default=None, many=False, check=None, need=""):
        if key not in settings:
            return default
        raw, name = settings[key], where[key]
        items = _as_list(raw, name, kind) if many else [_convert(raw, name, kind)]
        if many and not items:
            raise StudyError(f"{name}: empty; give at least one value")
        for item in items:
            if check is not None and not check(item):
                raise StudyError(f"{name} {item!r}: {need}")
        return tuple(dict.fromkeys(items)) if many else items[0]

    sizes = get("sizes", int, many=True, check=lambda s: s >= MIN_SIZE and s % 4 == 0,
                need=f"sizes must be multiples of 4 and at least {MIN_SIZE} px (the U-Net halves them), e.g. 40,96,128")
    if sizes is None:
        raise StudyError(f"grid sizes: missing; pass --sizes 40,96,128 or set [grid] sizes = [40, 96, 128] in {path}")
    grid = Grid(
        sizes=sizes,
        upsample=get("upsample", str, Grid.upsample, True, lambda u: u in UPSAMPLE_MODES, f"unknown; valid: {', '.join(UPSAMPLE_MODES)}"),
        augment=get("augment", str, Grid.augment, True, lambda a: a in AUGMENT_PRESETS, f"unknown; valid: {', '.join(AUGMENT_PRESETS)}"),
        preset=get("preset", str, Grid.preset, True, lambda p: p.strip() != "", "empty preset name; use auto or a ddpm-train preset"),
        model_channels=get("model_channels", int, Grid.model_channels, True, lambda w: w >= 1, "must be >= 1"),
        seeds=get("seeds", int, Grid.seeds, True, lambda s: s >= 0, "must be >= 0"),
        design=get("design", str, Grid.design, check=lambda d: d in DESIGNS, need=f"unknown; valid: {', '.join(DESIGNS)}"),
    )
    images = get("images", int, check=lambda n: n >= 1, need="must be >= 1")
    minutes = get("minutes", float, check=lambda m: m > 0 and math.isfinite(m), need="must be > 0")
    if (images is None) == (minutes is None):
        state = "both given" if images is not None else "missing"
        raise StudyError(f"budget: {state}; pass exactly one of --budget-images N (images seen per cell) or "
                         f"--budget-minutes M (wall time per cell), or set [budget] images = N in {path}")
    measure_at = tuple(sorted(get("measure_at", int, (), True, lambda n: n >= 1, "must be >= 1")))
    if measure_at and (images is None or measure_at[-1] >= images):
        raise StudyError(f"{where['measure_at']}: needs --budget-images above every value (each cell trains to each value "
                         f"in turn, is sampled and measured there, and goes on); e.g. --budget-images 40000 "
                         f"--measure-at 4000,16000")
    sample = SampleSettings(
        n=get("n", int, SampleSettings.n, check=lambda n: n >= 2, need="need at least 2 images per class (ddpm-eval)"),
        steps=get("steps", int, SampleSettings.steps, check=lambda n: n >= 1, need="must be >= 1"),
        eta=get("eta", float, SampleSettings.eta, check=lambda e: 0 <= e <= 1, need="must be in [0, 1]"),
        guidance=get("guidance", float, SampleSettings.guidance, check=lambda g: g >= 0, need="must be >= 0"),
    )
    shards = get("shards", str, "shards/{size}")
    if "{size}" not in shards:
        raise StudyError(f"{where['shards']} {redact(shards)!r}: needs '{{size}}', e.g. shards/{{size}}")
    try:
        as_location(shards, where.get("shards", "--shards"))  # a URL with credentials: refused before anything is written
    except ValueError as error:
        raise StudyError(str(error)) from None
    src = get("src", str)
    return StudyConfig(
        root=root, grid=grid, budget=Budget(images, minutes, measure_at),
        src=Path(src).absolute() if src else None, shards=shards,
        display_size=get("display_size", int, check=lambda s: s >= MIN_SIZE, need=f"must be at least {MIN_SIZE} px"),
        baseline=get("baseline", str), sample=sample,
        launcher=_words(settings, where, "launcher"), train_args=_words(settings, where, "train_args"),
        sample_args=_words(settings, where, "sample_args"), eval_args=_words(settings, where, "eval_args"),
        eval_bootstrap=get("eval_bootstrap", int, 0, check=lambda b: b == 0 or b >= 2, need="0 (off) or at least 2 resamples"),
    )


def _convert(raw: Any, name: str, kind):
    if kind is str and isinstance(raw, str):
        return raw.strip()
    if kind is int and isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if kind is float and isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, str) and kind in (int, float):
        try:
            return kind(raw.strip())
        except ValueError:
            pass
    raise StudyError(f"{name} {raw!r}: expected {'a number' if kind is float else 'an integer' if kind is int else 'text'}")


def _as_list(raw: Any, name: str, kind) -> list:
    """A TOML list, or the comma-separated text of a flag ('40,96,128')."""
    if isinstance(raw, str):
        raw = [part for part in raw.split(",") if part.strip()]
    if not isinstance(raw, (list, tuple)):
        raw = [raw]
    return [_convert(item, name, kind) for item in raw]


def _words(settings: dict[str, Any], where: dict[str, str], key: str) -> tuple[str, ...]:
    """A command prefix or option list: a shell-quoted string or a TOML list of words."""
    raw = settings.get(key)
    if raw is None:
        return ()
    if isinstance(raw, str):
        try:
            return tuple(shlex.split(raw))
        except ValueError as error:
            raise StudyError(f"{where[key]} {raw!r}: {error}") from None
    if isinstance(raw, (list, tuple)) and all(isinstance(word, str) for word in raw):
        return tuple(raw)
    raise StudyError(f"{where[key]}: expected a string or a list of strings")
