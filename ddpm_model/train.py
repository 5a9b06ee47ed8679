"""The training loop: AdamW steps with warm-up, clipping, EMA, accumulation; validation,
checkpoints and samples at intervals; clean stops on SIGINT/SIGTERM and on a non-finite loss.

The loop receives everything it works on (`TrainParts`: model, EMA, optimizer, batch source,
augment callable, validation set) and its side effects (`RunIO`: metrics, sample writer,
checkpoint folder); `ddpm_model.run` builds both from the shard folder. It knows nothing about
shards or devices beyond what the tensors it gets carry.
"""
from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

from ddpm_data.signals import HeldSignals

from . import checkpoint as ckpt
from .config import Precision, TrainConfig
from .metrics import MetricsLog, ProgressDisplay, plot_loss_curve
from .quality import QUALITY_RULE, QualityScore
from .runtime import Distributed


class BatchSource(Protocol):
    """Infinite iterator of (images uint8 (N, C, S, S), labels int64 (N,)) with a resumable position."""

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


AugmentFn = Callable[[torch.Tensor, torch.Generator], "tuple[torch.Tensor, torch.Tensor]"]
SampleWriter = Callable[[nn.Module, int, "QualityScore | None"], "Path | None"]  # (model, step, a score's samples)
QualityScorer = Callable[[nn.Module], QualityScore]


class LossModule(nn.Module):
    """Routes `DDPM.loss` through `forward`, which DistributedDataParallel needs to sync gradients."""

    def __init__(self, ddpm: nn.Module):
        super().__init__()
        self.ddpm = ddpm

    def forward(self, images, labels, aug_params, generator):  # noqa: D401 - see DDPM.loss
        return self.ddpm.loss(images, labels, aug_params=aug_params, generator=generator)


@dataclass
class ValSet:
    """Fixed validation batch: images (N, C, H, W) in [-1, 1], labels (N,), timesteps t (N,) and
    noise (N, C, H, W) drawn once, so successive validation losses are comparable."""

    images: torch.Tensor
    labels: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    batch_size: int


def make_val_set(images: torch.Tensor, labels: torch.Tensor, num_timesteps: int, seed: int,
                 batch_size: int, limit: int) -> ValSet:
    """Pick up to `limit` images spread over the (label-sorted) split, with stratified timesteps
    (one per 1/N of [0, T), shuffled) and Gaussian noise from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    if images.shape[0] > limit:
        keep = torch.linspace(0, images.shape[0] - 1, limit).round().long()
        images, labels = images[keep], labels[keep]
    n = images.shape[0]
    t = ((torch.arange(n) * num_timesteps) // max(n, 1))[torch.randperm(n, generator=generator)]
    noise = torch.randn(tuple(images.shape), generator=generator)
    return ValSet(images.float(), labels.long(), t.long(), noise.to(images.device), batch_size)


@dataclass
class TrainParts:
    model: nn.Module                      # the DDPM itself; checkpoints hold its state_dict
    step_model: nn.Module                 # LossModule(model), DDP-wrapped with several ranks
    ema: Any                              # ddpm_model.ema.EMA on rank 0, else None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    batches: BatchSource
    augment: AugmentFn                    # (uint8 (N,C,S,S), generator) -> (x in [-1,1], params)
    generator: torch.Generator            # this rank's draws: augmentation, t, noise, label dropout
    val: ValSet | None
    autocast: Callable[[], contextlib.AbstractContextManager]
    use_aug_params: bool = True           # feed augmentation parameters to the model (aug_dim > 0)
    channels_last: bool = False


@dataclass
class RunIO:
    """Rank-0 side effects. `checkpoint_meta` goes into every checkpoint (configs, classes)."""

    run_dir: Path
    checkpoint_meta: dict[str, Any]
    write_samples: SampleWriter | None = None
    progress: ProgressDisplay | None = None
    score_quality: QualityScorer | None = None   # model -> per-class distance of its samples to real images
    last_score: tuple[int, QualityScore] | None = None  # (step, score): a grid due at that step reuses its samples

    @property
    def metrics(self) -> MetricsLog:
        return MetricsLog(self.run_dir / "metrics.jsonl")


@dataclass
class TrainState:
    step: int = 0
    images_seen: int = 0
    best_val_loss: float = math.inf
    best_quality: float = math.inf        # lowest quality score so far (quality_score: worst class's SWD / accuracy)
    images_per_epoch: float = 0.0         # for the `epoch` column; 0 = unknown
    # running sums since the last metrics line
    loss_sum: float = 0.0
    loss_count: int = 0
    grad_norm: float = 0.0
    wait_s: float = 0.0
    interval_start: float = field(default_factory=time.perf_counter)
    interval_images: int = 0
    settled_step: int = 0                 # the step up to which the device's numbers were read
    last_loss: float = math.nan           # mean train loss at the last read


@dataclass(frozen=True)
class TrainResult:
    status: str                           # "finished" | "interrupted"
    step: int
    images_seen: int
    final_loss: float                     # mean train loss over the last metrics interval
    best_val_loss: float
    last_checkpoint: Path | None
    seconds: float
    stop_signal: str | None = None        # "SIGINT" | "SIGTERM" when interrupted by this process's signal

    @property
    def exit_status(self) -> int:
        """0 when finished; 128 + the signal number when stopped (130 SIGINT, 143 SIGTERM), as a
        shell reports a process ended by that signal, so scripts and schedulers see the stop."""
        if self.status == "finished":
            return 0
        return 128 + signal.Signals[self.stop_signal or "SIGINT"].value


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf; the last good checkpoint is left in place."""

    exit_code = 1                         # the run failed, the input was fine (2 = bad input)


class StopRequest(HeldSignals):
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step; a second SIGINT aborts."""

    def __init__(self) -> None:
        super().__init__((signal.SIGINT, signal.SIGTERM))


class StepTally:
    """What each step reports, kept on the device until a metrics line, a checkpoint, a score or
    the end needs it: a step never waits for the device (on a GPU, a read-back per step stalls the
    queue of kernels). Holds the loss sum since the last read, the last gradient norm, and the
    first step whose loss or gradient was not finite (0 = none) with that loss."""

    def __init__(self, device: torch.device, step: int) -> None:
        zeros = lambda dtype=torch.float32: torch.zeros((), device=device, dtype=dtype)  # noqa: E731
        self.step = torch.full((), step, device=device, dtype=torch.int64)
        self.loss_sum, self.grad_norm, self.bad_loss = zeros(), zeros(), zeros()
        self.first_bad = zeros(torch.int64)
        self.steps = 0  # steps added since the last read (host side)

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, bad: torch.Tensor) -> None:
        self.step += 1
        self.loss_sum += loss
        self.grad_norm.copy_(grad_norm)
        first = bad & (self.first_bad == 0)
        self.first_bad.copy_(torch.where(first, self.step, self.first_bad))
        self.bad_loss.copy_(torch.where(first, loss, self.bad_loss))
        self.steps += 1

    def read(self, dist: Distributed, stop_requested: bool) -> tuple[float, float, int, float, bool]:
        """One read-back (and one collective): (loss mean over steps and ranks, gradient norm, first
        non-finite step or 0 on any rank, its loss, stop requested on any rank); resets the sums."""
        flags = torch.stack([self.loss_sum, (self.first_bad > 0).float(), torch.full_like(self.loss_sum, float(stop_requested))])
        flags = dist.all_reduce_sum(flags)
        values = torch.cat([flags, torch.stack([self.grad_norm, self.first_bad.float(), self.bad_loss])]).cpu().tolist()
        loss_sum, bad_ranks, stop_ranks, grad_norm, first_bad, bad_loss = values
        steps, self.steps = self.steps, 0
        self.loss_sum.zero_()
        first = int(first_bad) or (int(self.step.item()) if bad_ranks > 0 else 0)  # another rank's: this step
        loss = loss_sum / max(steps, 1) / dist.world_size
        return loss, grad_norm, first, bad_loss if first_bad else loss, stop_ranks > 0


def train_step(parts: TrainParts, config: TrainConfig, state: TrainState, dist: Distributed, tally: StepTally) -> None:
    """One optimizer step over `grad_accum` micro-batches, with nothing read back from the device.

    The loss and the gradient norm go into `tally`. A non-finite loss or gradient is only recorded
    there: the run stops at the next read (`settle`), before anything is written, so the last
    checkpoint on disk stays the last good one."""
    parts.step_model.train()
    parts.optimizer.zero_grad(set_to_none=True)
    device = next(parts.model.parameters()).device
    loss_total = torch.zeros((), device=device)
    for micro in range(config.grad_accum):
        started = time.perf_counter()
        images, labels = next(parts.batches)
        state.wait_s += time.perf_counter() - started
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        x, aug_params = parts.augment(images, parts.generator)
        if parts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        last = micro == config.grad_accum - 1
        sync = contextlib.nullcontext() if last or dist.world_size == 1 else parts.step_model.no_sync()
        with sync, parts.autocast():
            loss = parts.step_model(x, labels, aug_params if parts.use_aug_params else None, parts.generator)
        parts.scaler.scale(loss / config.grad_accum).backward()
        loss_total += loss.detach().float()
    parts.scaler.unscale_(parts.optimizer)
    params = [p for p in parts.model.parameters() if p.grad is not None]
    max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm).float()
    bad = ~torch.isfinite(loss_total)
    if not parts.scaler.is_enabled():  # with fp16 the scaler skips inf-gradient steps itself
        bad = bad | ~torch.isfinite(grad_norm)
    for group in parts.optimizer.param_groups:
        group["lr"] = config.lr_at(state.step)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    if parts.ema is not None:
        parts.ema.update(parts.model)
    batch_images = config.batch_size * config.grad_accum * dist.world_size
    state.step += 1
    state.images_seen += batch_images
    state.interval_images += batch_images
    tally.add(loss_total / config.grad_accum, grad_norm, bad)


def settle(tally: StepTally, state: TrainState, dist: Distributed, stop: StopRequest, io: RunIO | None) -> bool:
    """Read the tally into `state` (loss sums, gradient norm); raise TrainingDiverged if a step since
    the last read was not finite. Returns whether any rank was asked to stop."""
    loss, grad_norm, first_bad, bad_loss, stop_any = tally.read(dist, stop.requested)
    if first_bad:
        raise TrainingDiverged(diverged_message(bad_loss, first_bad, io))
    steps = state.step - state.settled_step
    if steps:
        state.loss_sum += loss * steps
        state.loss_count += steps
        state.grad_norm = grad_norm
        state.last_loss = loss
    state.settled_step = state.step
    return stop_any


def needs_settling(config: TrainConfig, state: TrainState, dist: Distributed, stop: StopRequest, total_steps: int) -> bool:
    """Whether anything at this step reads the numbers or writes the weights: a metrics line,
    validation, a score, a checkpoint, a grid, the end, or (one rank) a stop request."""
    everies = (config.log_every, config.val_every, config.quality_every, config.checkpoint_every, config.sample_every)
    return (state.step >= total_steps or any(every > 0 and state.step % every == 0 for every in everies)
            or (dist.world_size == 1 and stop.requested))


def due(step: int, every: int, final: bool) -> bool:
    return final or (every > 0 and step % every == 0)


def maybe_log(parts: TrainParts, io: RunIO | None, config: TrainConfig, state: TrainState,
              final: bool = False) -> dict[str, Any] | None:
    """Every `log_every` steps: one metrics line (rank 0) and a progress update; resets the sums."""
    if state.loss_count == 0 or not due(state.step, config.log_every, final):
        return None
    elapsed = max(time.perf_counter() - state.interval_start, 1e-9)
    record = {
        "step": state.step,
        "images": state.images_seen,
        "epoch": round(state.images_seen / state.images_per_epoch, 4) if state.images_per_epoch else None,
        "loss": state.loss_sum / state.loss_count,
        "lr": parts.optimizer.param_groups[0]["lr"],
        "img_per_s": state.interval_images / elapsed,
        "data_wait": min(1.0, state.wait_s / elapsed),
        "grad_norm": state.grad_norm,
    }
    state.loss_sum, state.loss_count, state.wait_s, state.interval_images = 0.0, 0, 0.0, 0
    state.interval_start = time.perf_counter()
    if io is not None:
        io.metrics.append(record)
        if io.progress is not None:
            io.progress.update(state.step, record)
    return record


@torch.no_grad()
def validation_loss(model: nn.Module, val: ValSet, autocast: Callable[[], contextlib.AbstractContextManager]) -> float:
    """Mean loss of `model` (eval mode, no label dropout) over the fixed validation set."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for start in range(0, val.images.shape[0], val.batch_size):
            part = slice(start, start + val.batch_size)
            images = val.images[part].to(device)
            with autocast():
                loss = model.loss(images, val.labels[part].to(device), t=val.t[part].to(device),
                                  noise=val.noise[part].to(device))
            total += loss.float().item() * images.shape[0]
            count += images.shape[0]
    finally:
        model.train(was_training)
    return total / max(count, 1)


def maybe_validate(parts: TrainParts, io: RunIO | None, config: TrainConfig, state: TrainState,
                   dist: Distributed, final: bool = False) -> dict[str, Any] | None:
    """Every `val_every` steps on rank 0: val loss of the weights and of the EMA; a new best
    (by the EMA loss, which is what samples use) is written to checkpoints/best.pt."""
    if io is None or parts.val is None or not due(state.step, config.val_every, final):
        return None
    record = {"step": state.step, "images": state.images_seen,
              "val_loss": validation_loss(parts.model, parts.val, parts.autocast)}
    if parts.ema is not None:
        record["val_loss_ema"] = validation_loss(parts.ema.module, parts.val, parts.autocast)
    io.metrics.append(record)
    score = record.get("val_loss_ema", record["val_loss"])
    if math.isfinite(score) and score < state.best_val_loss:
        state.best_val_loss = score
        save_best(parts, io, state, dist, ckpt.BEST_NAME)
    if io.progress is not None:
        io.progress.message(f"step {state.step}: val loss {record['val_loss']:.4f}"
                            + (f", EMA {record['val_loss_ema']:.4f}" if "val_loss_ema" in record else ""))
    return record


def maybe_score(parts: TrainParts, io: RunIO | None, config: TrainConfig, state: TrainState,
                dist: Distributed, final: bool = False) -> dict[str, Any] | None:
    """Every `quality_every` steps on rank 0: how far samples of the EMA weights are from real
    images, per class (`quality_swd` the mean, `quality_swd_worst` the worst class; lower is
    better), and how many of each class's samples the classifier recognises. The validation loss
    keeps falling on a few hundred images while samples get worse; the worst class's distance over
    its accuracy (`quality_score`) picks the checkpoint that samples best without trading a class
    away, kept as checkpoints/best-quality.pt."""
    if io is None or io.score_quality is None or config.quality_every == 0 \
            or not due(state.step, config.quality_every, final):
        return None
    model = parts.ema.module if parts.ema is not None else parts.model
    score = io.score_quality(model)
    io.last_score = (state.step, score)
    record = {"step": state.step, "images": state.images_seen, **score.record()}
    io.metrics.append(record)
    if math.isfinite(score.value) and score.value < state.best_quality:
        state.best_quality = score.value
        save_best(parts, io, state, dist, ckpt.BEST_QUALITY_NAME)
    if io.progress is not None:
        accuracy = "" if score.accuracy is None else ", class accuracy " + " ".join(
            f"{name} {value:.2f}" for name, value in score.accuracy.items())
        io.progress.message(f"step {state.step}: sample quality (SWD to val) mean {score.mean:.4f}, "
                            f"worst class {score.worst:.4f}{accuracy}; score {score.value:.4f}")
    return record


def save_best(parts: TrainParts, io: RunIO, state: TrainState, dist: Distributed, name: str) -> Path:
    """checkpoints/<name> from rank 0's states alone (a best checkpoint is for sampling; resume
    uses the step checkpoints)."""
    rank_state = {"rng": [capture_rng(parts.generator)], "reader": [parts.batches.state_dict()]}
    return ckpt.save_checkpoint(checkpoint_state(parts, io, state, rank_state, dist),
                                ckpt.checkpoint_dir(io.run_dir) / name)


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """This process's random states as uint8 tensors (weights_only-loadable)."""
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if generator.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(generator.device)
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"].cpu())
    generator.set_state(state["generator"].cpu())
    if "cuda" in state and generator.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), generator.device)


def checkpoint_state(parts: TrainParts, io: RunIO, state: TrainState, rank_state: dict[str, list],
                     dist: Distributed) -> dict[str, Any]:
    """The dict a checkpoint stores; `rank_state` holds every rank's RNG and reader states."""
    return {
        **io.checkpoint_meta,
        "step": state.step,
        "images_seen": state.images_seen,
        "best_val_loss": state.best_val_loss,
        "best_quality": state.best_quality,
        "best_quality_rule": QUALITY_RULE,
        "world_size": dist.world_size,
        "model": parts.model.state_dict(),
        "ema": parts.ema.state_dict() if parts.ema is not None else {},
        "optimizer": parts.optimizer.state_dict(),
        "scaler": parts.scaler.state_dict(),
        **rank_state,
    }


def save_now(parts: TrainParts, io: RunIO | None, state: TrainState, dist: Distributed, keep: int) -> Path | None:
    """Collective: every rank contributes its RNG/reader state; rank 0 writes and prunes."""
    gathered = dist.gather({"rng": capture_rng(parts.generator), "reader": parts.batches.state_dict()})
    if io is None:
        return None
    rank_state = {"rng": [g["rng"] for g in gathered], "reader": [g["reader"] for g in gathered]}
    path = ckpt.save_checkpoint(checkpoint_state(parts, io, state, rank_state, dist), ckpt.step_path(io.run_dir, state.step))
    ckpt.prune_checkpoints(io.run_dir, keep)
    plot_loss_curve(io.metrics.read(), io.run_dir / "loss.png")
    return path


def maybe_checkpoint(parts: TrainParts, io: RunIO | None, config: TrainConfig, state: TrainState,
                     dist: Distributed, final: bool = False) -> bool:
    """Every `checkpoint_every` steps (collective); True when this step was saved."""
    if not due(state.step, config.checkpoint_every, final):
        return False
    save_now(parts, io, state, dist, config.keep)
    return True


def maybe_sample(parts: TrainParts, io: RunIO | None, config: TrainConfig, state: TrainState,
                 final: bool = False) -> Path | None:
    """Every `sample_every` steps (and at the end) on rank 0: a grid from the EMA weights, drawn
    from the quality score's samples when one was scored at this step (the same sampler settings;
    sampling is most of both costs)."""
    if io is None or io.write_samples is None or not due(state.step, config.sample_every, final):
        return None
    model = parts.ema.module if parts.ema is not None else parts.model
    scored = io.last_score[1] if io.last_score is not None and io.last_score[0] == state.step else None
    path = io.write_samples(model, state.step, scored)
    if path is not None and io.progress is not None:
        io.progress.message(f"step {state.step}: samples {path}")
    return path


def resume_from(checkpoint: dict[str, Any], parts: TrainParts, state: TrainState, dist: Distributed) -> str | None:
    """Load weights, optimizer, EMA, scaler, counters and this rank's RNG/reader position.

    Returns a warning when the world size changed (then data order and noise restart)."""
    parts.model.load_state_dict(checkpoint["model"])
    parts.optimizer.load_state_dict(checkpoint["optimizer"])
    if parts.ema is not None and checkpoint.get("ema"):
        parts.ema.load_state_dict(checkpoint["ema"])
    if checkpoint.get("scaler"):
        parts.scaler.load_state_dict(checkpoint["scaler"])
    state.step, state.images_seen = int(checkpoint["step"]), int(checkpoint["images_seen"])
    state.best_val_loss = float(checkpoint.get("best_val_loss", math.inf))
    if checkpoint.get("best_quality_rule") == QUALITY_RULE:  # an older rule's score does not compare
        state.best_quality = float(checkpoint.get("best_quality", math.inf))
    if checkpoint.get("world_size", 1) != dist.world_size:
        parts.generator.manual_seed(parts.generator.initial_seed() + 7919 * state.step)  # fresh noise, not a replay
        return (f"checkpoint was written by {checkpoint.get('world_size')} processes, now "
                f"{dist.world_size}: weights, optimizer and step continue; data order and noise restart")
    restore_rng(checkpoint["rng"][dist.rank], parts.generator)
    parts.batches.load_state_dict(checkpoint["reader"][dist.rank])
    return None


QUALITY_END_COST = 0.1  # an end-of-run quality score off the --quality-every schedule may cost this share of the steps since the last


def end_score_share(parts: TrainParts, config: TrainConfig, state: TrainState, dist: Distributed) -> float:
    """Network evaluations of one quality score over those of the training steps since the last
    scheduled score (a training step costs about three per image: the forward pass and the backward)."""
    images = config.quality_samples * parts.model.unet_config.num_classes
    score = config.sampling_evaluations(images, parts.model.diffusion_config.num_timesteps)
    steps = state.step % config.quality_every
    return score / max(1, 3 * steps * (config.batch_size or 1) * config.grad_accum * dist.world_size)


def finish(parts: TrainParts, io: RunIO | None, config: TrainConfig, state: TrainState,
           dist: Distributed) -> dict[str, Any] | None:
    """At the end of a completed run: the last metrics line, validation and samples, unless the
    final step already produced them; a quality score off the schedule only where it costs at most
    QUALITY_END_COST of the steps since the last one. Returns the last metrics record, if one was due."""
    record = maybe_log(parts, io, config, state, final=True)
    if state.step % config.val_every:
        maybe_validate(parts, io, config, state, dist, final=True)
    if config.quality_every and state.step % config.quality_every:
        share = end_score_share(parts, config, state, dist)
        if share <= QUALITY_END_COST:
            maybe_score(parts, io, config, state, dist, final=True)
        elif io is not None and io.score_quality is not None:
            print(f"note: no quality score at the end (step {state.step}): it would cost {share:.0%} of the "
                  f"{state.step % config.quality_every} steps since the last scheduled one (at most "
                  f"{QUALITY_END_COST:.0%}); --quality-every {state.step} scores this run, ddpm-eval measures any "
                  "checkpoint", flush=True)
    if config.sample_every == 0 or state.step % config.sample_every:
        maybe_sample(parts, io, config, state, final=True)
    return record


def diverged_message(loss: float, step: int, io: RunIO | None) -> str:
    """What diverged, the last good checkpoint, and how to go on: --resume only when one exists."""
    previous = ckpt.latest_checkpoint(io.run_dir) if io is not None else None
    fixes = "a lower --lr, a smaller --grad-clip, or --precision fp32"
    if previous is None:
        return (f"loss or gradient became {loss} at step {step}; stopped before the first checkpoint, "
                f"nothing to resume. Try {fixes}, then run the command again (without --resume)")
    return (f"loss or gradient became {loss} at step {step}; stopped without saving. "
            f"Last good checkpoint: {previous}. Try {fixes}, then --resume")


def train(parts: TrainParts, io: RunIO | None, config: TrainConfig, total_steps: int,
          dist: Distributed, state: TrainState | None = None) -> TrainResult:
    """Run optimizer steps until `total_steps`, a stop signal, or a non-finite loss.

    `io` is None on ranks other than 0. Always ends with a checkpoint (except on divergence,
    which raises TrainingDiverged and keeps the previous checkpoint as the last good one).
    """
    state = state or TrainState()
    started, first_step, final_loss, status = time.perf_counter(), state.step, math.nan, "finished"
    saved_step = state.step if state.step > 0 else -1  # a resumed run's checkpoint exists already
    state.settled_step = state.step
    tally = StepTally(next(parts.model.parameters()).device, state.step)
    with StopRequest() as stop:
        while state.step < total_steps:
            train_step(parts, config, state, dist, tally)
            if io is not None and io.progress is not None:
                io.progress.update(state.step)
            if not needs_settling(config, state, dist, stop, total_steps):
                continue
            stop_any = settle(tally, state, dist, stop, io)
            record = maybe_log(parts, io, config, state)
            final_loss = record["loss"] if record else state.last_loss
            maybe_validate(parts, io, config, state, dist)
            maybe_score(parts, io, config, state, dist)
            if maybe_checkpoint(parts, io, config, state, dist):
                saved_step = state.step
            maybe_sample(parts, io, config, state)
            if stop_any:
                status = "interrupted"
                break
        if status == "finished" and state.step > first_step:
            record = finish(parts, io, config, state, dist)
            final_loss = record["loss"] if record else final_loss
        if saved_step != state.step:
            save_now(parts, io, state, dist, config.keep)
    last_path = None
    if io is not None:
        plot_loss_curve(io.metrics.read(), io.run_dir / "loss.png")
        last_path = ckpt.latest_checkpoint(io.run_dir)
    return TrainResult(status, state.step, state.images_seen, final_loss, state.best_val_loss,
                       last_path, time.perf_counter() - started,
                       stop.signal_name if status == "interrupted" else None)
