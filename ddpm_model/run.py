"""`ddpm-train`: wire a shard folder to the training loop, in one process or under torchrun.

The one module of `ddpm_model` that imports `ddpm_data` (lazily, inside functions): manifest ->
preset -> model; reader, augmenter and validation split; distributed setup and device; run
folder, config file, resume. `ddpm_model.train` then runs the loop on what this builds.

Run folder: ``config.json`` (resolved config), ``metrics.jsonl``, ``loss.png``,
``checkpoints/step-*.pt`` and ``best.pt``, ``samples/step-*.png``, ``summary.json``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from .sample import pick_device
from .train import (
    Distributed, LossModule, Precision, RunIO, TrainConfig, TrainParts, TrainResult, TrainState,
    make_val_set, resume_from, train,
)

CONFIG_NAME = "config.json"
DURATION_FIELDS = ("epochs", "max_steps", "max_images")


class RunError(ValueError):
    """The run cannot start; the message names the flag or folder and the fix."""


@dataclass(frozen=True)
class ModelOptions:
    """The architecture of a run: a preset, then the fields the user set."""

    preset: str | None = None                       # PRESETS name; None = preset_for_size(manifest size)
    overrides: dict[str, Any] = field(default_factory=dict)  # UNetConfig / DiffusionConfig fields given
    aug_conditioning: bool = True                   # feed augmentation parameters (non-leaking aug)


@dataclass(frozen=True)
class RunConfig:
    """Everything `ddpm-train` takes. `reader` / `augment` are ddpm_data's ReaderConfig /
    AugmentConfig (None = their defaults); their batch_size and seed come from `train`."""

    shards: Path | None = None
    out: Path | None = None                         # run folder; None = runs/<shards name>-<time>
    resume: bool = False
    overwrite: bool = False
    dry_run: bool = False
    device: str = "auto"                            # "auto" = cuda:LOCAL_RANK if available, else cpu
    progress: bool = True
    model: ModelOptions = field(default_factory=ModelOptions)
    reader: Any = None
    augment: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    train_given: tuple[str, ...] = ()               # TrainConfig fields set explicitly (replace saved ones on resume)


# -- config <-> JSON ---------------------------------------------------------------------------

def to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    return value


def _from_jsonable(kind: Any, value: Any) -> Any:
    """Rebuild a dataclass field from JSON by its annotation (dataclasses, enums, paths, tuples)."""
    if value is None:
        return None
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _from_jsonable(inner[0], value) if len(inner) == 1 else value
    if origin is tuple:
        return tuple(_from_jsonable(args[0], v) for v in value)
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        return kind(**{k: _from_jsonable(hints[k], v) for k, v in value.items() if k in hints})
    if isinstance(kind, type) and issubclass(kind, (Enum, Path)):
        return kind(value)
    return value


def config_from_dict(document: dict[str, Any]) -> RunConfig:
    from ddpm_data.augment import AugmentConfig
    from ddpm_data.stream import ReaderConfig

    config = _from_jsonable(RunConfig, {k: v for k, v in document.items() if k not in ("reader", "augment")})
    return dataclasses.replace(
        config,
        reader=_from_jsonable(ReaderConfig, document["reader"]) if document.get("reader") else None,
        augment=_from_jsonable(AugmentConfig, document["augment"]) if document.get("augment") else None,
    )


# -- run folder --------------------------------------------------------------------------------

def default_run_dir(shards: Path) -> Path:
    return Path("runs") / f"{Path(shards).resolve().name}-{time.strftime('%Y%m%d-%H%M%S')}"


def resolve_run(given: RunConfig) -> tuple[RunConfig, Path, Path | None]:
    """(config to use, run folder, checkpoint to resume from). Reads but never writes.

    `--resume` takes the run folder's saved config; the training options in `train_given` (and
    any duration that is set) replace the saved values, as do --device and --progress. The
    model and data options are fixed for a run; --batch-size and --seed too, since the reader's
    position depends on them. --shards, if given, points the run at moved shards.
    """
    if given.resume:
        if given.out is None:
            raise RunError("--resume: needs --out RUN_DIR, the run folder to continue")
        saved_path = given.out / CONFIG_NAME
        if not saved_path.is_file():
            raise RunError(f"{saved_path}: missing; --out is not a run folder written by ddpm-train")
        saved = config_from_dict(json.loads(saved_path.read_text(encoding="utf-8"))["run"])
        if given.model != ModelOptions():
            raise RunError(f"{saved_path}: the architecture is fixed for a run; drop the model options "
                           f"with --resume, or start a new run with --out")
        names = set(given.train_given) | {n for n in DURATION_FIELDS if getattr(given.train, n) is not None}
        for name in ("batch_size", "seed"):
            if name in names and getattr(given.train, name) != getattr(saved.train, name):
                raise RunError(f"--{name.replace('_', '-')}: cannot change on --resume (the data position "
                               f"depends on it); the run uses {getattr(saved.train, name)}")
        if names & set(DURATION_FIELDS):
            names |= set(DURATION_FIELDS)
        train_cfg = dataclasses.replace(saved.train, **{n: getattr(given.train, n) for n in names})
        config = dataclasses.replace(saved, out=given.out, resume=True, overwrite=False, dry_run=given.dry_run,
                                     device=given.device, progress=given.progress, train=train_cfg,
                                     train_given=tuple(sorted(names)), shards=given.shards or saved.shards)
        return config, given.out, ckpt.latest_checkpoint(given.out)
    if given.shards is None:
        raise RunError("--shards: required (a folder written by 'ddpm-data build'), unless --resume")
    run_dir = given.out or default_run_dir(given.shards)
    if not given.dry_run and run_dir.exists() and any(run_dir.iterdir()):
        if not given.overwrite:
            raise RunError(f"{run_dir}: exists; pass --resume to continue it or --overwrite to start over")
        if not (run_dir / CONFIG_NAME).is_file():
            raise RunError(f"{run_dir}: --overwrite refuses to delete a folder that is not a run "
                           f"folder (no {CONFIG_NAME}); choose another --out")
    # An absolute shard path, so `--resume` works from any working directory.
    return dataclasses.replace(given, out=run_dir, shards=given.shards.resolve()), run_dir, None


# -- model, data, device -----------------------------------------------------------------------

def setup_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Rank and world size from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(device_name, int(os.environ.get("LOCAL_RANK", 0)))
    if world_size > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world_size), device


def broadcast(dist: Distributed, value: Any) -> Any:
    """Rank 0's `value` on every rank."""
    if dist.world_size == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def autocast_factory(precision: Precision, device: torch.device):
    if precision is Precision.AUTO:
        precision = Precision.BF16 if device.type == "cuda" else Precision.FP32
    if precision is Precision.FP32:
        return precision, contextlib.nullcontext
    dtype = torch.bfloat16 if precision is Precision.BF16 else torch.float16
    return precision, lambda: torch.autocast(device.type, dtype=dtype)


def make_sample_writer(run_dir: Path, classes: list[str], config: TrainConfig):
    """Writes samples/step-XXXXXXXX.png: one row of `samples_per_class` per class, fixed noise."""
    from ddpm_data.grid import save_grid

    from .sample import to_uint8

    def write(model: torch.nn.Module, step: int) -> Path:
        device = next(model.parameters()).device
        generator = torch.Generator(device).manual_seed(config.seed)
        labels = torch.arange(len(classes)).repeat_interleave(config.samples_per_class)
        images = to_uint8(model.sample(labels, steps=config.sample_steps, guidance=config.sample_guidance, eta=config.sample_eta,
                                       generator=generator, batch_size=max(config.batch_size, 16)))
        rows = {name: list(images[labels == label].numpy()) for label, name in enumerate(classes)}
        return save_grid(rows, run_dir / "samples" / f"step-{step:08d}.png", tile=max(images.shape[-1], 64))

    return write


@dataclass(frozen=True)
class Plan:
    """What a run will do; printed by --dry-run and written to config.json."""

    config: RunConfig
    run_dir: Path
    resume_from: Path | None
    model_config: dict[str, Any]
    parameters: int
    classes: list[str]
    world_size: int
    device: str

    def document(self) -> dict[str, Any]:
        return {"run": to_jsonable(self.config), "model": self.model_config, "classes": self.classes,
                "parameters": self.parameters, "world_size": self.world_size, "device": self.device,
                "resume_from": str(self.resume_from) if self.resume_from else None}


def _reader_config(config: RunConfig, device: torch.device) -> Any:
    from ddpm_data.stream import ReaderConfig

    base = config.reader or ReaderConfig()
    return dataclasses.replace(base, batch_size=config.train.batch_size, seed=config.train.seed, device=str(device))


def _augment_config(config: RunConfig) -> Any:
    from ddpm_data.augment import AugmentConfig

    return config.augment or AugmentConfig()


def prepare(given: RunConfig, dist: Distributed | None = None, device: torch.device | None = None) -> tuple[Plan, Any]:
    """Resolve the config, run folder and model (on rank 0, then shared); (plan, manifest)."""
    from ddpm_data.augment import Augmenter
    from ddpm_data.manifest import load_manifest

    from .diffusion import configs_to_dict
    from .presets import resolve_model
    from .unet import count_parameters

    dist = dist or Distributed()
    device = device or pick_device(given.device, 0)
    outcome: Any
    if dist.is_main:
        try:
            outcome = resolve_run(given)
        except (RunError, ValueError) as error:
            outcome = RunError(str(error))
    outcome = broadcast(dist, outcome if dist.is_main else None)
    if isinstance(outcome, Exception):
        raise outcome
    config, run_dir, resume_path = outcome
    if config.resume and resume_path is None:
        raise RunError(f"{run_dir}: no checkpoint to resume from in {ckpt.checkpoint_dir(run_dir)}; "
                       f"start over with --overwrite")
    manifest = load_manifest(config.shards)
    augment = _augment_config(config)
    aug_dim = Augmenter.num_params if config.model.aug_conditioning and not augment.is_identity else 0
    options = config.model
    try:
        unet, diffusion = resolve_model(manifest.size, manifest.channels, len(manifest.classes), options.preset,
                                        {**options.overrides, "aug_dim": aug_dim})
    except ValueError as error:
        if options.preset is None and str(error).startswith("size:"):
            raise RunError(f"{manifest.root}: {error} (--preset NAME and the architecture flags)") from None
        raise
    model_config, parameters = configs_to_dict(unet, diffusion), count_parameters(unet)
    config = dataclasses.replace(config, reader=_reader_config(config, device), augment=augment)
    return Plan(config, run_dir, resume_path, model_config, parameters, list(manifest.classes),
                dist.world_size, str(device)), manifest


def _validation(config: RunConfig, manifest: Any, num_timesteps: int) -> Any:
    from ddpm_data.augment import center_crop
    from ddpm_data.stream import load_split

    if sum(manifest.counts.get("val", {}).values()) == 0:
        return None
    images, labels = load_split(config.shards, "val")
    images = center_crop(torch.as_tensor(images), manifest.size)
    return make_val_set(images, torch.as_tensor(labels), num_timesteps, config.train.seed,
                        config.train.batch_size * 2, config.train.val_images)


def run_training(given: RunConfig) -> tuple[Plan, TrainResult | None]:
    """Train as configured; (plan, result). With --dry-run: (plan, None), nothing written."""
    dist, device = setup_distributed(given.device)
    try:
        plan, manifest = prepare(given, dist, device)
        if plan.config.dry_run:
            return plan, None
        return plan, _train(plan, manifest, dist, device)
    finally:
        if dist.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(plan: Plan, manifest: Any, dist: Distributed, device: torch.device) -> TrainResult:
    from ddpm_data.augment import Augmenter
    from ddpm_data.stream import open_reader

    from .diffusion import DDPM
    from .ema import EMA
    from .metrics import MetricsLog, ProgressDisplay

    config, cfg = plan.config, plan.config.train
    if dist.is_main:
        if not config.resume and config.overwrite and plan.run_dir.exists():
            shutil.rmtree(plan.run_dir)
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        # Rewritten on resume too, so the next --resume continues with the options in force now.
        (plan.run_dir / CONFIG_NAME).write_text(json.dumps(plan.document(), indent=2, sort_keys=True) + "\n")
    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts them)
    model = DDPM.from_dict(plan.model_config).to(device)
    precision, autocast = autocast_factory(cfg.precision, device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, cfg.ema_decay) if dist.is_main else None
    if cfg.compile:
        model.unet.compile()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision is Precision.FP16)
    step_model: torch.nn.Module = LossModule(model)
    if dist.world_size > 1:
        step_model = torch.nn.parallel.DistributedDataParallel(
            step_model, device_ids=[device.index] if device.type == "cuda" else None)
    reader = open_reader(config.shards, config.reader, rank=dist.rank, world_size=dist.world_size)
    generator = torch.Generator(device).manual_seed(cfg.seed + 1_000_003 * dist.rank)
    parts = TrainParts(
        model=model, step_model=step_model, ema=ema, optimizer=optimizer, scaler=scaler,
        batches=_BatchIterator(reader), augment=Augmenter(config.augment, manifest.size), generator=generator,
        val=_validation(config, manifest, model.diffusion_config.num_timesteps) if dist.is_main else None,
        autocast=autocast, use_aug_params=model.unet_config.aug_dim > 0, channels_last=channels_last)
    state = TrainState()
    warning = None
    if plan.resume_from is not None:
        warning = resume_from(ckpt.load_checkpoint(plan.resume_from, map_location=device), parts, state, dist)
    steps_per_epoch = max(reader.epoch_length / cfg.grad_accum, 1e-9)
    images_per_step = cfg.batch_size * cfg.grad_accum * dist.world_size
    state.images_per_epoch = reader.epoch_length * cfg.batch_size * dist.world_size
    total_steps = cfg.total_steps(steps_per_epoch, images_per_step)
    io = None
    if dist.is_main:
        metrics = MetricsLog(plan.run_dir / "metrics.jsonl")
        if plan.resume_from is not None:
            metrics.truncate_after(state.step)
        meta = {"model_config": plan.model_config, "classes": plan.classes, "run_config": to_jsonable(config)}
        io = RunIO(plan.run_dir, meta, make_sample_writer(plan.run_dir, plan.classes, cfg),
                   ProgressDisplay(total_steps, state.step, enabled=config.progress))
        if warning:
            print(f"warning: {warning}", flush=True)
        if plan.resume_from is not None:
            print(f"resumed from {plan.resume_from} at step {state.step} of {total_steps}", flush=True)
    try:
        result = train(parts, io, cfg, total_steps, dist, state)
    finally:
        reader.close()
        if io is not None:
            io.progress.close()
    if dist.is_main:
        summary = {**dataclasses.asdict(result), "last_checkpoint": str(result.last_checkpoint),
                   "total_steps": total_steps, "run_dir": str(plan.run_dir)}
        (plan.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return result


class _BatchIterator:
    """`next()` over a reader that may be an iterable (restarted when exhausted) or an iterator."""

    def __init__(self, reader: Any):
        self.reader = reader
        self._it = None

    def __next__(self):
        if self._it is None:
            self._it = iter(self.reader)
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.reader)
            return next(self._it)

    def state_dict(self) -> dict[str, Any]:
        return self.reader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reader.load_state_dict(state)
        self._it = None
