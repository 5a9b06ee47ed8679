"""Sample quality of `ddpm-train`'s default recipe against diffusers' example recipe and against
two other libraries' U-Nets trained our way (diffusers', MONAI's), at a fixed budget of training
images, scored by `ddpm-eval` against the same shards.

    python bench/quality.py                                   # 16,000 images at 32 px, CPU
    python bench/quality.py --images 8000 --ours-args "--lr 1e-3 --warmup-steps 50" \\
        --sample-args "--eta 1" --no-baseline                 # screen a recipe (our side only)
    python bench/quality.py --prototype min-snr --ours-args "--lr 1e-3"   # a code change, prototyped
    python bench/quality.py --device cuda --images 64000
    python bench/quality.py --no-baseline --samplers ddim:50,dpmpp-2m:25,dpmpp-2m:15   # samplers on our run
    python bench/quality.py --twins monai --no-example-recipe   # ours against the MONAI twin alone

Every side trains on the same batches: our reader (same images, batch size, class balance and
order) and our Augmenter, with one generator drawn in the same order as `DDPM.loss` draws it, so
augmentation, timesteps, noise and label dropout are identical; only the model and the recipe
differ.

- ours: `ddpm-train` with only the budget, the batch size and the seed (the project's default
  recipe) plus `--ours-args`; checkpoints at `--checkpoints` points of the budget, each sampled
  with `ddpm-sample` (defaults plus `--sample-args`) and scored, so the last line carries the
  convergence curve. `--prototype min-snr` trains our model in a small loop here instead (the
  trainer's own `train()` with min-SNR-gamma loss weights, Hang et al. 2023, arXiv 2303.09556).
- baselines ("twins"): another library's U-Net built from our model's configuration in its layout
  (stage channels, blocks per stage, attention stages, GroupNorm groups, head size; parameter
  count within 15% of ours, checked and printed), with a class embedding plus a null class and
  label dropout 0.1 (classifier-free guidance), called through a `Twin` adapter as ours is,
  twin(x, t, labels) -> prediction, so one training loop and one sampler serve them all.
  `--twins` picks the tuned twins (default both):
  - diffusers: `UNet2DModel`, with our scale-shift conditioning; trained twice, with the
    example recipe and tuned.
  - monai: MONAI's `DiffusionModelUNet` (2-D); tuned only. MONAI has no scale-shift
    conditioning (its residual blocks add the embedding), so it has a few % fewer parameters
    than ours (6.7% at the default 32 px, 2.5-4.5% at the 40-128 px presets).
  "example recipe": as diffusers' examples/unconditional_image_generation/
  train_unconditional.py does: epsilon MSE on `DDPMScheduler`'s linear schedule, AdamW (betas
  0.95/0.999, weight decay 1e-6, eps 1e-8), lr 1e-4 with 500 warm-up steps then cosine, gradient
  clip 1, `EMAModel` (max 0.9999, warm-up power 3/4). "tuned" (each twin): trained the way ours is
  (`tuned_recipe`): v-prediction on the cosine schedule, AdamW with our learning rate, warm-up,
  weight decay and clip, a constant rate after the warm-up, our EMA; the learning rate swept over
  `--tuned-lr-factors` times ours, the run with the lowest SWD kept, per twin (picked on the
  evaluation itself, which favours the baseline). All sampled with diffusers' scheduler for our
  `ddpm-sample` default sampler (`DDIMScheduler` for ddim, eta `--baseline-eta`, diffusers' default
  0; `DPMSolverMultistepScheduler`, DPM-Solver++ 2M, for dpmpp-2m), its steps and guidance.
- samplers (`--samplers`): our last checkpoint sampled once per `sampler:steps`, each scored and
  timed; the first is the named baseline the others are compared with (network evaluations per
  image and excess SWD over the floor, as ratios).

Everything lands in `--work` (default runs/bench-quality): sample data, shards, runs, samples and
evaluations, each reused when its settings match (`--no-reuse` redoes them). The table has a
column per side ("example recipe", "tuned" for the diffusers twin, "monai tuned"). The last line is
JSON: per side the headline metrics (`baseline`, `baseline_tuned`, `baseline_monai`; null when
not run), mean colour per channel against the data's, our SWD per checkpoint, each tuned twin's
sweep; against each baseline separately (`ratios`, by side) and against the better of all
(lower SWD; `against`, `ratio`, `frechet_ratio`): `ratio` = (baseline swd - floor) / (ours swd -
floor) and `frechet_ratio` = baseline / ours classifier Fréchet distance. Deterministic for a
seed on a given device. diffusers, MONAI and einops (MONAI's attention) are benchmark-only
dependencies (`pip install -e '.[bench]'`); the bench stops naming that when one it needs is missing.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METRICS = ("swd", "frechet_classifier_distance", "class_accuracy", "spectrum_hf_ratio", "copies",
           "nn_ratio")
PROTOTYPES = ("min-snr",)
SAMPLE_BATCH = 16  # images per forward pass, as ddpm-sample's default


@dataclass(frozen=True)
class QualityConfig:
    work: Path = ROOT / "runs" / "bench-quality"  # data, shards, runs, samples, evaluations
    images: int = 16_000              # training budget in images, both sides
    size: int = 32                    # px; the shards are built at this size
    batch_size: int = 16              # images per step, both sides
    seed: int = 0
    device: str = "cpu"
    checkpoints: int = 4              # points of our run that are sampled and scored (the curve)
    n: int = 64                       # samples per class at the end of each run
    n_curve: int = 32                 # samples per class at our intermediate checkpoints
    ours_args: tuple[str, ...] = ()   # extra ddpm-train flags (a recipe to screen)
    sample_args: tuple[str, ...] = ()  # extra ddpm-sample flags for our side
    baseline: bool = True             # False: our side only (screening)
    example_recipe: bool = True       # False: no "example recipe" row (the tuned row alone)
    baseline_eta: float = 0.0         # DDIM eta of the baseline (DDIMPipeline's default)
    tuned_lr_factors: tuple[float, ...] = (0.5, 1.0, 2.0)  # each tuned twin's lr sweep, times ours; () = no tuned rows
    twins: tuple[str, ...] = field(default_factory=lambda: tuple(TWINS))  # tuned twins to train: diffusers, monai
    samplers: tuple[tuple[str, int], ...] = ()  # (sampler, steps) for our last checkpoint; the first is the reference
    prototype: str | None = None      # a code change tried in this script ("min-snr")
    min_snr_gamma: float = 5.0        # gamma of min-SNR-gamma weighting (Hang et al. 2023: 5)
    threads: int = 2                  # torch threads, here and in the subprocesses
    classifier_epochs: int = 30       # ddpm-eval's classifier (cached next to the shards)
    reuse: bool = True                # reuse runs, samples and evaluations with the same settings

    def total_steps(self) -> int:
        return math.ceil(self.images / self.batch_size)


# ---------------------------------------------------------------- pure helpers


def checkpoint_every(total_steps: int, points: int) -> int:
    """Steps between checkpoints so that a run of `total_steps` saves at `points` evenly spaced
    steps (the last one being the end of the run, which the trainer always saves)."""
    if points < 1 or total_steps < 1:
        raise ValueError(f"--checkpoints {points}, total steps {total_steps}: both must be >= 1")
    return max(1, total_steps // points)


def curve_points(checkpoints: Sequence[Path], total_steps: int, points: int) -> list[Path]:
    """The `step-XXXXXXXX.pt` files at `points` evenly spaced steps (a reused run may hold more)."""
    every = checkpoint_every(total_steps, points)
    steps = [(int(path.stem.split("-")[1]), path) for path in checkpoints]
    return [path for step, path in steps if step % every == 0 or step == total_steps]


def class_mean_colour(images: np.ndarray, labels: np.ndarray) -> list[float]:
    """Mean of each channel in [0, 1], unweighted over classes (as ddpm-eval averages), for
    images uint8 (N, C, H, W) with labels (N,)."""
    if images.ndim != 4 or len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"images {images.shape}, labels {np.shape(labels)}: need (N, C, H, W) and (N,), N > 0")
    per_class = [images[labels == label].astype(np.float64).mean(axis=(0, 2, 3)) / 255.0
                 for label in np.unique(labels)]
    return [round(float(v), 4) for v in np.mean(per_class, axis=0)]


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The bench's figures from one `ddpm-eval --json` result."""
    out = {key: result.get(key) for key in METRICS}
    out["swd_floor"] = result["reference"]["val_vs_train"]["swd"]
    out["fcd_floor"] = result["reference"]["val_vs_train"]["frechet_classifier_distance"]
    out["swd_levels"] = result.get("swd_levels")
    return out


def excess_ratio(baseline: float, ours: float, floor: float) -> float:
    """(baseline - floor) / (ours - floor): how many times further from real the baseline is."""
    return (baseline - floor) / max(ours - floor, 1e-9)


def best_run(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run with the lowest SWD (the tuned baseline's pick from its learning-rate sweep)."""
    if not runs:
        raise ValueError("best_run: no runs to choose from")
    return min(runs, key=lambda run: run["swd"])


def parse_samplers(text: str) -> tuple[tuple[str, int], ...]:
    """`--samplers` "ddim:50,dpmpp-2m:25" -> (("ddim", 50), ("dpmpp-2m", 25))."""
    from ddpm_model.choices import Sampler

    valid = [kind.value for kind in Sampler if kind is not Sampler.DDPM]
    specs = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        name, _, steps = item.partition(":")
        if name not in valid or not steps.isdigit() or int(steps) < 1:
            raise ValueError(f"--samplers {text!r}: {item!r} is not sampler:steps with sampler one of "
                             f"{', '.join(valid)} and steps >= 1, e.g. ddim:50,dpmpp-2m:25")
        specs.append((name, int(steps)))
    return tuple(specs)


def compare_samplers(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each sampler row against the first: `nfe_ratio` (its network evaluations per image over
    the first's) and `excess_ratio` ((first's SWD - floor) / (its SWD - floor); > 1 is closer)."""
    if not rows:
        return []
    first = rows[0]
    return [{**row, "nfe_ratio": round(row["nfe"] / first["nfe"], 3),
             "excess_ratio": round(excess_ratio(first["swd"], row["swd"], row["swd_floor"]), 3)} for row in rows]


def ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float]:
    """Ours against one baseline: the excess-SWD ratio over the floor and the Fréchet ratio
    (baseline / ours; both goals are >= 2)."""
    return {"ratio": round(excess_ratio(theirs["swd"], ours["swd"], ours["swd_floor"]), 3),
            "frechet_ratio": round(theirs["frechet_classifier_distance"] / max(ours["frechet_classifier_distance"], 1e-9), 3)}


def compare(ours: dict[str, Any], baselines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ours against the better baseline (lower SWD) of all of them: its name and `ratios`."""
    against = min(baselines, key=lambda name: baselines[name]["swd"])
    return {"against": against, **ratios(ours, baselines[against])}


def compare_each(ours: dict[str, Any], baselines: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Ours against each baseline separately: {name: `ratios`}."""
    return {name: ratios(ours, theirs) for name, theirs in baselines.items()}


def parse_twins(text: str) -> tuple[str, ...]:
    """`--twins` "diffusers,monai" -> ("diffusers", "monai"): the tuned twins to train, in order."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in TWINS]
    if unknown or not names:
        raise ValueError(f"--twins {text!r}: give one or more of {', '.join(TWINS)}, comma-separated, e.g. "
                         f"{','.join(TWINS)} (--tuned-lr-factors '' leaves every tuned twin out)")
    return names


def missing_libraries(config: QualityConfig) -> str | None:
    """The line to stop on when a library the asked-for baselines need is not installed, else None."""
    needed = {"diffusers": "the baselines"} if config.baseline else {}
    if config.baseline and config.tuned_lr_factors:
        for name in config.twins:
            for module in TWINS[name].requires:
                needed.setdefault(module, f"--twins {name}")
    missing = [module for module in needed if importlib.util.find_spec(module) is None]
    if not missing:
        return None
    users = ", ".join(dict.fromkeys(needed[module] for module in missing))
    return f"{' and '.join(missing)} not installed (needed by {users}): pip install -e '.[bench]'"


def settings_key(*parts: Any) -> str:
    """A short stable hash of JSON-able settings, naming a cached run/sample/eval folder."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def min_snr_weight(alpha_bar: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    """Per-sample loss weight of min-SNR-gamma (Hang et al. 2023, arXiv 2303.09556, eq. 8 and
    its v form): min(SNR, gamma) / SNR for an eps target, min(SNR, gamma) / (SNR + 1) for v,
    SNR = alpha_bar / (1 - alpha_bar)."""
    snr = alpha_bar / (1 - alpha_bar)
    clipped = snr.clamp(max=gamma)
    return clipped / snr if prediction == "eps" else clipped / (snr + 1)


# ---------------------------------------------------------------- running the CLI


def cli(app: str, *args: str) -> list[str]:
    """argv running this checkout's `ddpm-<app>` (cli.<app>_app) with this interpreter."""
    return [sys.executable, "-c", f"import cli; cli.{app}_app()", *args]


def run(argv: list[str], threads: int, log: Path | None = None) -> str:
    """Run a CLI command; its stdout (stderr goes to `log` or is shown on failure)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    if log is not None:
        log.write_text(done.stdout + done.stderr)
    if done.returncode:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"failed ({done.returncode}): {shlex.join(argv[3:])}\n{tail}")
    return done.stdout


def prepare_data(config: QualityConfig) -> Path:
    """The bundled sample data (`ddpm-data synth`) built at `size` px, reused if present."""
    data, shards = config.work / "data", config.work / "shards" / str(config.size)
    if not (data / "normal").is_dir():
        run(cli("data", "synth", str(data), "--overwrite"), config.threads)
    if not (shards / "manifest.json").is_file():
        run(cli("data", "build", "--src", str(data), "--size", str(config.size), "--out", str(shards),
                "--overwrite"), config.threads)
    return shards


def data_colour(shards: Path, size: int) -> list[float]:
    """Mean colour of the real train split, centre-cropped as evaluation crops it."""
    from ddpm_data.augment import center_crop
    from ddpm_data.stream import load_split

    images, labels = load_split(shards, "train")
    crops = ((center_crop(images, size) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return class_mean_colour(crops.numpy(), labels.numpy())


def folder_colour(samples: Path, classes: Sequence[str]) -> list[float]:
    from PIL import Image

    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((samples / name).glob("*.png")):
            images.append(np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1))
            labels.append(label)
    return class_mean_colour(np.stack(images), np.array(labels))


def evaluate(config: QualityConfig, shards: Path, samples: Path) -> dict[str, Any]:
    """`ddpm-eval --json` of a sample folder (cached as samples/eval.json)."""
    cached = samples / "eval.json"
    if config.reuse and cached.is_file():
        return json.loads(cached.read_text())
    out = run(cli("eval", "--real", str(shards), "--samples", str(samples), "--json",
                  "--device", config.device, "--classifier-epochs", str(config.classifier_epochs)),
              config.threads)
    result = json.loads(out)
    cached.write_text(json.dumps(result))
    return result


def score(config: QualityConfig, shards: Path, samples: Path, classes: Sequence[str]) -> dict[str, Any]:
    figures = headline(evaluate(config, shards, samples))
    figures["mean_colour"] = folder_colour(samples, classes)
    return figures


# ---------------------------------------------------------------- our side


def resolved_plan(config: QualityConfig, shards: Path, train_args: list[str]) -> dict[str, Any]:
    """`ddpm-train --dry-run`'s resolved configuration for these flags."""
    out = run(cli("train", "--shards", str(shards), "--dry-run", *train_args),
              config.threads)
    text = out[: out.rindex("\nparameters:")] if "\nparameters:" in out else out
    return json.loads(text)


def resolved_run(plan: dict[str, Any]) -> Any:
    """The RunConfig of a `--dry-run` document."""
    from ddpm_model.runfolder import run_config_from

    return run_config_from(plan, Path("ddpm-train --dry-run"))


def train_args(config: QualityConfig) -> list[str]:
    """The flags of our run: budget, batch size, seed (the recipe), then intervals and extras."""
    every = checkpoint_every(config.total_steps(), config.checkpoints)
    return ["--max-images", str(config.images), "--batch-size", str(config.batch_size),
            "--seed", str(config.seed),
            # bookkeeping, not recipe: checkpoints for the curve, no grids before the end
            "--checkpoint-every", str(every), "--keep", str(config.checkpoints + 2),
            "--sample-every", "0", "--device", config.device, *config.ours_args]


def train_ours(config: QualityConfig, shards: Path) -> tuple[Path, dict[str, Any], float | None]:
    """(run folder, resolved plan, seconds or None when reused)."""
    args = train_args(config)
    key = settings_key(config.images, config.size, config.batch_size, config.seed, config.device,
                       config.ours_args, config.prototype, config.min_snr_gamma)
    name = f"ours-{config.prototype}" if config.prototype else "ours"
    run_dir = config.work / "runs" / f"{name}-{config.images}-{key}"
    plan = resolved_plan(config, shards, args)
    summary = run_dir / "summary.json"
    if config.reuse and summary.is_file() and json.loads(summary.read_text()).get("status") == "finished":
        return run_dir, plan, None
    started = time.perf_counter()
    if config.prototype:
        train_prototype(config, shards, plan, run_dir)
    else:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        run(cli("train", "--shards", str(shards), "--out", str(run_dir), "--overwrite",
                "--no-progress", *args), config.threads, log=run_dir.with_suffix(".log"))
    (run_dir / "bench.json").write_text(json.dumps({"train_args": args, "prototype": config.prototype,
                                                    "min_snr_gamma": config.min_snr_gamma}, indent=2))
    return run_dir, plan, time.perf_counter() - started


class MinSnrLoss(nn.Module):
    """`DDPM.loss` with min-SNR-gamma per-sample weights; draws t, noise and label dropout from
    the generator in DDPM.loss's order, so it sees the same batches as ddpm-train."""

    def __init__(self, ddpm: nn.Module, gamma: float):
        super().__init__()
        self.ddpm, self.gamma = ddpm, gamma

    def forward(self, images, labels, aug_params, generator):
        model, n = self.ddpm, images.shape[0]
        source = generator.device
        diffusion = model.diffusion_config
        t = torch.randint(0, diffusion.num_timesteps, (n,), generator=generator, device=source).to(images.device)
        noise = torch.randn(tuple(images.shape), generator=generator, device=source).to(images.device, images.dtype)
        if diffusion.class_dropout > 0:
            dropped = torch.rand((n,), generator=generator, device=source).to(images.device) < diffusion.class_dropout
            labels = torch.where(dropped, torch.full_like(labels, model.null_class), labels)
        x0 = model.to_model_space(images)
        x_t = model.schedule.q_sample(x0, t, noise)
        target = noise if diffusion.prediction == "eps" else model.schedule.v_target(x0, t, noise)
        error = (model.unet(x_t, t, labels, aug_params).float() - target.float()).pow(2).mean(dim=(1, 2, 3))
        weight = min_snr_weight(model.schedule.alphas_cumprod[t], self.gamma, diffusion.prediction)
        return (weight * error).mean()


def train_prototype(config: QualityConfig, shards: Path, plan: dict[str, Any], run_dir: Path) -> None:
    """PROTOTYPE: our model and the trainer's own loop (`ddpm_model.train.train`), configured by
    the resolved plan of the same flags, with the loss replaced (min-SNR-gamma)."""
    import shutil

    from ddpm_data.augment import Augmenter
    from ddpm_data.stream import open_reader
    from ddpm_model.diffusion import DDPM
    from ddpm_model.ema import EMA
    from ddpm_model.train import Distributed, RunIO, TrainParts, train

    if config.prototype not in PROTOTYPES:
        raise SystemExit(f"--prototype {config.prototype!r}: unknown; valid: {', '.join(PROTOTYPES)}")
    resolved = resolved_run(plan)
    cfg, device = resolved.train, torch.device(config.device)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(plan, indent=2, sort_keys=True))
    torch.manual_seed(cfg.seed)
    model = DDPM.from_dict(plan["model"]).to(device)
    reader = open_reader(shards, resolved.reader)
    parts = TrainParts(
        model=model, step_model=MinSnrLoss(model, config.min_snr_gamma), ema=EMA(model, cfg.ema_decay),
        optimizer=torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay),
        scaler=torch.amp.GradScaler(device.type, enabled=False), batches=reader,
        augment=Augmenter(resolved.augment, config.size), generator=torch.Generator(device).manual_seed(cfg.seed),
        val=None, autocast=contextlib.nullcontext, use_aug_params=model.unet_config.aug_dim > 0)
    io = RunIO(run_dir, {"model_config": plan["model"], "classes": plan["classes"], "run_config": plan["run"]})
    result = train(parts, io, cfg, cfg.total_steps(1.0, cfg.batch_size), Distributed())
    (run_dir / "summary.json").write_text(json.dumps({"status": result.status, "step": result.step,
                                                      "images_seen": result.images_seen}))


def sample_defaults() -> dict[str, Any]:
    """ddpm-sample's default sampler, steps, eta and guidance (part of every sample folder's key)."""
    from ddpm_model.config import SampleConfig

    defaults = SampleConfig(checkpoint=Path("."), out=Path("."))
    return {"sampler": defaults.sampler.value, "steps": defaults.steps, "eta": defaults.eta, "guidance": defaults.guidance}


def sample_ours(config: QualityConfig, shards: Path, checkpoint: Path, n: int, classes: Sequence[str],
                extra: Sequence[str] = ()) -> dict[str, Any]:
    """`ddpm-sample` (defaults, `--sample-args`, then `extra`) of a checkpoint, scored; with the
    sampling's wall time in seconds (`sample_seconds`, kept with the samples)."""
    args = [*config.sample_args, *extra]
    key = settings_key(n, args, config.seed, config.device, sample_defaults())
    samples = config.work / "samples" / checkpoint.parents[1].name / f"{checkpoint.stem}-{key}"
    timing = samples / "timing.json"
    if not (config.reuse and (samples / "eval.json").is_file() and timing.is_file()):
        started = time.perf_counter()
        run(cli("sample", "--checkpoint", str(checkpoint), "--out", str(samples), "--n", str(n),
                "--seed", str(config.seed), "--device", config.device, "--overwrite", *args), config.threads)
        timing.write_text(json.dumps({"sample_seconds": round(time.perf_counter() - started, 1)}))
        (samples / "eval.json").unlink(missing_ok=True)
    return {**score(config, shards, samples, classes), **json.loads(timing.read_text())}


def run_samplers(config: QualityConfig, shards: Path, checkpoint: Path, classes: Sequence[str]) -> list[dict[str, Any]]:
    """Our last checkpoint sampled with each `--samplers` entry (n per class), scored and timed;
    compared with the first entry."""
    rows = []
    for sampler, steps in config.samplers:
        figures = sample_ours(config, shards, checkpoint, config.n, classes, ("--sampler", sampler, "--steps", str(steps)))
        rows.append({"sampler": sampler, "steps": steps, "nfe": steps, **figures})
        print(f"  {sampler} {steps} steps: swd {figures['swd']:.3f}, {figures['sample_seconds']:.0f} s", flush=True)
    return compare_samplers(rows)


# ---------------------------------------------------------------- diffusers' recipe

# diffusers' examples/unconditional_image_generation/train_unconditional.py defaults
BASELINE_RECIPE = {"lr": 1e-4, "betas": (0.95, 0.999), "weight_decay": 1e-6, "eps": 1e-8,
                   "lr_schedule": "cosine", "warmup_steps": 500, "grad_clip": 1.0,
                   "ema_max_decay": 0.9999, "ema_inv_gamma": 1.0, "ema_power": 0.75,
                   "num_train_timesteps": 1000, "beta_schedule": "linear", "class_dropout": 0.1}


def tuned_recipe(train: Any, lr_factor: float) -> dict[str, Any]:
    """diffusers' side trained as ours is, from our resolved TrainConfig `train`: v-prediction
    (Salimans & Ho 2022) on the cosine schedule, AdamW with our learning rate times `lr_factor`
    (the sweep), our warm-up then a constant rate, our weight decay and gradient clip, and our EMA
    (decay min(d, (1 + n) / (10 + n)): EMAModel without its power warm-up)."""
    return {**BASELINE_RECIPE, "lr": train.lr * lr_factor, "betas": (0.9, 0.999), "weight_decay": train.weight_decay,
            "lr_schedule": "constant_with_warmup", "warmup_steps": train.warmup_steps, "grad_clip": train.grad_clip,
            "ema_max_decay": train.ema_decay, "ema_warmup": False, "beta_schedule": "squaredcos_cap_v2",
            "prediction_type": "v_prediction"}


def stage_channels(model_config: dict[str, Any]) -> tuple[int, ...]:
    """Channels of each stage of our model: model_channels times its multiplier."""
    return tuple(model_config["model_channels"] * m for m in model_config["channel_multipliers"])


def diffusers_unet(model_config: dict[str, Any]) -> nn.Module:
    """UNet2DModel in our model's layout: same stage channels, blocks per stage, attention
    stages, GroupNorm groups, head size and scale-shift conditioning, plus a null class."""
    from diffusers import UNet2DModel

    channels = stage_channels(model_config)
    attention = model_config["use_attention"]
    return UNet2DModel(
        sample_size=model_config["image_size"], in_channels=model_config["in_channels"],
        out_channels=model_config["in_channels"], block_out_channels=channels,
        layers_per_block=model_config["num_res_blocks"],
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        norm_num_groups=model_config["norm_groups"], attention_head_dim=model_config["attention_head_channels"],
        resnet_time_scale_shift="scale_shift", num_class_embeds=model_config["num_classes"] + 1)


def monai_unet(model_config: dict[str, Any]) -> nn.Module:
    """MONAI's DiffusionModelUNet (2-D) in our model's layout: same stage channels, blocks per
    stage (one more per up stage, as ours), attention stages (and the middle's), GroupNorm groups
    and heads (channels / head size, at least one, as ours), plus a null class. MONAI has no
    scale-shift conditioning: its residual blocks add the embedding, so it has a few % fewer
    parameters than ours."""
    from monai.networks.nets import DiffusionModelUNet

    channels = stage_channels(model_config)
    head = model_config["attention_head_channels"]
    return DiffusionModelUNet(
        spatial_dims=2, in_channels=model_config["in_channels"], out_channels=model_config["in_channels"],
        num_res_blocks=model_config["num_res_blocks"], channels=channels,
        attention_levels=tuple(model_config["use_attention"]), norm_num_groups=model_config["norm_groups"],
        num_head_channels=tuple(min(c, head) for c in channels), num_class_embeds=model_config["num_classes"] + 1)


class Twin(nn.Module):
    """A baseline network called as ours is: prediction = twin(x, t, labels), x (N, C, H, W), t
    (N,) or one timestep for the batch, labels (N,) with num_classes the null class. `net` is the
    library's own module (its state dict is what a run saves)."""

    library = ""    # --twins name
    label = ""      # printed with its parameter count
    side = ""       # its tuned run's name in the table and in `against`
    runs = ""       # folder prefix of its tuned runs
    json_key = ""   # its tuned run's key in the last line
    requires: tuple[str, ...] = ()  # modules it imports (`pip install -e '.[bench]'`)

    def __init__(self, net: nn.Module, model_config: dict[str, Any]):
        super().__init__()
        self.net = net
        self.image_size, self.in_channels = model_config["image_size"], model_config["in_channels"]


class DiffusersTwin(Twin):
    library, label, side, runs, json_key = "diffusers", "diffusers UNet2DModel", "tuned", "baseline-tuned", "baseline_tuned"
    requires = ("diffusers",)

    def __init__(self, model_config: dict[str, Any]):
        super().__init__(diffusers_unet(model_config), model_config)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.net(x, t, class_labels=labels).sample


class MonaiTwin(Twin):
    library, label, side, runs, json_key = "monai", "MONAI DiffusionModelUNet", "monai tuned", "monai-tuned", "baseline_monai"
    requires = ("monai", "einops")  # einops: MONAI's attention blocks

    def __init__(self, model_config: dict[str, Any]):
        super().__init__(monai_unet(model_config), model_config)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        timesteps = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])  # MONAI takes (N,) only
        return self.net(x, timesteps, class_labels=labels)


TWINS: dict[str, type[Twin]] = {twin.library: twin for twin in (DiffusersTwin, MonaiTwin)}


def train_baseline(config: QualityConfig, shards: Path, plan: dict[str, Any], recipe: dict[str, Any],
                   name: str = "baseline", library: str = "diffusers") -> tuple[Twin, Path, float | None]:
    """(the `library`'s twin with the EMA weights, run folder, seconds or None when reused), trained
    with `recipe` (BASELINE_RECIPE's keys; `prediction_type` and `ema_warmup` default to the example's)."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from ddpm_data.augment import Augmenter

    resolved = resolved_run(plan)
    key = settings_key(config.images, config.size, config.batch_size, config.seed, config.device,
                       plan["run"]["reader"], plan["run"]["augment"], recipe)
    run_dir = config.work / "runs" / f"{name}-{config.images}-{key}"
    torch.manual_seed(config.seed)
    net = TWINS[library](plan["model"]["unet"])
    weights = run_dir / "ema.pt"
    if config.reuse and weights.is_file():
        net.net.load_state_dict(torch.load(weights, weights_only=True))
        return net.eval(), run_dir, None
    r = recipe
    device, total = torch.device(config.device), config.total_steps()
    net.to(device).train()
    noise_schedule = noise_scheduler(r)
    optimizer = torch.optim.AdamW(net.parameters(), lr=r["lr"], betas=r["betas"], weight_decay=r["weight_decay"],
                                  eps=r["eps"])
    lr_schedule = get_scheduler(r["lr_schedule"], optimizer, num_warmup_steps=r["warmup_steps"],
                                num_training_steps=total)
    ema = EMAModel(net.parameters(), decay=r["ema_max_decay"], use_ema_warmup=r.get("ema_warmup", True),
                   inv_gamma=r["ema_inv_gamma"], power=r["ema_power"])
    batches = iter(open_batches(shards, resolved.reader))
    augment = Augmenter(resolved.augment, config.size)
    generator = torch.Generator(device).manual_seed(config.seed)  # as ddpm-train seeds rank 0
    null = plan["model"]["unet"]["num_classes"]
    started = time.perf_counter()
    for step in range(total):
        images, labels = next(batches)
        x0, _ = augment(images.to(device), generator)
        labels = labels.to(device)
        # t, noise, label dropout: drawn in DDPM.loss's order, so both sides see the same draws
        n, source = x0.shape[0], generator.device
        t = torch.randint(0, r["num_train_timesteps"], (n,), generator=generator, device=source).to(device)
        noise = torch.randn(tuple(x0.shape), generator=generator, device=source).to(device)
        dropped = torch.rand((n,), generator=generator, device=source).to(device) < r["class_dropout"]
        labels = torch.where(dropped, torch.full_like(labels, null), labels)
        prediction = net(noise_schedule.add_noise(x0, noise, t), t, labels)
        if noise_schedule.config.prediction_type == "v_prediction":
            target = noise_schedule.get_velocity(x0, noise, t)
        else:
            target = noise
        loss = F.mse_loss(prediction.float(), target.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if r["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), r["grad_clip"])
        optimizer.step()
        lr_schedule.step()
        ema.step(net.parameters())
        if (step + 1) % max(1, total // 10) == 0:
            print(f"  {name} step {step + 1}/{total}  loss {loss.item():.4f}  "
                  f"lr {lr_schedule.get_last_lr()[0]:.2e}", flush=True)
    seconds = time.perf_counter() - started
    ema.copy_to(net.parameters())
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save(net.net.state_dict(), weights)  # the library's own keys
    (run_dir / "bench.json").write_text(json.dumps({"recipe": recipe, "steps": total,
                                                    "seconds": seconds}, indent=2))
    return net.eval(), run_dir, seconds


def noise_scheduler(recipe: dict[str, Any]) -> Any:
    """The DDPMScheduler a recipe trains with (and DDIM samples from)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=recipe["num_train_timesteps"], beta_schedule=recipe["beta_schedule"],
                         prediction_type=recipe.get("prediction_type", "epsilon"))


class open_batches:
    """Our reader as an endless iterator (a stream-mode reader is re-entered when exhausted)."""

    def __init__(self, shards: Path, reader_config: Any):
        from ddpm_data.stream import open_reader

        self.reader = open_reader(shards, reader_config)

    def __iter__(self):
        while True:
            yield from self.reader


def baseline_scheduler(recipe: dict[str, Any], sampler: str, steps: int) -> Any:
    """diffusers' scheduler for our sampler, on the recipe's noise schedule, set to `steps`:
    DDIMScheduler for ddim, DPMSolverMultistepScheduler (DPM-Solver++, order 2) for dpmpp-2m.
    Both clip the predicted x_0 to [-1, 1] as ours do (DDIM's clip_sample, on by default; the
    solver's thresholding with sample_max_value 1, which is that clip)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if sampler == "ddim":
        scheduler = DDIMScheduler.from_config(noise_scheduler(recipe).config)
    elif sampler == "dpmpp-2m":
        scheduler = DPMSolverMultistepScheduler.from_config(noise_scheduler(recipe).config, algorithm_type="dpmsolver++",
                                                            solver_order=2, thresholding=True, sample_max_value=1.0)
    else:
        raise ValueError(f"sampler {sampler!r}: the baseline samples with ddim or dpmpp-2m")
    scheduler.set_timesteps(steps)
    return scheduler


@torch.no_grad()
def sample_baseline(config: QualityConfig, shards: Path, net: Twin, run_dir: Path, classes: Sequence[str],
                    sampler: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    """Samples with classifier-free guidance and `sampler` (ddpm-sample's defaults), seeded per
    class as ddpm-sample seeds them."""
    from ddpm_model.sample import save_png, to_uint8

    scheduler = baseline_scheduler(recipe, sampler["sampler"], sampler["steps"])
    key = settings_key(config.n, sampler, dict(scheduler.config), config.baseline_eta, config.seed, config.device)
    samples = config.work / "samples" / run_dir.name / f"ema-{key}"
    timing = samples / "timing.json"
    if config.reuse and (samples / "eval.json").is_file() and timing.is_file():
        return {**score(config, shards, samples, classes), **json.loads(timing.read_text())}
    device = torch.device(config.device)
    net.to(device).eval()
    guidance = sampler["guidance"]
    options = {"eta": config.baseline_eta} if sampler["sampler"] == "ddim" else {}  # DDIM's eta; the solver has none
    started = time.perf_counter()
    size, null = net.image_size, len(classes)
    for label, name in enumerate(classes):
        generator = torch.Generator(device).manual_seed(config.seed * 1_000_003 + label)
        folder = samples / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
        for start in range(0, config.n, SAMPLE_BATCH):
            count = min(SAMPLE_BATCH, config.n - start)
            x = torch.randn((count, net.in_channels, size, size), generator=generator, device=device)
            wanted = torch.full((count,), label, device=device)
            both_labels = torch.cat([wanted, torch.full_like(wanted, null)])
            scheduler.set_timesteps(sampler["steps"])  # a multistep solver keeps state per chain
            for t in scheduler.timesteps:
                cond, uncond = net(torch.cat([x, x]), t, both_labels).chunk(2)
                guided = uncond + guidance * (cond - uncond)  # eps or v: guidance is linear in either
                x = scheduler.step(guided, t, x, generator=generator, **options).prev_sample
            for offset, image in enumerate(to_uint8(x.clamp(-1, 1))):
                save_png(image, folder / f"{start + offset:04d}.png")
    timing.write_text(json.dumps({"sample_seconds": round(time.perf_counter() - started, 1)}))
    (samples / "eval.json").unlink(missing_ok=True)
    return {**score(config, shards, samples, classes), **json.loads(timing.read_text())}


MAX_PARAMETERS_APART = 0.15  # a twin's parameter count may differ from ours by this fraction


def run_baseline(config: QualityConfig, shards: Path, plan: dict[str, Any], recipe: dict[str, Any],
                 name: str, library: str = "diffusers") -> dict[str, Any]:
    """Train (or reuse), check the parameter count against ours, sample and score one baseline run."""
    net, run_dir, seconds = train_baseline(config, shards, plan, recipe, name, library)
    params = sum(p.numel() for p in net.parameters())
    apart = abs(params - plan["parameters"]) / plan["parameters"]
    print(f"{name}: {net.label} {params:,} parameters vs ours {plan['parameters']:,} ({apart:.1%} apart); "
          f"lr {recipe['lr']:.1e}; {'reused ' + run_dir.name if seconds is None else f'trained in {seconds:.0f} s'}",
          flush=True)
    if apart > MAX_PARAMETERS_APART:
        raise SystemExit(f"{name}: configurations are not matched: {net.label}'s parameter count is {apart:.1%} "
                         f"from ours (limit {MAX_PARAMETERS_APART:.0%}); leave it out (--twins, --no-example-recipe)")
    sampler = {key: value for key, value in sample_defaults().items() if key != "eta"}
    figures = sample_baseline(config, shards, net, run_dir, plan["classes"], sampler, recipe)
    return {**figures, "parameters": params, "network": net.label, "recipe": recipe, "train_seconds": seconds,
            "sampler": {**sampler, "eta": config.baseline_eta if sampler["sampler"] == "ddim" else 0.0}}


def run_tuned(config: QualityConfig, shards: Path, plan: dict[str, Any], library: str) -> dict[str, Any]:
    """One twin trained with `tuned_recipe` at each `--tuned-lr-factors`: the run with the lowest
    SWD, with the sweep's figures."""
    train, twin = resolved_run(plan).train, TWINS[library]
    sweep = [run_baseline(config, shards, plan, tuned_recipe(train, factor), f"{twin.runs}-x{factor:g}", library)
             for factor in config.tuned_lr_factors]
    return {**best_run(sweep), "sweep": [
        {"lr": run["recipe"]["lr"], "swd": run["swd"], "frechet_classifier_distance": run["frechet_classifier_distance"]}
        for run in sweep]}


def run_baselines(config: QualityConfig, shards: Path, plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{"example recipe": ..., then per `--twins` its side ("tuned" for diffusers, "monai tuned"):
    the best of its learning-rate sweep}."""
    baselines = {}
    if config.example_recipe:
        baselines["example recipe"] = run_baseline(config, shards, plan, BASELINE_RECIPE, "baseline")
    for library in config.twins if config.tuned_lr_factors else ():
        baselines[TWINS[library].side] = run_tuned(config, shards, plan, library)
    return baselines


# ---------------------------------------------------------------- report


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "(" + ", ".join(f"{v:.2f}" for v in value) + ")"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(ours: dict[str, Any], baselines: dict[str, dict[str, Any]], colour: list[float],
                curve: list[dict[str, Any]]) -> None:
    """Ours beside each baseline, the goals, our SWD along the run and the ratios against each
    baseline and against the better one."""
    rows = [("swd", "swd", "<= 2.5 x floor"), ("swd floor (real val)", "swd_floor", ""),
            ("frechet classifier dist.", "frechet_classifier_distance", "<= baseline / 2"),
            ("class accuracy", "class_accuracy", ">= 0.9"), ("spectrum hf ratio", "spectrum_hf_ratio", "0.8-1.25"),
            ("near-copies", "copies", "0"), ("nn ratio", "nn_ratio", ">= 0.9"),
            ("mean colour (R, G, B)", "mean_colour", f"data {fmt(colour)} +- 0.02"),
            ("parameters", "parameters", f"within {MAX_PARAMETERS_APART:.0%} of ours")]
    names = list(baselines)
    print(f"\n{'':26} {'ours':>20} " + " ".join(f"{name:>20}" for name in names) + "   goal")
    for label, key, goal in rows:
        theirs = " ".join(f"{fmt(baselines[name].get(key)):>20}" for name in names)
        print(f"{label:26} {fmt(ours.get(key)):>20} {theirs}   {goal}")
    print()
    for name in (name for name in names if "sweep" in baselines[name]):
        print(f"{name} baseline's lr sweep: " + ", ".join(
            f"lr {run['lr']:.1e} swd {run['swd']:.3f}" for run in baselines[name]["sweep"]))
    print("\nour SWD along the run: " + ", ".join(f"{p['images']:,} img {p['swd']:.3f}" for p in curve))
    for name, each in compare_each(ours, baselines).items():
        print(f"against {name}: excess SWD ratio {each['ratio']:.2f}, Fréchet ratio {each['frechet_ratio']:.2f}")
    if baselines:
        better = compare(ours, baselines)
        print(f"against the better baseline ({better['against']}): excess SWD ratio {better['ratio']:.2f} (goal >= 2), "
              f"Fréchet ratio {better['frechet_ratio']:.2f} (goal >= 2)")


def print_samplers(rows: Sequence[dict[str, Any]]) -> None:
    """One line per sampler of our last checkpoint, with its ratios against the first."""
    if not rows:
        return
    print(f"\nsamplers on our last checkpoint (against {rows[0]['sampler']} {rows[0]['steps']} steps):")
    print(f"{'sampler':>10} {'steps':>6} {'swd':>7} {'frechet':>8} {'class acc':>9} {'spectrum':>8} "
          f"{'seconds':>8} {'nfe ratio':>9} {'excess swd ratio':>16}")
    for row in rows:
        print(f"{row['sampler']:>10} {row['steps']:>6} {row['swd']:>7.3f} {row['frechet_classifier_distance']:>8.2f} "
              f"{row['class_accuracy']:>9.3f} {row['spectrum_hf_ratio']:>8.3f} {fmt(row.get('sample_seconds'), 0):>8} "
              f"{row['nfe_ratio']:>9.2f} {row['excess_ratio']:>16.2f}")


def parse_args() -> QualityConfig:
    defaults = QualityConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=defaults.work, help="folder for data, runs, samples (reused)")
    parser.add_argument("--images", type=int, default=defaults.images, help="training budget in images, both sides")
    parser.add_argument("--size", type=int, default=defaults.size, help="image size in px (shards built at it)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=defaults.device, help="cpu or cuda")
    parser.add_argument("--checkpoints", type=int, default=defaults.checkpoints,
                        help="points of our run sampled and scored (the convergence curve)")
    parser.add_argument("--n", type=int, default=defaults.n, help="samples per class at the end")
    parser.add_argument("--n-curve", type=int, default=defaults.n_curve,
                        help="samples per class at intermediate checkpoints")
    parser.add_argument("--ours-args", default="", help='extra ddpm-train flags, e.g. "--lr 1e-3 --prediction v"; a lone flag '
                        'takes "=": --ours-args=--no-aug-conditioning')
    parser.add_argument("--sample-args", default="", help='extra ddpm-sample flags for our side, e.g. "--eta 1" (a lone flag: --sample-args=--no-ema)')
    parser.add_argument("--no-baseline", action="store_true", help="our side only (screening)")
    parser.add_argument("--no-example-recipe", action="store_true",
                        help="no row for diffusers' example recipe (the tuned baseline alone; needs --tuned-lr-factors)")
    parser.add_argument("--baseline-eta", type=float, default=defaults.baseline_eta,
                        help="DDIM eta of the baseline (diffusers' default 0)")
    parser.add_argument("--tuned-lr-factors", default=",".join(f"{f:g}" for f in defaults.tuned_lr_factors),
                        help="each tuned twin's learning rates, times ours, comma-separated; '' = no tuned rows")
    parser.add_argument("--twins", default=",".join(defaults.twins),
                        help=f"tuned twins to train, comma-separated subset of {','.join(TWINS)}")
    parser.add_argument("--samplers", default="",
                        help="sample our last checkpoint with each sampler:steps, the first as reference, "
                             "e.g. ddim:50,dpmpp-2m:25")
    parser.add_argument("--prototype", choices=PROTOTYPES, default=None,
                        help="train our model in a loop here with a code change: min-snr")
    parser.add_argument("--min-snr-gamma", type=float, default=defaults.min_snr_gamma)
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch threads")
    parser.add_argument("--classifier-epochs", type=int, default=defaults.classifier_epochs)
    parser.add_argument("--no-reuse", action="store_true", help="redo runs, samples and evaluations")
    args = parser.parse_args()
    if args.images < args.batch_size or args.checkpoints < 1 or args.n < 2 or args.n_curve < 2:
        parser.error("--images must be >= --batch-size; --checkpoints >= 1; --n and --n-curve >= 2")
    try:
        factors = tuple(float(f) for f in args.tuned_lr_factors.split(",") if f.strip())
    except ValueError:
        parser.error(f"--tuned-lr-factors {args.tuned_lr_factors!r}: comma-separated numbers, e.g. 0.5,1,2")
    if any(f <= 0 for f in factors):
        parser.error(f"--tuned-lr-factors {args.tuned_lr_factors!r}: factors must be > 0")
    if args.no_example_recipe and not factors and not args.no_baseline:
        parser.error("--no-example-recipe with --tuned-lr-factors '': no baseline left; pass --no-baseline instead")
    try:
        samplers, twins = parse_samplers(args.samplers), parse_twins(args.twins)
    except ValueError as error:
        parser.error(str(error))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device here; use --device cpu")
    return QualityConfig(
        work=args.work.resolve(), images=args.images, size=args.size, batch_size=args.batch_size, seed=args.seed,
        device=args.device, checkpoints=args.checkpoints, n=args.n, n_curve=args.n_curve,
        ours_args=tuple(shlex.split(args.ours_args)), sample_args=tuple(shlex.split(args.sample_args)),
        baseline=not args.no_baseline, example_recipe=not args.no_example_recipe, baseline_eta=args.baseline_eta,
        tuned_lr_factors=factors, twins=twins, samplers=samplers, prototype=args.prototype, min_snr_gamma=args.min_snr_gamma,
        threads=args.threads, classifier_epochs=args.classifier_epochs, reuse=not args.no_reuse)


def main() -> None:
    config = parse_args()
    missing = missing_libraries(config)
    if missing:
        raise SystemExit(missing)
    torch.set_num_threads(config.threads)
    load_start = [round(v, 2) for v in os.getloadavg()]
    print(f"load average at start: {load_start}", flush=True)
    started = time.perf_counter()
    shards = prepare_data(config)
    colour = data_colour(shards, config.size)

    run_dir, plan, ours_seconds = train_ours(config, shards)
    classes = plan["classes"]
    label = f"ours{' (PROTOTYPE ' + config.prototype + ')' if config.prototype else ''}"
    print(f"{label}: {plan['parameters']:,} parameters; train flags: {shlex.join(config.ours_args) or '(defaults)'}; "
          f"sample flags: {shlex.join(config.sample_args) or '(defaults)'}; "
          f"{'reused ' + run_dir.name if ours_seconds is None else f'trained in {ours_seconds:.0f} s'}", flush=True)
    from ddpm_model.checkpoint import step_checkpoints

    checkpoints = curve_points(step_checkpoints(run_dir), config.total_steps(), config.checkpoints)
    curve = []
    for checkpoint in checkpoints:
        last = checkpoint == checkpoints[-1]
        figures = sample_ours(config, shards, checkpoint, config.n if last else config.n_curve, classes)
        step = int(checkpoint.stem.split("-")[1])
        curve.append({"step": step, "images": step * config.batch_size, "swd": figures["swd"],
                      "n": config.n if last else config.n_curve})
        print(f"  {label} at {step * config.batch_size:,} images: swd {figures['swd']:.3f}", flush=True)
    ours = {**figures, "parameters": plan["parameters"], "train_args": list(config.ours_args),
            "sample_args": list(config.sample_args), "prototype": config.prototype, "train_seconds": ours_seconds}

    samplers = run_samplers(config, shards, checkpoints[-1], classes)
    baselines = run_baselines(config, shards, plan) if config.baseline else {}
    print_table(ours, baselines, colour, curve)
    print_samplers(samplers)
    load_end = [round(v, 2) for v in os.getloadavg()]
    print(f"load average at end: {load_end}; {time.perf_counter() - started:.0f} s")
    print(json.dumps(result_json(config, colour, ours, curve, baselines, {"start": load_start, "end": load_end},
                                 samplers)))


def result_json(config: QualityConfig, colour: list[float], ours: dict[str, Any], curve: list[dict[str, Any]],
                baselines: dict[str, dict[str, Any]], load_average: dict[str, list[float]],
                samplers: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The last line: every side's figures and, with baselines, the ratios against each
    (`ratios`, by name) and against the better one; the sampler comparison when `--samplers` was given."""
    result = {"images": config.images, "size": config.size, "batch_size": config.batch_size, "seed": config.seed,
              "device": config.device, "data_colour": colour, "ours": ours, "ours_curve": curve,
              "baseline": baselines.get("example recipe"),
              **{twin.json_key: baselines.get(twin.side) for twin in TWINS.values()},
              "samplers": list(samplers), "load_average": load_average}
    if baselines:
        result.update({**compare(ours, baselines), "ratios": compare_each(ours, baselines)})
    return result


if __name__ == "__main__":
    main()
