"""`ddpm-train`: assemble a run from its config and hand it to the training loop.

manifest -> preset -> model; reader, augmenter and validation split; EMA, optimizer, DDP.
`ddpm_model.train` runs the loop on what this builds. The neighbouring modules hold the other
ideas: `config` (the options), `runfolder` (where a run lives, what --resume keeps), `runtime`
(device, torchrun, precision), `codec` (config <-> JSON). This module and `runfolder` are the
only ones of `ddpm_model` that import `ddpm_data`.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddpm_data.augment import Augmenter, center_crop
from ddpm_data.config import AugmentConfig
from ddpm_data.manifest import Manifest, load_manifest
from ddpm_data.stream import ReaderConfig, load_split, open_reader

from . import checkpoint as ckpt
from .codec import to_jsonable
from .config import ModelOptions, Precision, RunConfig, TrainConfig
from .runfolder import RunError, resolve_run, write_document
from .diffusion import DDPM, DiffusionConfig, configs_to_dict
from .memory import estimate_step_memory, format_memory
from .presets import PRESETS, default_batch_size, preset_for_size, resolve_model
from .runtime import (
    Distributed, autocast_for, pick_device, resolve_precision, setup_distributed, teardown_distributed,
)
from .unet import UNetConfig, count_parameters
from .train import LossModule, RunIO, TrainParts, TrainResult, TrainState, make_val_set, resume_from, train

__all__ = ["ModelOptions", "Plan", "RunConfig", "RunError", "TrainConfig", "prepare", "run_training"]


# -- model --------------------------------------------------------------------------------------

def resolve_architecture(manifest: Manifest, options: ModelOptions, aug_dim: int) -> tuple[str, UNetConfig, DiffusionConfig]:
    """(preset name, U-Net, diffusion) for the shards: the preset (named, or the one for the
    manifest's size), then the options the user gave (`dataclasses.replace`)."""
    try:
        unet, diffusion = resolve_model(manifest.size, manifest.channels, len(manifest.classes), options.preset,
                                        {**options.overrides, "aug_dim": aug_dim})
    except ValueError as error:
        if options.preset is None and str(error).startswith("size:"):
            raise RunError(f"{manifest.root}: {error} (--preset NAME and the architecture flags)") from None
        raise RunError(str(error)) from None
    return options.preset or _preset_name(manifest.size), unet, diffusion


def _preset_name(size: int) -> str:
    """The name of the preset `preset_for_size` picks, or 'derived' for a size without one."""
    chosen = preset_for_size(size)
    return next((name for name, preset in PRESETS.items()
                 if dataclasses.replace(preset, image_size=size) == chosen), f"derived ({size} px)")


# -- plan ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What a run will do; printed by --dry-run and written to config.json."""

    config: RunConfig
    run_dir: Path
    resume_from: Path | None
    preset: str | None
    model_config: dict[str, Any]
    parameters: int
    classes: list[str]
    world_size: int
    device: str
    memory: str = ""                       # the memory one training step needs (--dry-run prints it)

    def document(self) -> dict[str, Any]:
        return {"run": to_jsonable(self.config), "preset": self.preset, "model": self.model_config,
                "classes": self.classes, "parameters": self.parameters, "world_size": self.world_size,
                "device": self.device, "resume_from": str(self.resume_from) if self.resume_from else None}


def _resolve_on_main(given: RunConfig, dist: Distributed) -> tuple[RunConfig, Path, Path | None]:
    """resolve_run on rank 0 (it reads the run folder), the same answer on every rank."""
    outcome: Any = None
    if dist.is_main:
        try:
            outcome = resolve_run(given)
        except ValueError as error:
            outcome = RunError(str(error))
    outcome = dist.broadcast(outcome)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def prepare(given: RunConfig, dist: Distributed | None = None,
            device: torch.device | None = None) -> tuple[Plan, Manifest]:
    """Resolve the config, run folder and model; (plan, manifest). Writes nothing."""
    dist = dist or Distributed()
    device = device or pick_device(given.device, 0)
    config, run_dir, resume_path = _resolve_on_main(given, dist)
    if config.resume and resume_path is None:
        raise RunError(f"{run_dir}: no checkpoint to resume from in {ckpt.checkpoint_dir(run_dir)}; "
                       f"start over with --overwrite")
    manifest = load_manifest(config.shards)
    if config.img_size is not None and config.img_size != manifest.size:
        raise RunError(f"--img-size {config.img_size}: {config.shards} holds {manifest.size} px shards; "
                       f"pass --shards shards/{config.img_size} (build it with 'ddpm-data build --size "
                       f"{config.img_size}') or drop --img-size")
    augment = config.augment or AugmentConfig()
    aug_dim = Augmenter.num_params if config.model.aug_conditioning and not augment.is_identity else 0
    preset, unet, diffusion = resolve_architecture(manifest, config.model, aug_dim)
    train_config = config.train
    if train_config.batch_size is None:
        train_config = dataclasses.replace(train_config, batch_size=default_batch_size(unet))
    reader = dataclasses.replace(config.reader or ReaderConfig(), batch_size=train_config.batch_size,
                                 seed=train_config.seed, device=str(device))
    config = dataclasses.replace(config, reader=reader, augment=augment, train=train_config)
    memory = estimate_step_memory(unet, train_config.batch_size, resolve_precision(train_config.precision, device).value,
                                  train_config.gradient_checkpointing)
    return Plan(config, run_dir, resume_path, preset, configs_to_dict(unet, diffusion), count_parameters(unet),
                list(manifest.classes), dist.world_size, str(device), format_memory(memory)), manifest


# -- training -----------------------------------------------------------------------------------

def make_sample_writer(run_dir: Path, classes: list[str], config: TrainConfig):
    """Writes samples/step-XXXXXXXX.png: one row of `samples_per_class` per class, fixed noise."""
    from ddpm_data.grid import save_grid

    from .sample import to_uint8

    def write(model: torch.nn.Module, step: int) -> Path:
        device = next(model.parameters()).device
        generator = torch.Generator(device).manual_seed(config.seed)
        labels = torch.arange(len(classes)).repeat_interleave(config.samples_per_class)
        images = to_uint8(model.sample(labels, steps=config.sample_steps, guidance=config.sample_guidance,
                                       eta=config.sample_eta, generator=generator,
                                       batch_size=max(config.batch_size, 16)))
        rows = {name: list(images[labels == label].numpy()) for label, name in enumerate(classes)}
        return save_grid(rows, run_dir / "samples" / f"step-{step:08d}.png", tile=max(images.shape[-1], 64))

    return write


def _validation(config: RunConfig, manifest: Manifest, num_timesteps: int) -> Any:
    if sum(manifest.counts.get("val", {}).values()) == 0:
        return None
    # only the rows make_val_set keeps; from data.h5, or the val tar shards of a URL
    images, labels = load_split(config.shards, "val", limit=config.train.val_images)
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
        teardown_distributed(dist)


def _train(plan: Plan, manifest: Any, dist: Distributed, device: torch.device) -> TrainResult:
    from .ema import EMA
    from .metrics import MetricsLog, ProgressDisplay

    config, cfg = plan.config, plan.config.train
    if dist.is_main:
        if not config.resume and config.overwrite and plan.run_dir.exists():
            shutil.rmtree(plan.run_dir)
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        # Rewritten on resume too, so the next --resume continues with the options in force now.
        write_document(plan.run_dir, plan.document())
    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts them)
    model = DDPM.from_dict(plan.model_config).to(device)
    if cfg.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    precision, autocast = autocast_for(cfg.precision, device)
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
