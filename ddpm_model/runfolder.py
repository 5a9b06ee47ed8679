"""The run folder: where a run lives, when it may be replaced, and what `--resume` keeps.

A run folder holds ``config.json`` (the resolved configuration), ``metrics.jsonl``, ``loss.png``,
``checkpoints/step-*.pt`` and ``best.pt``, ``samples/step-*.png`` and ``summary.json``.

Resuming takes the saved configuration. The user may rerun the original command with
``--resume`` appended: every option typed again is compared with the saved run. Options that do
not change what was learned so far (learning rate, duration, intervals, precision, ...) replace
the saved values; the architecture, the data options, the batch size and the seed are fixed for
a run, and a different value is refused naming each option and both values.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from . import checkpoint as ckpt
from .codec import CodecError, from_jsonable, to_jsonable
from .config import RunConfig, TrainConfig

CONFIG_NAME = "config.json"
DURATION_FIELDS = ("epochs", "max_steps", "max_images")
# TrainConfig fields the data position or the initial weights depend on.
FIXED_TRAIN_FIELDS = ("batch_size", "seed")
# RunConfig fields that only say where and how this process runs.
PROCESS_FIELDS = ("shards", "img_size", "out", "resume", "overwrite", "dry_run", "device", "progress")


class RunError(ValueError):
    """The run cannot start; the message names the flag or folder and the fix."""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def default_run_dir(shards: Path | str) -> Path:
    from ddpm_data.remote import name_of

    return Path("runs") / f"{name_of(shards)}-{time.strftime('%Y%m%d-%H%M%S')}"


def absolute_shards(shards: Path | str) -> Path | str:
    """A local shard folder made absolute (so --resume works from any working directory); a URL
    as given (remote.as_location refuses one holding a password: config.json would keep it)."""
    from ddpm_data.remote import as_location

    location = as_location(shards)
    return location.resolve() if isinstance(location, Path) else location


def read_document(run_dir: Path) -> dict[str, Any]:
    """config.json of a run folder, as written by `write_document`."""
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        raise RunError(f"{path}: missing; --out is not a run folder written by ddpm-train")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"{path}: unreadable ({error}); start a new run with another --out") from None
    if not isinstance(document, dict) or not isinstance(document.get("run"), dict):
        raise RunError(f"{path}: not a ddpm-train config (no 'run' object); start a new run with another --out")
    return document


def run_config_from(document: dict[str, Any], path: Path) -> RunConfig:
    """The RunConfig saved in a config.json document."""
    from ddpm_data.config import AugmentConfig
    from ddpm_data.stream import ReaderConfig

    namespace = {"ReaderConfig": ReaderConfig, "AugmentConfig": AugmentConfig}
    try:
        return from_jsonable(RunConfig, document["run"], "run", namespace)
    except CodecError as error:
        raise RunError(f"{path}: {error}; fix the value or start a new run with another --out") from None


def write_document(run_dir: Path, document: dict[str, Any]) -> Path:
    """config.json, written whole to a temporary file and renamed over the old one."""
    path = run_dir / CONFIG_NAME
    temporary = path.with_name(f".{CONFIG_NAME}.tmp")
    temporary.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    temporary.replace(path)
    return path


def check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    """A new run may use an empty or missing folder, or replace a run folder with --overwrite."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--out {run_dir}: is a file; choose a folder")
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return
    if not overwrite:
        raise RunError(f"{run_dir}: exists; pass --resume to continue it or --overwrite to start over")
    if not (run_dir / CONFIG_NAME).is_file():
        raise RunError(f"{run_dir}: --overwrite refuses to delete a folder that is not a run "
                       f"folder (no {CONFIG_NAME}); choose another --out")


def resolve_run(given: RunConfig) -> tuple[RunConfig, Path, Path | None]:
    """(config to use, run folder, checkpoint to resume from). Reads but never writes."""
    if given.resume:
        if given.out is None:
            raise RunError("--resume: needs --out RUN_DIR, the run folder to continue")
        document = read_document(given.out)
        saved = run_config_from(document, given.out / CONFIG_NAME)
        config = resume_config(saved, document, given)
        return config, given.out, ckpt.latest_checkpoint(given.out)
    shards = shards_folder(given.shards, given.img_size)
    run_dir = given.out or default_run_dir(shards)
    if not given.dry_run:
        check_new_run_dir(run_dir, given.overwrite)
    return dataclasses.replace(given, out=run_dir, shards=absolute_shards(shards)), run_dir, None


def shards_folder(shards: Path | str | None, img_size: int | None) -> Path | str:
    """--shards, or shards/<img_size> for `--img-size N` alone (the size is checked against the
    manifest when it is loaded)."""
    if shards is not None:
        return shards
    if img_size is None:
        raise RunError("--shards: required (a folder written by 'ddpm-data build'), or --img-size N "
                       "for shards/N, unless --resume")
    folder = Path("shards") / str(img_size)
    if not (folder / "manifest.json").is_file():
        raise RunError(f"--img-size {img_size}: {folder}/manifest.json missing; build it first with "
                       f"'ddpm-data build --src DATA --size {img_size}', or pass --shards FOLDER")
    return folder


def resume_config(saved: RunConfig, document: dict[str, Any], given: RunConfig) -> RunConfig:
    """The saved run, with the options typed now that may change; RunError listing every typed
    option that would change what the run is."""
    typed = set(given.given)
    conflicts = (_train_conflicts(saved.train, given.train, typed)
                 + _group_conflicts(saved.reader, given.reader, typed)
                 + _augment_conflicts(saved.augment, given.augment, typed)
                 + _model_conflicts(document, saved, given, typed))
    if conflicts:
        raise RunError(f"--resume: {given.out} was started with other options: {'; '.join(conflicts)}. "
                       f"Drop these options to continue the run, or start a new run with another --out")
    changed = {n for n in typed if n in _field_names(TrainConfig) and n not in FIXED_TRAIN_FIELDS}
    if changed & set(DURATION_FIELDS):
        changed |= set(DURATION_FIELDS)  # a new duration replaces the old one, whichever unit it used
    train = dataclasses.replace(saved.train, **{n: getattr(given.train, n) for n in changed})
    process = {n: getattr(given, n) for n in PROCESS_FIELDS if n not in ("shards", "img_size", "overwrite")}
    shards = absolute_shards(given.shards if given.shards is not None else saved.shards)
    return dataclasses.replace(saved, **process, overwrite=False, shards=shards, train=train,
                               given=tuple(sorted(typed)))


def _field_names(kind: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(kind)}


def _differs(name: str, now: Any, before: Any) -> str | None:
    if to_jsonable(now) == to_jsonable(before):
        return None
    return f"{flag(name)} {_show(now)} (the run has {_show(before)})"


def _show(value: Any) -> str:
    """As the user would type it: 0,0,1,1 for flags, `Balance`'s own text, enum values."""
    if dataclasses.is_dataclass(value) and type(value).__str__ is not object.__str__:
        return str(value)
    value = to_jsonable(value)
    if isinstance(value, list):
        return ",".join(str(int(v) if isinstance(v, bool) else v) for v in value)
    return str(value)


def _train_conflicts(saved: TrainConfig, given: TrainConfig, typed: set[str]) -> list[str]:
    return [message for name in FIXED_TRAIN_FIELDS if name in typed
            if (message := _differs(name, getattr(given, name), getattr(saved, name)))]


def _group_conflicts(saved: Any, given: Any, typed: set[str]) -> list[str]:
    """Typed fields of a config group (the reader's) that differ from the saved run."""
    if saved is None or given is None:
        return []
    own = typed & _field_names(given) - _field_names(TrainConfig) - set(PROCESS_FIELDS)
    return [message for name in sorted(own)
            if (message := _differs(name, getattr(given, name), getattr(saved, name)))]


def _augment_conflicts(saved: Any, given: Any, typed: set[str]) -> list[str]:
    """Augmentation is one recipe: when any of its options is typed, compare the whole of it."""
    if saved is None or given is None or not typed & (_field_names(given) | {"augment"}):
        return []
    return [message for name in sorted(_field_names(given))
            if (message := _differs(name, getattr(given, name), getattr(saved, name)))]


def _model_conflicts(document: dict[str, Any], saved: RunConfig, given: RunConfig,
                     typed: set[str]) -> list[str]:
    """Typed architecture options against the architecture the run resolved and trains."""
    model = document.get("model") or {}
    resolved = {**(model.get("unet") or {}), **(model.get("diffusion") or {})} if "unet" in model else model
    conflicts = []
    if "preset" in typed and given.model.preset != document.get("preset"):
        conflicts.append(f"--preset {given.model.preset} (the run has {document.get('preset')})")
    if "aug_conditioning" in typed and given.model.aug_conditioning != saved.model.aug_conditioning:
        conflicts.append(_differs("aug_conditioning", given.model.aug_conditioning, saved.model.aug_conditioning))
    for name, value in sorted(given.model.overrides.items()):
        if name in resolved and (message := _differs(name, value, resolved[name])):
            conflicts.append(message)
    return conflicts
