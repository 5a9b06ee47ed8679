"""`ddpm-train`: assemble a run from its config and hand it to the training loop, in one pass:

1. resolve and check (`runfolder.resolve`, on rank 0): the run folder, the options in force, the
   checkpoint to continue from, the shards (loaded once) against the data the run started on;
2. plan (`plan_run`): the model (`presets.resolve_architecture`: preset, options, recommended
   batch size and learning rate), the reader's settings, the memory of one step;
3. execute (`_train`): model, EMA, optimizer, reader, augmenter, validation split; the
   checkpoint's state; the run folder claimed and config.json written; `ddpm_model.train` runs
   the loop on what this builds. The neighbouring modules hold the other
ideas: `config` (the options), `runfolder` (where a run lives, what --resume keeps), `runtime`
(device, torchrun, precision), `codec` (config <-> JSON). This module and `runfolder` are the
only ones of `ddpm_model` that import `ddpm_data`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddpm_data.augment import Augmenter, center_crop
from ddpm_data.config import AugmentConfig
from ddpm_data.manifest import Manifest
from ddpm_data.redact import redact, scrub
from ddpm_data.stream import ReaderConfig, load_split, open_reader

from . import checkpoint as ckpt
from .codec import to_jsonable
from .config import ModelOptions, Precision, RunConfig, TrainConfig
from .runfolder import CONFIG_NAME, Resolved, RunError, claim_run_dir, resolve
from .host_memory import keep_freed_host_memory
from .diffusion import DDPM, DiffusionConfig, configs_to_dict
from .memory import estimate_step_memory, format_memory, measure_step_memory
from .presets import Architecture, resolve_architecture
from .runtime import (
    Distributed, autocast_for, pick_device, resolve_precision, setup_distributed, teardown_distributed,
)
from .unet import UNetConfig, count_parameters
from .quality import Classify, QualityScore, make_quality_scorer
from .train import (
    LossModule, QualityScorer, RunIO, TrainParts, TrainResult, TrainState, make_val_set, resume_from, train,
)

__all__ = ["ModelOptions", "Plan", "RunConfig", "RunError", "TrainConfig", "prepare", "run_training"]


# -- model --------------------------------------------------------------------------------------

def resolve_model_for(manifest: Manifest, options: ModelOptions, aug_dim: int) -> Architecture:
    """The model for the shards (`presets.resolve_architecture`): the preset (named, or the one for
    the manifest's size), then the options the user gave (`dataclasses.replace`)."""
    try:
        return resolve_architecture(manifest.size, manifest.channels, len(manifest.classes), options.preset,
                                    {**options.overrides, "aug_dim": aug_dim, **data_statistics(manifest, options)})
    except ValueError as error:
        if options.preset is None and str(error).startswith("size:"):
            raise RunError(f"{manifest.root}: {error} (--preset NAME and the architecture flags)") from None
        raise RunError(str(error)) from None


def data_statistics(manifest: Manifest, options: ModelOptions) -> dict[str, tuple[float, ...]]:
    """DiffusionConfig's data_mean / data_std in [-1, 1] units from the manifest's per-channel
    statistics of the train split ([0, 1] units); none without --data-normalization."""
    if not options.data_normalization or not manifest.mean or not manifest.std:
        return {}
    return {"data_mean": tuple(round(2 * m - 1, 6) for m in manifest.mean),
            "data_std": tuple(round(max(2 * s, 1e-3), 6) for s in manifest.std)}


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
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # runfolder.data_record of the shards
    new_data: str | None = None            # set when --allow-new-data continues on changed shards: what changed

    def document(self) -> dict[str, Any]:
        return {"run": to_jsonable(self.config), "preset": self.preset, "model": self.model_config,
                "classes": self.classes, "data": self.data, "parameters": self.parameters,
                "world_size": self.world_size, "device": self.device,
                "resume_from": str(self.resume_from) if self.resume_from else None}


def prepare(given: RunConfig, dist: Distributed | None = None,
            device: torch.device | None = None) -> tuple[Plan, Manifest]:
    """Resolve and check the command against its run folder and shards (`runfolder.resolve`, on
    rank 0), then plan the model and the defaults it sets; (plan, manifest). Writes nothing."""
    dist = dist or Distributed()
    device = device or pick_device(given.device, 0)
    resolved = dist.on_main(resolve, given)
    return plan_run(resolved, dist, device), resolved.manifest


def plan_run(resolved: Resolved, dist: Distributed, device: torch.device) -> Plan:
    """The model (preset, then the options), the batch size and learning rate it implies when not
    given, the reader's settings and the memory one step needs."""
    config, manifest = resolved.config, resolved.manifest
    augment = config.augment or AugmentConfig()
    aug_dim = Augmenter.num_params if config.model.aug_conditioning and not augment.is_identity else 0
    try:
        architecture = resolve_model_for(manifest, config.model, aug_dim)
    except (RunError, TypeError) as error:
        if not config.resume:
            raise
        raise RunError(f"{resolved.run_dir / CONFIG_NAME}: run.model: {error}; fix the value or start a new run "
                       f"with another --out") from None
    unet, train_config = architecture.unet, config.train
    if train_config.batch_size is None:
        train_config = dataclasses.replace(train_config, batch_size=architecture.batch_size)
    if train_config.lr is None:
        train_config = dataclasses.replace(train_config, lr=architecture.lr)
    reader = dataclasses.replace(config.reader or ReaderConfig(), batch_size=train_config.batch_size,
                                 seed=train_config.seed, device=str(device))
    config = dataclasses.replace(config, reader=reader, augment=augment, train=train_config)
    memory = estimate_step_memory(unet, train_config.batch_size, resolve_precision(train_config.precision, device).value,
                                  train_config.gradient_checkpointing)
    return Plan(config, resolved.run_dir, resolved.resume_from, architecture.preset,
                configs_to_dict(unet, architecture.diffusion), count_parameters(unet), list(manifest.classes),
                dist.world_size, str(device), format_memory(memory), resolved.data, resolved.new_data)


# -- training -----------------------------------------------------------------------------------

def make_sample_writer(run_dir: Path, classes: list[str], config: TrainConfig):
    """Writes samples/step-XXXXXXXX.png: one row of `samples_per_class` per class, fixed noise, or
    the first of a quality score's samples of each class when it drew enough (same sampler settings)."""
    from ddpm_data.grid import save_grid

    from .sample import to_uint8

    def write(model: torch.nn.Module, step: int, scored: QualityScore | None = None) -> Path:
        labels = torch.arange(len(classes)).repeat_interleave(config.samples_per_class)
        images = _first_of_each_class(scored, len(classes), config.samples_per_class)
        if images is None:
            device = next(model.parameters()).device
            generator = torch.Generator(device).manual_seed(config.seed)
            images = model.sample(labels, sampler=config.sample_sampler.value, steps=config.sample_steps, guidance=config.sample_guidance,
                                  eta=config.sample_eta, generator=generator, batch_size=max(config.batch_size, 16))
        images = to_uint8(images)
        rows = {name: list(images[labels == label].numpy()) for label, name in enumerate(classes)}
        return save_grid(rows, run_dir / "samples" / f"step-{step:08d}.png", tile=max(images.shape[-1], 64))

    return write


def _first_of_each_class(scored: QualityScore | None, classes: int, per_class: int) -> torch.Tensor | None:
    """`per_class` of the scored samples of each class, class by class; None unless every class has them."""
    if scored is None or scored.samples is None or scored.labels is None:
        return None
    rows = [scored.samples[scored.labels == label][:per_class] for label in range(classes)]
    return torch.cat(rows) if all(len(row) == per_class for row in rows) else None


def _val_split(config: RunConfig, manifest: Manifest) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The val images the run uses, centre-cropped to the training size, float (N, C, S, S) in [-1, 1],
    and labels: at most the quality score's references or --val-images per class, spread evenly
    over each class, so that start-up does not grow with the data set."""
    if sum(manifest.counts.get("val", {}).values()) == 0:
        return None
    from .quality import REFERENCE_IMAGES

    images, labels = load_split(config.shards, "val", per_class=max(REFERENCE_IMAGES, config.train.val_images))
    return center_crop(torch.as_tensor(images), manifest.size), torch.as_tensor(labels)


def _measured(plan: Plan, device: torch.device) -> Plan:
    """The plan with the memory of one real training step on this CUDA device (--dry-run)."""
    cfg = plan.config.train
    model = DDPM.from_dict(plan.model_config).to(device)
    if cfg.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    precision = resolve_precision(cfg.precision, device).value
    return dataclasses.replace(plan, memory=format_memory(measure_step_memory(model, cfg.batch_size, device, precision)))


def run_training(given: RunConfig) -> tuple[Plan, TrainResult | None]:
    """Train as configured; (plan, result). With --dry-run: (plan, None), nothing written."""
    dist, device = setup_distributed(given.device)
    try:
        plan, manifest = prepare(given, dist, device)
        if plan.config.dry_run:
            return (_measured(plan, device) if device.type == "cuda" else plan), None
        result = _train(plan, manifest, dist, device)
        dist.barrier()  # rank 0 writes the summary and checks the best checkpoints after the others finish
        return plan, result
    finally:
        teardown_distributed(dist)


def _train(plan: Plan, manifest: Any, dist: Distributed, device: torch.device) -> TrainResult:
    """Build everything that can fail on the data, the options or the checkpoint, then claim the
    run folder (lock, config.json) and train."""
    cfg = plan.config.train
    if device.type == "cpu":
        keep_freed_host_memory()  # ~9 % of a 96 px CPU step was page faults on buffers freed the step before
    parts, reader, scorer = _build_parts(plan, manifest, dist, device)
    try:
        state = TrainState()
        plan, notes = _resume(plan, parts, state, dist, device)
        steps_per_epoch = max(reader.epoch_length / cfg.grad_accum, 1e-9)
        state.images_per_epoch = reader.epoch_length * cfg.batch_size * dist.world_size
        total_steps = cfg.total_steps(steps_per_epoch, cfg.batch_size * cfg.grad_accum * dist.world_size)
        fresh = not plan.config.resume or plan.resume_from is None
        claim = claim_run_dir(plan.run_dir, fresh, plan.document()) if dist.is_main else contextlib.nullcontext()
        with claim:
            io = _run_io(plan, state, total_steps, notes, scorer) if dist.is_main else None
            try:
                result = train(parts, io, cfg, total_steps, dist, state)
            finally:
                if io is not None:
                    io.progress.close()
            if dist.is_main:
                _write_summary(plan, result, total_steps)
                for reason in damaged_bests(plan.run_dir).values():
                    print(f"warning: {reason}; ddpm-sample refuses it, sample from another checkpoint", flush=True)
    finally:
        reader.close()
    return result


def _build_parts(plan: Plan, manifest: Any, dist: Distributed,
                 device: torch.device) -> tuple[TrainParts, Any, QualityScorer | None]:
    """Model, EMA, optimizer, reader, augmenter, validation set and sample-quality scorer;
    writes nothing."""
    from .ema import EMA

    config, cfg = plan.config, plan.config.train
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
    try:
        val_split = _val_split(config, manifest) if dist.is_main else None
    except BaseException:
        reader.close()
        raise
    generator = torch.Generator(device).manual_seed(cfg.seed + 1_000_003 * dist.rank)
    # On new data (--allow-new-data) the saved reader position means nothing: the order starts afresh.
    batches = _BatchIterator(reader, restore=plan.new_data is None)
    parts = TrainParts(
        model=model, step_model=step_model, ema=ema, optimizer=optimizer, scaler=scaler,
        batches=batches, augment=Augmenter(config.augment, manifest.size), generator=generator,
        val=make_val_set(*val_split, model.diffusion_config.num_timesteps, cfg.seed, cfg.batch_size * 2,
                         cfg.val_images) if val_split is not None else None,
        autocast=autocast, use_aug_params=model.unet_config.aug_dim > 0, channels_last=channels_last)
    scorer = None if val_split is None else make_quality_scorer(
        *val_split, list(plan.classes), cfg, classify=_quality_classifier(config, manifest, device))
    return parts, reader, scorer


MAX_CLASSIFIER_IMAGES = 50_000  # train images the eval classifier is fitted on, in memory; above, no class accuracy


def _quality_classifier(config: RunConfig, manifest: Manifest, device: torch.device) -> Classify | None:
    """ddpm-eval's classifier for these shards as a function images -> predicted classes, made at
    the first score (from its cache, or trained once and cached where ddpm-eval looks for it), so a
    run that never scores never fits it; None when the quality score is off, there is one class,
    --no-quality-classifier, or the train split is too large to hold. A shard that cannot be read
    is said in a warning, and the scores go on without class accuracy (the function returns None)."""
    cfg = config.train
    if not cfg.quality_classifier or cfg.quality_every == 0 or len(manifest.classes) < 2:
        return None
    if manifest.num_samples("train") > MAX_CLASSIFIER_IMAGES:
        print(f"note: {manifest.num_samples('train'):,} train images: the quality score is the distance alone, "
              f"without class accuracy (at most {MAX_CLASSIFIER_IMAGES:,}); measure it with ddpm-eval", flush=True)
        return None
    made: dict[str, Any] = {}

    def classify(images: torch.Tensor) -> torch.Tensor | None:
        if "classifier" not in made:  # fitted outside no_grad: it may have to be trained
            made["classifier"] = _fit_classifier(config, device)
        classifier = made["classifier"]
        if classifier is None:
            return None
        with torch.no_grad():
            return classifier(images.to(device)).argmax(dim=1).cpu()

    return classify


def _fit_classifier(config: RunConfig, device: torch.device) -> torch.nn.Module | None:
    """The eval classifier from ddpm-eval's cache (found from the manifest alone), else trained on the
    train images and cached; None, with a warning, when a shard cannot be read."""
    from ddpm_eval.classifier import ClassifierConfig, cached_classifier, train_and_cache
    from ddpm_eval.images import load_real

    def log(message: str) -> None:
        print(f"quality score: {message}", flush=True)

    try:
        classifier = cached_classifier(load_real(config.shards, splits=()), ClassifierConfig(), device, log)
        if classifier is None:
            classifier = train_and_cache(load_real(config.shards, splits=("train",)), ClassifierConfig(), device, log)[0]
    except (ValueError, OSError) as error:  # a bad shard: the reader skips it or stops the run itself
        print(f"warning: the quality score goes without class accuracy: the eval classifier cannot read the train "
              f"images ({error}); 'ddpm-data verify' names what to rebuild", flush=True)
        return None
    return classifier


def _resume(plan: Plan, parts: TrainParts, state: TrainState, dist: Distributed,
            device: torch.device) -> tuple[Plan, list[str]]:
    """Load the newest usable checkpoint into `parts` and `state`; (plan naming it, lines to print)."""
    if not plan.config.resume:
        return plan, []
    if plan.resume_from is None:
        return plan, [f"note: {plan.run_dir} has no checkpoint yet; starting it from step 0 with its saved configuration"]
    loaded = ckpt.load_latest(plan.run_dir, map_location=device, accept=_resumable)
    notes = [f"warning: skipped {reason}" for reason in loaded.skipped]
    if list(loaded.state["classes"]) != plan.classes:
        raise RunError(f"{loaded.path}: trained on classes {', '.join(loaded.state['classes'])}, the shards hold "
                       f"{', '.join(plan.classes)}; start a new run with another --out")
    try:
        warning = resume_from(loaded.state, parts, state, dist)
    except (KeyError, IndexError, TypeError, RuntimeError, ValueError) as error:
        raise ckpt.CheckpointError(f"{loaded.path}: does not fit this run ({ckpt.first_sentence(error)}); resume with the "
                                   f"options the run was started with, or start a new run with another --out") from None
    notes += [f"warning: {text}" for text in (warning, plan.new_data) if text]
    if dist.is_main:
        notes += _forget_damaged_bests(plan.run_dir, state)
    return dataclasses.replace(plan, resume_from=loaded.path), notes


# Each best checkpoint and the TrainState field holding the score it was saved at.
BEST_SCORES = {ckpt.BEST_NAME: "best_val_loss", ckpt.BEST_QUALITY_NAME: "best_quality"}


def damaged_bests(run_dir: Path) -> dict[str, str]:
    """Best checkpoints of `run_dir` that exist but do not load: name -> why."""
    damaged = {}
    for name in BEST_SCORES:
        path = ckpt.checkpoint_dir(run_dir) / name
        if path.is_file():
            try:
                ckpt.load_checkpoint(path)
            except ckpt.CheckpointError as error:
                damaged[name] = str(error)
    return damaged


def _forget_damaged_bests(run_dir: Path, state: TrainState) -> list[str]:
    """On resume: a damaged best checkpoint is replaced at the next score (its saved score is
    forgotten, else only a better one would replace it; an intact one is kept); the lines that say so."""
    notes = []
    for name, reason in damaged_bests(run_dir).items():
        setattr(state, BEST_SCORES[name], math.inf)
        notes.append(f"warning: {reason}; ddpm-sample refuses it until this run writes it again at its next score")
    return notes


def _resumable(state: dict[str, Any]) -> str | None:
    """Why a loadable checkpoint cannot continue a run (None: it can)."""
    missing = [key for key in ("optimizer", "rng", "reader", "images_seen") if key not in state]
    if missing:
        return f"holds no {', '.join(missing)} (a model-only file)"
    if len(state["rng"]) < state.get("world_size", 1):
        return f"holds the data position of rank 0 only, of the {state['world_size']} processes that trained"
    return None


def _run_io(plan: Plan, state: TrainState, total_steps: int, notes: list[str],
            scorer: QualityScorer | None) -> RunIO:
    """Rank 0, inside the claimed run folder (config.json written): metrics, the progress display."""
    from .metrics import MetricsLog, ProgressDisplay

    if plan.resume_from is not None:
        MetricsLog(plan.run_dir / "metrics.jsonl").truncate_after(state.step)
    for line in notes:
        print(redact(line), flush=True)
    if plan.resume_from is not None:
        print(f"resumed from {plan.resume_from} at step {state.step} of {total_steps}", flush=True)
    config = plan.config
    meta = scrub({"model_config": plan.model_config, "classes": plan.classes, "data": plan.data,
                  "run_config": to_jsonable(config)})  # checkpoints keep no secret of a pipe: command
    return RunIO(plan.run_dir, meta, make_sample_writer(plan.run_dir, plan.classes, config.train),
                 ProgressDisplay(total_steps, state.step, enabled=config.progress), scorer)


def _write_summary(plan: Plan, result: TrainResult, total_steps: int) -> None:
    summary = {**dataclasses.asdict(result), "last_checkpoint": str(result.last_checkpoint),
               "total_steps": total_steps, "run_dir": str(plan.run_dir)}
    (plan.run_dir / "summary.json").write_text(json.dumps(scrub(summary), indent=2, sort_keys=True) + "\n")


class _BatchIterator:
    """`next()` over a reader that may be an iterable (restarted when exhausted) or an iterator."""

    def __init__(self, reader: Any, restore: bool = True):
        self.reader = reader
        self.restore = restore            # False: load_state_dict keeps the fresh position
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
        if self.restore:
            self.reader.load_state_dict(state)
            self._it = None
