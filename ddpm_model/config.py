"""The options of `ddpm-train` (besides the architecture) and of `ddpm-sample`.

Standard library only, so `cli.py` takes its option defaults from here without importing torch
(`--help` stays instant). Each field is one `ddpm-train` option of the same name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .choices import Sampler

if TYPE_CHECKING:  # the data side's configs; imported for real where a run is assembled
    from ddpm_data.config import AugmentConfig
    from ddpm_data.stream import ReaderConfig


class Precision(str, Enum):
    """Autocast dtype for the forward pass; AUTO = bf16 on CUDA, fp32 elsewhere."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"  # for GPUs without bf16 (V100, T4); uses a GradScaler


MAX_GUIDANCE = 100.0  # far above any useful scale (1-10); beyond it float32 predictions overflow to inf/NaN


def check_guidance(value: float, flag: str) -> None:
    """ValueError naming `flag` for a classifier-free guidance scale above MAX_GUIDANCE."""
    if value > MAX_GUIDANCE:
        raise ValueError(f"{flag} {value:g}: above {MAX_GUIDANCE:g}, the guided prediction is the class term times "
                         f"a huge number and overflows; use a scale such as 1 to 10 (2 is the default)")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, duration and interval options of `ddpm-train` (one field per CLI option)."""

    batch_size: int | None = None       # images per rank per micro-batch; None = the preset's (8 at 40 px ... 2 at 256)
    grad_accum: int = 1                 # micro-batches per optimizer step
    lr: float | None = None             # AdamW peak learning rate; None = the preset's (1e-3 tiny, 1e-4 others)
    weight_decay: float = 0.0           # AdamW decoupled weight decay
    warmup_steps: int = 50              # linear LR warm-up from 0, in optimizer steps
    grad_clip: float = 1.0              # max global gradient L2 norm; 0 disables clipping
    # EMA of the weights used for samples and best.pt: ~1000 steps, a few % to a third of a run on
    # a few hundred images (Karras et al. 2024 find the best length a few % to ~15% of training)
    ema_decay: float = 0.999
    epochs: float | None = None         # duration in passes over the balanced train stream
    max_steps: int | None = None        # duration in optimizer steps (overrides epochs)
    max_images: int | None = None       # duration in images seen, all ranks (overrides epochs)
    log_every: int = 50                 # steps between metrics lines
    val_every: int = 500                # steps between validation losses
    checkpoint_every: int = 1000        # steps between checkpoints
    sample_every: int = 2000            # steps between sample grids; 0 = only at the end
    samples_per_class: int = 8          # images per class row of a sample grid
    sample_sampler: Sampler = Sampler.DPMPP_2M  # the grids' and quality scores' sampler, as ddpm-sample's default
    sample_steps: int = 25              # its steps, as ddpm-sample's default
    sample_guidance: float = 2.0        # classifier-free guidance scale for the grids and quality scores
    sample_eta: float = 0.0             # DDIM eta (with --sample-sampler ddim), as ddpm-sample's default
    val_images: int = 256               # at most this many validation images (fixed t, noise)
    quality_every: int = 1000           # steps between sample-quality scores (SWD to val); 0 = off
    quality_samples: int = 16           # images per class drawn (fixed seed) for each score
    quality_classifier: bool = True     # divide each class's score by its accuracy under ddpm-eval's classifier
    keep: int = 3                       # step checkpoints kept (best.pt is extra)
    seed: int = 0                       # model init, data order, noise; rank r adds r
    precision: Precision = Precision.AUTO
    compile: bool = False               # torch.compile the U-Net (CUDA; slow first steps)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower steps

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"--batch-size: {self.batch_size} must be >= 1")
        positive = ("grad_accum", "log_every", "val_every", "checkpoint_every",
                    "samples_per_class", "sample_steps", "keep")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: {getattr(self, name)} must be >= 1")
        for name in ("epochs", "max_steps", "max_images"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name.replace('_', '-')}: {value} must be > 0")
        if self.quality_every < 0 or self.quality_samples < 2:
            raise ValueError("--quality-every must be >= 0 (0 = off) and --quality-samples >= 2")
        if (self.lr is not None and self.lr <= 0) or self.warmup_steps < 0 or self.grad_clip < 0 or self.sample_every < 0:
            raise ValueError("--lr must be > 0; --warmup-steps, --grad-clip, --sample-every >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"--ema-decay: {self.ema_decay} must be in [0, 1)")
        for name in ("weight_decay", "sample_guidance", "sample_eta"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')}: {getattr(self, name)} must be >= 0")
        check_guidance(self.sample_guidance, "--sample-guidance")
        object.__setattr__(self, "sample_sampler", Sampler(self.sample_sampler))
        if self.sample_sampler is Sampler.DPMPP_2M and self.sample_eta != 0:
            raise ValueError(f"--sample-eta {self.sample_eta}: the dpmpp-2m sampler is deterministic; pass "
                             "--sample-eta 0 or --sample-sampler ddim")

    def sampling_evaluations(self, images: int, num_timesteps: int) -> int:
        """Network evaluations (one image each) to draw `images` with the grids' sampler settings."""
        steps = num_timesteps if self.sample_sampler is Sampler.DDPM else self.sample_steps
        return images * steps * (1 if self.sample_guidance == 1 else 2)  # guidance adds the unconditional pass

    def total_steps(self, steps_per_epoch: float, images_per_step: int) -> int:
        """Optimizer steps for the chosen duration: max_steps, else max_images, else epochs."""
        if self.max_steps is not None:
            return self.max_steps
        if self.max_images is not None:
            return max(1, math.ceil(self.max_images / images_per_step))
        epochs = 100.0 if self.epochs is None else self.epochs
        return max(1, math.ceil(epochs * steps_per_epoch))

    def lr_at(self, step: int) -> float:
        """Linear warm-up over `warmup_steps`, then constant (DDPM, Ho et al. 2020, appendix B)."""
        if self.warmup_steps == 0:
            return self.lr
        return self.lr * min(1.0, (step + 1) / self.warmup_steps)


@dataclass(frozen=True)
class ModelOptions:
    """The architecture as given on the command line: a preset and the fields that override it.

    `overrides` holds only the options the user typed (UNetConfig / DiffusionConfig field names,
    e.g. {"model_channels": 96}); everything else comes from the preset, so the resolved
    architecture is declared once, in `ddpm_model.presets`.
    """

    preset: str | None = None                    # a PRESETS name; None = the one for the shards' size
    overrides: dict[str, Any] = field(default_factory=dict)
    aug_conditioning: bool = True                # feed augmentation parameters to the model (non-leaking augmentation)
    data_normalization: bool = False             # run the chain on zero-mean data of std 0.5 (DiffusionConfig.data_mean); measured worse with v-prediction, docs/benchmarks.md


@dataclass(frozen=True)
class RunConfig:
    """Everything `ddpm-train` takes; written to the run folder's config.json as resolved.

    `reader` and `augment` are ddpm_data's ReaderConfig and AugmentConfig (None = their defaults);
    `given` names the fields the user typed on the command line, which decides what `--resume`
    compares with the saved run (see ddpm_model.runfolder).
    """

    shards: Path | str | None = None             # shard folder or URL (s3://, https://, pipe:); None = shards/<img_size>, or the saved one on --resume
    img_size: int | None = None                  # pixels; must match the shards' size (picks shards/<img_size>)
    out: Path | None = None                      # run folder; None = runs/<shards name>-<time>
    resume: bool = False
    allow_new_data: bool = False                 # --resume on shards that changed since the run started (same classes)
    overwrite: bool = False
    dry_run: bool = False
    device: str = "auto"                         # "auto" = cuda:LOCAL_RANK if available, else cpu
    progress: bool = True
    model: ModelOptions = field(default_factory=ModelOptions)
    reader: ReaderConfig | None = None
    augment: AugmentConfig | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    given: tuple[str, ...] = ()                  # field names typed on the command line


@dataclass(frozen=True)
class SampleConfig:
    """Options of `ddpm-sample`, one field per CLI option."""

    checkpoint: Path                     # a checkpoint file, or a run folder (its latest checkpoint)
    out: Path                            # writes OUT/<class>/NNNN.png
    classes: tuple[str, ...] = ()        # class names; empty = every class of the checkpoint
    n: int = 64                          # images per class
    sampler: Sampler = Sampler.DPMPP_2M  # second order: half DDIM-50's evaluations, closer to the data (docs/benchmarks.md)
    steps: int = 25                      # DPM-Solver++ / DDIM steps (DDPM always uses all num_timesteps)
    eta: float = 0.0                     # DDIM stochasticity; 0 = deterministic (measured best with v-prediction)
    guidance: float = 2.0                # classifier-free guidance scale; 1 = conditional only
    seed: int = 0
    batch_size: int = 16                 # images per forward pass
    ema: bool = True                     # EMA weights (False: the raw training weights)
    device: str = "auto"                 # "auto" = cuda if available, else cpu
    overwrite: bool = False              # replace images already in OUT/<class>/

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"--n: {self.n} must be >= 1")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size: {self.batch_size} must be >= 1")
        if self.steps < 1:
            raise ValueError(f"--steps: {self.steps} must be >= 1")
        for name in ("eta", "guidance"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name}: {getattr(self, name)} must be >= 0")
        check_guidance(self.guidance, "--guidance")
        object.__setattr__(self, "sampler", Sampler(self.sampler))
        if self.sampler is Sampler.DPMPP_2M and self.eta != 0:
            raise ValueError(f"--eta {self.eta}: the dpmpp-2m sampler is deterministic; pass --eta 0 or --sampler ddim")
