"""Training checkpoints: atomic writes, safe loads, last-K + best retention.

A checkpoint is one ``torch.save`` of a dict made only of tensors, numbers, strings, lists and
dicts, so ``torch.load(path, weights_only=True)`` reads it (no arbitrary pickles):

- ``format_version`` (int, :data:`FORMAT_VERSION`), ``step``, ``images_seen``,
  ``best_val_loss`` (float, ``inf`` before the first validation)
- ``model_config`` (``DDPM.to_dict()``: ``{"unet": {...}, "diffusion": {...}}``; files written
  before the split hold one flat dict, which ``DDPM.from_dict`` also reads), ``classes`` (label -> name),
  ``run_config`` (the resolved run configuration as JSON-ready dict)
- ``model``, ``ema`` (state dicts; ``ema`` is ``{}`` without EMA), ``optimizer``, ``scaler``
- ``rng``: ``{"torch": uint8 tensor, "cuda": [uint8 tensors], "generator": uint8 tensor}``
- ``reader``: the batch reader's ``state_dict()``

Files live in ``RUN/checkpoints/``: ``step-00001000.pt`` for the last K saves and ``best.pt`` for
the lowest validation loss so far. A run folder's checkpoint is the newest one that loads
(`load_latest`): a damaged latest file is passed over, and named, rather than ending the run.
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "step", "model_config", "classes", "model")
STEP_FILE = re.compile(r"^step-(\d{8,})\.pt$")
BEST_NAME = "best.pt"                  # lowest EMA validation loss
BEST_QUALITY_NAME = "best-quality.pt"  # samples closest to the real images, worst class, each class recognised (quality_score)


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or from an incompatible format version."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def run_folder_of(path: str | Path) -> Path:
    """The run folder of `path`: itself, or its parent when `path` is the run's checkpoints folder
    (RUN/checkpoints, as a user may well point at it)."""
    path = Path(path)
    if path.name == checkpoint_dir(path.parent).name and not checkpoint_dir(path).is_dir() and \
            any(STEP_FILE.match(child.name) or child.name == BEST_NAME for child in path.iterdir()):
        return path.parent
    return path


def step_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step-{step:08d}.pt"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` to `path` atomically: a temp file in the same folder, fsync, then rename.

    A crash mid-write leaves the previous file intact; readers never see half a checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    try:
        with open(temp, "wb") as handle:
            torch.save({"format_version": FORMAT_VERSION, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except OSError as error:
        if error.filename is None:  # a failed write names no file (ENOSPC, EIO): name the checkpoint
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    finally:
        temp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file with ``weights_only=True``; raise CheckpointError naming the fix."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of a foreign file
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:  # torch's text suggests weights_only=False: never for such a file
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt, or a pickle of more than tensors and "
                              f"plain data, which ddpm-train does not write): refused unread") from error
    except Exception as error:  # torch raises several types for truncated/foreign files
        raise CheckpointError(
            f"{path}: not a readable checkpoint (corrupt, truncated, or not written by ddpm-train): "
            f"{first_sentence(error)}"
        ) from error
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path}: not a ddpm-train checkpoint (no 'format_version' field)")
    version = state["format_version"]
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is incompatible with this ddpm-pipeline, "
            f"which reads version {FORMAT_VERSION}; use the ddpm-pipeline release that wrote it"
        )
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}")
    return state


def first_sentence(error: BaseException) -> str:
    """The start of an error's message, up to its first full stop (torch appends paragraphs)."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    line = text.splitlines()[0]
    return line.split(". ")[0].rstrip(".")


def step_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's ``step-*.pt`` files, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in folder.iterdir() if (match := STEP_FILE.match(path.name))]
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    files = step_checkpoints(run_dir)
    return files[-1] if files else None


def candidates(run_dir: str | Path) -> list[Path]:
    """The run's checkpoints in the order `load_latest` tries them: step files newest first, then
    ``best.pt`` (the lowest validation loss, usually a little older)."""
    best = checkpoint_dir(run_dir) / BEST_NAME
    return step_checkpoints(run_dir)[::-1] + ([best] if best.is_file() else [])


@dataclass(frozen=True)
class Loaded:
    """A checkpoint read from a run folder, and the newer files passed over on the way."""

    state: dict[str, Any]
    path: Path
    skipped: list[str]                    # "FILE: why", newest first


def load_latest(run_dir: str | Path, map_location: str | torch.device = "cpu",
                accept: Callable[[dict[str, Any]], str | None] | None = None) -> Loaded:
    """The newest checkpoint of `run_dir` that loads (and that `accept` does not reject with a
    reason); CheckpointError naming every file tried when none does."""
    run_dir = Path(run_dir)
    skipped: list[str] = []
    for path in candidates(run_dir):
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as error:
            skipped.append(str(error))
            continue
        reason = accept(state) if accept is not None else None
        if reason is None:
            return Loaded(state, path, skipped)
        skipped.append(f"{path}: {reason}")
    if not skipped:
        raise CheckpointError(f"{run_dir}: has no checkpoints (none in {checkpoint_dir(run_dir)}); give a ddpm-train "
                              "run folder (its --out) or a checkpoint file, or train with 'ddpm-train' first")
    raise CheckpointError(f"{run_dir}: no usable checkpoint ({'; '.join(skipped)}); restore a "
                          "checkpoint file, or start the run over with 'ddpm-train --overwrite'")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or a run folder's newest checkpoint file (best.pt when it has
    no step checkpoints). Only names the file; `load_latest` also passes over damaged ones."""
    path = Path(path)
    if path.is_dir():
        found = candidates(path)
        if not found:
            raise CheckpointError(
                f"{path}: has no checkpoints (none in {checkpoint_dir(path)}); give a ddpm-train run folder "
                "(its --out) or a checkpoint file, or train with 'ddpm-train' first"
            )
        return found[0]
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run folder")
    return path


def prune_checkpoints(run_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` step checkpoints (``best.pt`` is separate); return removed."""
    if keep < 1:
        raise ValueError(f"--keep must be at least 1, got {keep}")
    removed = step_checkpoints(run_dir)[:-keep]
    for path in removed:
        path.unlink()
    return removed
