"""Command-line entry points: parse options, build a frozen config, call one function.

Four Typer apps back the console scripts ``ddpm-data``, ``ddpm-train``, ``ddpm-sample`` and
``ddpm-eval``. Heavy imports (torch, h5py, webdataset) happen inside the commands so that
``--help`` answers instantly. Every command is also a plain Python call in its module.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ddpm_data.config import AugmentConfig, Interpolation
from ddpm_model.config import ModelOptions, Precision, RunConfig, TrainConfig

data_app = typer.Typer(
    help="Prepare image folders: synthesise sample data, build shards, inspect them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
sample_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
eval_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@data_app.callback()
def data_main() -> None:
    """Prepare image folders: synthesise sample data, build shards, inspect them."""


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error to stderr and exit with `code` (no traceback)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def int_list(text: Optional[str], flag: str) -> Optional[tuple[int, ...]]:
    """'1,2,2,4' -> (1, 2, 2, 4); None stays None. The one parser of comma-separated options."""
    if text is None:
        return None
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values:
        fail(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,2,2,4")
    return values


def typed_options(ctx: typer.Context) -> set[str]:
    """Names of the parameters the user typed (not defaults): what --resume compares."""
    return {name for name in ctx.params
            if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}


# Options shared by `ddpm-data preview` and `ddpm-train`: declared once, here.
# Augmentation: a preset, then any field of ddpm_data.config.AugmentConfig (None = the preset's).
AugmentPreset = Annotated[str, typer.Option(help="Augmentation preset: default (crop, flip, ±10° rotation, brightness/contrast 0.1) | none (centre crop).")]
CropOption = Annotated[Optional[bool], typer.Option("--crop/--no-crop", help="Random crop out of the stored margin (else centre). [default: preset's]", show_default=False)]
HflipOption = Annotated[Optional[float], typer.Option(help="Probability of a horizontal flip. [default: preset's, 0.5]", show_default=False)]
VflipOption = Annotated[Optional[float], typer.Option(help="Probability of a vertical flip. [default: preset's, 0]", show_default=False)]
DegreesOption = Annotated[Optional[float], typer.Option(help="Rotation range ±degrees (0 = off). [default: preset's, 10]", show_default=False)]
ZoomOption = Annotated[Optional[float], typer.Option(help="Zoom factor range [1/(1+z), 1+z] (0 = off). [default: preset's, 0]", show_default=False)]
BrightnessOption = Annotated[Optional[float], typer.Option(help="Brightness factor range [1-b, 1+b] (0 = off). [default: preset's, 0.1]", show_default=False)]
ContrastOption = Annotated[Optional[float], typer.Option(help="Contrast factor range [1-c, 1+c] (0 = off). [default: preset's, 0.1]", show_default=False)]
InterpolationOption = Annotated[Optional[Interpolation], typer.Option(help="Resampling of rotated/zoomed samples. [default: preset's, bilinear]", show_default=False)]
AUGMENT_FIELDS = ("crop", "hflip", "vflip", "degrees", "zoom", "brightness", "contrast", "interpolation")


def augmentation(params: dict) -> "AugmentConfig":
    from ddpm_data.config import augment_config

    return augment_config(params["augment"], **{name: params[name] for name in AUGMENT_FIELDS})


# ---------------------------------------------------------------- ddpm-data synth


@data_app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to create in ImageFolder layout (OUT/normal, OUT/abnormal).")],
    normal: Annotated[int, typer.Option(help="Number of normal images.")] = 437,
    abnormal: Annotated[int, typer.Option(help="Number of abnormal images (with lesions).")] = 85,
    size: Annotated[int, typer.Option(help="Image side in pixels (at least 16).")] = 128,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives byte-identical files.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it is not empty.")] = False,
    masks: Annotated[bool, typer.Option(help="Also write lesion masks under OUT/.masks/ (ignored by build).")] = True,
    sheet: Annotated[Optional[Path], typer.Option(help="Also write a contact sheet PNG of a few images per class.")] = None,
) -> None:
    """Write the bundled sample dataset: histology-like tiles, abnormal ones with soft-edged lesions."""
    from ddpm_data.synth import SynthConfig, SynthError, contact_sheet, synthesize

    config = SynthConfig(out=out, normal=normal, abnormal=abnormal, size=size, seed=seed, overwrite=overwrite, masks=masks)
    try:
        root = synthesize(config)
    except SynthError as error:
        fail(str(error))
    typer.echo(f"wrote {normal} normal + {abnormal} abnormal images ({size} px, seed {seed}) to {root}")
    if sheet is not None:
        typer.echo(f"contact sheet: {contact_sheet(root, sheet)}")


# ---------------------------------------------------------------- ddpm-data build/stats/verify


@data_app.command()
def build(
    src: Annotated[Path, typer.Option(help="ImageFolder source: one subfolder per class, images at any depth.")] = Path("data"),
    size: Annotated[str, typer.Option(help="Training resolution(s) in px; '40,96,128' builds all in one pass.")] = "96",
    out: Annotated[str, typer.Option(help="Output folder, or a URL (s3://bucket/shards/{size}: built locally, then uploaded, manifest last); '{size}' is replaced by each size.")] = "shards/{size}",
    margin: Annotated[int, typer.Option(help="Crop margin in px per 128 px: stored = round(size*(128+margin)/128); 0 = none.")] = 12,
    fit: Annotated[str, typer.Option(help="Non-square images: crop (centre), squash, or pad (black borders).")] = "crop",
    channels: Annotated[int, typer.Option(help="3 = RGB, 1 = greyscale.")] = 3,
    val_fraction: Annotated[float, typer.Option(help="Share of each class held out for validation (by content hash).")] = 0.1,
    shard_size: Annotated[int, typer.Option(help="Samples per tar shard (64: several shards per class for multi-worker readers).")] = 64,
    workers: Annotated[Optional[int], typer.Option(help="Decode processes (default: all cores; 0 = in-process).")] = None,
    max_pixels: Annotated[int, typer.Option(help="Skip images with more pixels than this (decompression bombs).")] = 100_000_000,
    strict: Annotated[bool, typer.Option(help="Fail instead of skipping bad, duplicate or conflicting files.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder (atomically).")] = False,
) -> None:
    """Build resolution-specific WebDataset tar shards, data.h5 and manifest.json from an image folder."""
    from ddpm_data.images import Fit
    from ddpm_data.shards import BuildConfig, BuildError, build as build_shards, parse_sizes
    from ddpm_data.split import SourceError

    try:
        fit_mode = Fit(fit)
    except ValueError:
        fail(f"--fit {fit!r}: unknown; valid: {', '.join(f.value for f in Fit)}")
    try:
        config = BuildConfig(src=src, size=parse_sizes(size), out=out, margin=margin, fit=fit_mode,
                             channels=channels, val_fraction=val_fraction, shard_size=shard_size,
                             workers=workers, max_pixels=max_pixels, strict=strict, overwrite=overwrite)
        manifests = build_shards(config, progress=True)
    except (BuildError, SourceError) as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted; nothing was written (any previous output is unchanged)", code=130)
    for manifest in manifests:
        counts = ", ".join(f"{split} {manifest.num_samples(split)}" for split in ("train", "val"))
        typer.echo(f"{manifest.root}: size {manifest.size} (stored {manifest.stored_size} px), {counts}, "
                   f"{len(manifest.shards)} shards, {len(manifest.skipped)} skipped, {manifest.ignored} ignored")
    for entry in manifests[0].skipped:
        typer.echo(f"  skipped {entry['path']}: {entry['reason']}")


@data_app.command()
def stats(
    folder: Annotated[str, typer.Argument(help="Shard folder written by 'ddpm-data build' (e.g. shards/96), or its URL (s3://..., https://..., pipe:CMD).")],
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    grid: Annotated[Optional[Path], typer.Option(help="Also write a contact sheet of samples per class to this PNG.")] = None,
    per_class: Annotated[int, typer.Option(help="Samples per class in the --grid contact sheet.")] = 8,
) -> None:
    """Summarise a shard folder: counts, shards, mean/std, source sizes, skipped files."""
    import json

    from ddpm_data.remote import as_location
    from ddpm_data.stats import collect_stats, format_stats, write_grid

    try:
        folder = as_location(folder, "FOLDER")
        summary = collect_stats(folder)
        typer.echo(json.dumps(summary, indent=2, sort_keys=True) if json_output else format_stats(summary))
        if grid is not None:
            written = write_grid(folder, grid, per_class)
            typer.echo(f"contact sheet: {written}", err=json_output)
    except ValueError as error:  # ManifestError, and FormatError / RemoteError naming the file
        fail(str(error))


@data_app.command()
def verify(
    folder: Annotated[str, typer.Argument(help="Shard folder written by 'ddpm-data build' (e.g. shards/96), or its URL (s3://..., https://..., pipe:CMD).")],
) -> None:
    """Recompute every checksum and decode every sample of the tar shards and data.h5."""
    from ddpm_data.remote import as_location, join
    from ddpm_data.verify import verify as verify_folder

    try:
        folder = as_location(folder, "FOLDER")
    except ValueError as error:
        fail(str(error))
    report = verify_folder(folder)
    for problem in report.problems:
        typer.echo(f"{join(folder, problem.path)}: {problem.message}", err=True)
    if not report.ok:
        fail(f"{folder}: {len(report.bad_files)} bad file(s): {', '.join(report.bad_files)}", code=1)
    typer.echo(f"{folder}: ok ({report.files_checked} files, {report.samples_checked} samples decoded)")


# ---------------------------------------------------------------- ddpm-data preview


@data_app.command()
def preview(
    ctx: typer.Context,
    folder: Annotated[str, typer.Argument(help="Shard folder written by 'ddpm-data build' (e.g. shards/96), or its URL (s3://..., https://..., pipe:CMD).")],
    n: Annotated[int, typer.Option("--n", help="Samples to draw for the class shares.")] = 1000,
    balance: Annotated[str, typer.Option(help="natural | balanced | sqrt | class weights, e.g. normal=1,abnormal=3.")] = "natural",
    mode: Annotated[str, typer.Option(help="auto | stream | memory (auto: memory when the split fits --memory-budget-mb).")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the sampling order and the augmentation.")] = 0,
    workers: Annotated[int, typer.Option(help="Stream mode: DataLoader worker processes (0 = in-process).")] = 0,
    memory_budget_mb: Annotated[float, typer.Option(help="Auto mode: largest split (pixels, MiB) held in memory.")] = 2048.0,
    skip_bad_shards: Annotated[bool, typer.Option(help="Leave out (and list) shards failing their checksum instead of stopping.")] = False,
    augment: AugmentPreset = "default",
    crop: CropOption = None,
    hflip: HflipOption = None,
    vflip: VflipOption = None,
    degrees: DegreesOption = None,
    zoom: ZoomOption = None,
    brightness: BrightnessOption = None,
    contrast: ContrastOption = None,
    interpolation: InterpolationOption = None,
    grid: Annotated[Optional[Path], typer.Option(help="Write a PNG of augmented samples per class (plain crops beneath).")] = None,
    per_class: Annotated[int, typer.Option(help="Samples per class in the --grid picture.")] = 8,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Show what training would receive: class shares of N drawn samples, epoch length, augmented samples."""
    import json

    from ddpm_data.preview import PreviewConfig, format_report, preview as run_preview
    from ddpm_data.remote import as_location
    from ddpm_data.stream import ReaderConfig

    try:
        folder = as_location(folder, "FOLDER")
        reader = ReaderConfig(batch_size=batch_size, balance=balance, mode=mode, memory_budget_mb=memory_budget_mb,
                              seed=seed, workers=workers, on_error="skip" if skip_bad_shards else "raise")
        report = run_preview(folder, PreviewConfig(n=n, grid=grid, per_class=per_class, reader=reader,
                                                   augment=augmentation(ctx.params)))
    except ValueError as error:  # ManifestError, ShardError and option errors all name the file or flag
        fail(str(error))
    typer.echo(json.dumps(report, indent=2, sort_keys=True) if json_output else format_report(report, folder))


# ---------------------------------------------------------------- ddpm-train / ddpm-sample


@train_app.command()
def train(
    ctx: typer.Context,
    shards: Annotated[Optional[str], typer.Option(help="Shard folder from 'ddpm-data build' (e.g. shards/96), or its URL (s3://..., gs://..., https://..., pipe:CMD; credentials from the environment); size, channels and classes come from its manifest.")] = None,
    img_size: Annotated[Optional[int], typer.Option(help="Training size in px: uses shards/N when --shards is not given, else checks it matches.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default: runs/<shards name>-<date-time>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its latest checkpoint. Rerunning the original command with --resume works: options equal to the saved ones are accepted; the learning rate, duration and intervals may change; the architecture, data options, batch size and seed may not.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Delete an existing run folder in --out and start over.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the resolved config, parameter count and the memory one training step needs, then exit.")] = False,
    device: Annotated[str, typer.Option(help="'auto' (cuda:LOCAL_RANK if available), 'cpu', 'cuda', 'cuda:1'.")] = RunConfig.device,
    progress: Annotated[bool, typer.Option(help="Show a progress bar (plain log lines when not a terminal).")] = RunConfig.progress,
    # model: any field of UNetConfig / DiffusionConfig; None = the preset's value
    preset: Annotated[Optional[str], typer.Option(help="Architecture preset: 40, 96, 128, 256, tiny. [default: the one for the shards' size; other sizes get a derived one]", show_default=False)] = None,
    model_channels: Annotated[Optional[int], typer.Option(help="Channels of the first U-Net stage. [default: preset's, 64]", show_default=False)] = None,
    channel_multipliers: Annotated[Optional[str], typer.Option(help="Per-stage channel multipliers, e.g. 1,2,2,4 (96 px) or 1,2,2,4,8 (128 px). [default: preset's]", show_default=False)] = None,
    num_res_blocks: Annotated[Optional[int], typer.Option(help="Residual blocks per stage. [default: preset's, 2]", show_default=False)] = None,
    use_attention: Annotated[Optional[str], typer.Option(help="Self-attention per stage as 0/1, e.g. 0,0,1,1. [default: preset's]", show_default=False)] = None,
    upsample: Annotated[Optional[str], typer.Option(help="Up-path resampling: bilinear, bicubic, nearest, conv_transpose. [default: bilinear]", show_default=False)] = None,
    dropout: Annotated[Optional[float], typer.Option(help="Dropout in residual blocks. [default: 0.1]", show_default=False)] = None,
    class_dropout: Annotated[Optional[float], typer.Option(help="Label dropout for classifier-free guidance (0 disables). [default: 0.1]", show_default=False)] = None,
    num_timesteps: Annotated[Optional[int], typer.Option(help="Diffusion steps T. [default: 1000]", show_default=False)] = None,
    beta_schedule: Annotated[Optional[str], typer.Option(help="Noise schedule: cosine or linear. [default: cosine]", show_default=False)] = None,
    prediction: Annotated[Optional[str], typer.Option(help="Network target: eps or v. [default: eps]", show_default=False)] = None,
    aug_conditioning: Annotated[bool, typer.Option(help="Condition the model on the augmentation parameters (non-leaking augmentation).")] = ModelOptions.aug_conditioning,
    # reader
    balance: Annotated[str, typer.Option(help="Class balance: natural, balanced, sqrt, or weights like normal=1,abnormal=3 (an epoch follows it).")] = "natural",
    mode: Annotated[str, typer.Option(help="Reader: auto (memory if it fits), memory (data.h5 in RAM/GPU), stream (tar shards).")] = "auto",
    workers: Annotated[int, typer.Option(help="Stream mode: DataLoader worker processes per GPU (0 = read in the training process).")] = 0,
    memory_budget_mb: Annotated[float, typer.Option(help="Mode auto: hold the train split in memory when it fits this many MB.")] = 2048.0,
    skip_bad_shards: Annotated[bool, typer.Option(help="Stream mode: leave out shards that fail their checksum instead of stopping.")] = False,
    # augmentation (the same flags as `ddpm-data preview`)
    augment: AugmentPreset = "default",
    crop: CropOption = None,
    hflip: HflipOption = None,
    vflip: VflipOption = None,
    degrees: DegreesOption = None,
    zoom: ZoomOption = None,
    brightness: BrightnessOption = None,
    contrast: ContrastOption = None,
    interpolation: InterpolationOption = None,
    # optimisation and duration (ddpm_model.config.TrainConfig)
    batch_size: Annotated[Optional[int], typer.Option(help="Images per GPU per micro-batch. [default: the preset's: 8 at 40 px, 6 at 96, 4 at 128, 2 at 256, 16 for tiny]", show_default=False)] = TrainConfig.batch_size,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = TrainConfig.grad_accum,
    lr: Annotated[float, typer.Option(help="AdamW learning rate after warm-up.")] = TrainConfig.lr,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = TrainConfig.weight_decay,
    warmup_steps: Annotated[int, typer.Option(help="Linear learning-rate warm-up, in steps.")] = TrainConfig.warmup_steps,
    grad_clip: Annotated[float, typer.Option(help="Clip the gradient norm to this (0 = off).")] = TrainConfig.grad_clip,
    ema_decay: Annotated[float, typer.Option(help="EMA decay of the weights used for samples.")] = TrainConfig.ema_decay,
    epochs: Annotated[Optional[float], typer.Option(help="Duration in epochs of the balanced stream. [default: 100]", show_default=False)] = TrainConfig.epochs,
    max_steps: Annotated[Optional[int], typer.Option(help="Duration in optimizer steps (instead of --epochs).")] = TrainConfig.max_steps,
    max_images: Annotated[Optional[int], typer.Option(help="Duration in images seen, all GPUs (instead of --epochs).")] = TrainConfig.max_images,
    seed: Annotated[int, typer.Option(help="Seed for weights, data order and noise.")] = TrainConfig.seed,
    precision: Annotated[Precision, typer.Option(help="auto = bf16 on CUDA, fp32 on the CPU.")] = TrainConfig.precision,
    compile: Annotated[bool, typer.Option(help="torch.compile the U-Net (CUDA; slower start, faster steps).")] = TrainConfig.compile,
    gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute activations in the backward pass: much less memory (for 128/256 px), slower steps, identical gradients.")] = TrainConfig.gradient_checkpointing,
    # intervals and outputs
    log_every: Annotated[int, typer.Option(help="Steps between metrics lines.")] = TrainConfig.log_every,
    val_every: Annotated[int, typer.Option(help="Steps between validation losses.")] = TrainConfig.val_every,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = TrainConfig.checkpoint_every,
    sample_every: Annotated[int, typer.Option(help="Steps between sample grids (0 = only at the end).")] = TrainConfig.sample_every,
    samples_per_class: Annotated[int, typer.Option(help="Images per class in each sample grid.")] = TrainConfig.samples_per_class,
    sample_steps: Annotated[int, typer.Option(help="DDIM steps for the sample grids.")] = TrainConfig.sample_steps,
    sample_guidance: Annotated[float, typer.Option(help="Guidance scale for the sample grids.")] = TrainConfig.sample_guidance,
    sample_eta: Annotated[float, typer.Option(help="DDIM eta for the sample grids (1 = stochastic, kinder to an early model; 0 = deterministic).")] = TrainConfig.sample_eta,
    val_images: Annotated[int, typer.Option(help="Validation images used (at most).")] = TrainConfig.val_images,
    keep: Annotated[int, typer.Option(help="Step checkpoints kept (plus best.pt).")] = TrainConfig.keep,
) -> None:
    """Train the class-conditional DDPM on a shard folder; resumable, multi-GPU with torchrun."""
    import dataclasses
    import json
    import os

    from ddpm_model.checkpoint import CheckpointError
    from ddpm_model.run import RunError, run_training
    from ddpm_model.train import TrainingDiverged

    params = ctx.params
    typed = typed_options(ctx)
    rank = int(os.environ.get("RANK", 0))
    try:
        from ddpm_data.stream import OnError, ReaderConfig

        model_fields = ("model_channels", "num_res_blocks", "upsample", "dropout", "class_dropout",
                        "num_timesteps", "beta_schedule", "prediction")
        overrides = {name: params[name] for name in model_fields if params[name] is not None}
        if channel_multipliers is not None:
            overrides["channel_multipliers"] = int_list(channel_multipliers, "--channel-multipliers")
        if use_attention is not None:
            overrides["use_attention"] = tuple(bool(a) for a in int_list(use_attention, "--use-attention"))
        train_names = [f.name for f in dataclasses.fields(TrainConfig)]
        from ddpm_data.remote import as_location

        config = RunConfig(
            shards=None if shards is None else as_location(shards), img_size=img_size, out=out, resume=resume, overwrite=overwrite, dry_run=dry_run,
            device=device, progress=progress,
            model=ModelOptions(preset=preset, overrides=overrides, aug_conditioning=aug_conditioning),
            reader=ReaderConfig(balance=balance, mode=mode, workers=workers, memory_budget_mb=memory_budget_mb,
                                on_error=OnError.skip if skip_bad_shards else OnError.raise_),
            augment=augmentation(params),
            train=TrainConfig(**{name: params[name] for name in train_names}),
            given=tuple(sorted({"on_error" if n == "skip_bad_shards" else n for n in typed})),
        )
        plan, result = run_training(config)
    except TrainingDiverged as error:
        fail(str(error), code=1)
    except (RunError, CheckpointError, ValueError) as error:
        fail(str(error))
    if result is None:  # --dry-run; every rank resolved the same plan, rank 0 prints it
        if rank == 0:
            typer.echo(json.dumps(plan.document(), indent=2, sort_keys=True))
            typer.echo(f"parameters: {plan.parameters:,} ({plan.parameters / 1e6:.2f}M); "
                       f"run folder: {plan.run_dir}; nothing written (--dry-run)")
            if plan.memory:
                typer.echo(plan.memory)
        return
    if rank != 0:
        return
    verb = "finished" if result.status == "finished" else "stopped by signal; resume with --resume"
    best = f"{result.best_val_loss:.4f}" if result.best_val_loss != float("inf") else "none yet"
    typer.echo(
        f"{verb} at step {result.step} ({result.images_seen:,} images, {result.seconds / 60:.1f} min): "
        f"loss {result.final_loss:.4f}, best val loss {best}\n"
        f"  run folder   {plan.run_dir}\n  checkpoint   {result.last_checkpoint}\n"
        f"  loss curve   {plan.run_dir / 'loss.png'}\n  samples      {plan.run_dir / 'samples'}"
    )


@sample_app.command()
def sample(
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint file, or a run folder (uses its latest checkpoint).")],
    out: Annotated[Path, typer.Option(help="Output folder: writes OUT/<class>/0000.png ... and OUT/<class>-grid.png.")],
    class_name: Annotated[Optional[list[str]], typer.Option("--class", help="Class to sample (repeatable; default: every class).")] = None,
    n: Annotated[int, typer.Option(help="Images per class.")] = 64,
    sampler: Annotated[str, typer.Option(help="ddim (fast, --steps) or ddpm (all diffusion steps).")] = "ddim",
    steps: Annotated[int, typer.Option(help="DDIM steps.")] = 50,
    eta: Annotated[float, typer.Option(help="DDIM stochasticity: 0 = deterministic, 1 = as noisy as DDPM (smoother from a briefly trained model).")] = 0.0,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale (1 = none).")] = 2.0,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same images.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 16,
    ema: Annotated[bool, typer.Option(help="Use the EMA weights (--no-ema: the raw training weights).")] = True,
    device: Annotated[str, typer.Option(help="'auto', 'cpu', 'cuda', 'cuda:1'.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace the PNGs already in OUT/<class>/ (else refuse).")] = False,
) -> None:
    """Generate images of one or more classes from a trained checkpoint."""
    from ddpm_data.grid import save_grid
    from ddpm_model.checkpoint import CheckpointError
    from ddpm_model.diffusion import Sampler
    from ddpm_model.sample import SampleConfig, sample_to_folder

    if sampler not in {s.value for s in Sampler}:
        fail(f"--sampler {sampler!r}: unknown; valid: {', '.join(s.value for s in Sampler)}")
    try:
        config = SampleConfig(checkpoint=checkpoint, out=out, classes=tuple(class_name or ()), n=n,
                              sampler=Sampler(sampler), steps=steps, eta=eta, guidance=guidance, seed=seed,
                              batch_size=batch_size, ema=ema, device=device, overwrite=overwrite)
        results = sample_to_folder(config)
    except (CheckpointError, ValueError) as error:
        fail(str(error))
    for name, (paths, images) in results.items():
        rows = {f"{name} {i + 1}-{min(i + 8, n)}": list(images[i:i + 8].numpy()) for i in range(0, n, 8)}
        grid = save_grid(rows, out / f"{name}-grid.png")
        typer.echo(f"{name}: {len(paths)} images in {out / name}, grid {grid}")



# ---------------------------------------------------------------- ddpm-eval
from ddpm_eval.evaluate import EvalConfig as _Eval  # stdlib-only module: defaults without importing torch


@eval_app.command(help="Measure generated samples against real shards: SWD, smoothness, class fidelity, copies.")
def eval_samples(
    real: Annotated[str, typer.Option("--real", help="Shard folder from 'ddpm-data build' (manifest.json + data.h5), or its URL (the tar shards are read).")],
    samples: Annotated[Path, typer.Option("--samples", help="Generated images: SAMPLES/<class>/*.png at the shards' size.")],
    class_name: Annotated[Optional[str], typer.Option("--class", help="Evaluate only this class.")] = _Eval.class_name,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON (metrics at the top level).")] = False,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write a Markdown report with grids and plots here.")] = _Eval.report,
    seed: Annotated[int, typer.Option(help="Seed of patch draws, projections and classifier training.")] = _Eval.seed,
    device: Annotated[str, typer.Option(help="Torch device for the classifier and nearest-neighbour search.")] = _Eval.device,
    swd_descriptors: Annotated[int, typer.Option(help="7x7 patches drawn per pyramid level and image set.")] = _Eval.swd_descriptors,
    swd_directions: Annotated[int, typer.Option(help="Random projections per SWD repeat (4 repeats).")] = _Eval.swd_directions,
    swd_min_level: Annotated[int, typer.Option(help="Coarsest pyramid level in px.")] = _Eval.swd_min_level,
    classifier_epochs: Annotated[int, typer.Option(help="Training epochs of the eval classifier (cached next to the shards).")] = _Eval.classifier_epochs,
    classifier_width: Annotated[int, typer.Option(help="First-layer channels of the eval classifier.")] = _Eval.classifier_width,
    classifier_batch_size: Annotated[int, typer.Option(help="Batch size of the eval classifier's training.")] = _Eval.classifier_batch_size,
    copy_ratio: Annotated[float, typer.Option(help="Near-copy: nearest training image closer than this times the 2nd nearest.")] = _Eval.copy_ratio,
    blur_sigma: Annotated[float, typer.Option(help="Gaussian sigma (px) of the blurred smoothness-ceiling reference.")] = _Eval.blur_sigma,
) -> None:
    import json

    from ddpm_eval.evaluate import evaluate
    from ddpm_eval.summary import format_text

    try:
        from ddpm_data.remote import as_location

        config = _Eval(real=as_location(real, "--real"), samples=samples, class_name=class_name, report=report, seed=seed, device=device,
                       swd_descriptors=swd_descriptors, swd_directions=swd_directions, swd_min_level=swd_min_level,
                       classifier_epochs=classifier_epochs, classifier_width=classifier_width,
                       classifier_batch_size=classifier_batch_size, copy_ratio=copy_ratio, blur_sigma=blur_sigma)
        result = evaluate(config, log=lambda message: typer.echo(message, err=True))
    except ValueError as error:
        fail(str(error))
    typer.echo(json.dumps(result, indent=2, sort_keys=True) if json_output else format_text(result))


if __name__ == "__main__":  # pragma: no cover
    data_app()
