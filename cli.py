"""Command-line entry points: parse options, build a frozen config, call one function.

Four Typer apps back the console scripts ``ddpm-data``, ``ddpm-train``, ``ddpm-sample`` and
``ddpm-eval``. Heavy imports (torch, h5py, webdataset) happen inside the commands so that
``--help`` answers instantly. Every command is also a plain Python call in its module.

Errors take one path, `Command.invoke`: the commands raise, they do not catch.
"""
from __future__ import annotations

import errno
import json
import math
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup
from typer.exceptions import TyperException  # typer vendors click: its usage errors derive from this

from ddpm_data.config import AugmentConfig, Fit, IntensityRule, Interpolation, ReaderConfig, ReaderMode
from ddpm_data.redact import redact
from ddpm_data.transfer import TransferConfig
from ddpm_model.choices import BetaSchedule, NoiseDistribution, Prediction, Sampler, UpsampleMode
from ddpm_model.config import ModelOptions, Precision, RunConfig, SampleConfig, TrainConfig

# ---------------------------------------------------------------- the one error path

# errno -> (what happened, the fix), for "<path>: <what>; <fix>"
OS_ERRORS = {
    errno.ENOSPC: "no space left on the device; free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere",
    errno.EROFS: "read-only filesystem; write to another location",
    errno.EACCES: "permission denied; check its permissions or use another location",
    errno.EPERM: "operation not permitted; check its permissions or use another location",
    errno.EISDIR: "is a folder; give a file",
    errno.ENOTDIR: "a part of the path is not a folder; check the path",
    errno.ENOENT: "no such file or folder; check the path",
    errno.EEXIST: "already exists; remove it or choose another name",
    errno.ENOTEMPTY: "folder not empty; remove its contents or choose another folder",
    errno.ENAMETOOLONG: "name too long; use a shorter path",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) or use fewer --workers",
    errno.ENOMEM: "out of memory; use a smaller --batch-size or fewer --workers",
    errno.EIO: "input/output error; the disk or network filesystem failed, check it",
}
INTERRUPTED = "files finished before the interruption are kept; rerun the command for the rest"
OUT_OF_MEMORY = "use a smaller batch size (or --gradient-checkpointing)"


def os_error_line(error: OSError) -> str:
    """'<path>: <what>; <fix>' for an OSError (ENOSPC, EROFS, EACCES, EISDIR, ...)."""
    what = OS_ERRORS.get(error.errno) or (error.strerror or str(error))
    paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {what}" if paths else what


def is_torch_load_error(error: Exception) -> bool:
    """torch.load's errors for a truncated, empty or foreign file, or a refused pickle."""
    if isinstance(error, (pickle.UnpicklingError, zipfile.BadZipFile, EOFError)):
        return True
    return isinstance(error, RuntimeError) and str(error).startswith("PytorchStreamReader")


def is_out_of_memory(error: Exception) -> bool:
    """MemoryError, or torch's (GPU) OutOfMemoryError, told by name so torch is not imported here."""
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"


def first_sentence(error: Exception) -> str:
    """The start of an error's message, up to its first full stop (torch appends paragraphs)."""
    text = str(error).strip()
    return text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(error).__name__


PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def is_peer_failure(error: Exception) -> bool:
    """A collective (gloo, NCCL) failed because another rank of the job stopped."""
    if type(error).__name__ in ("DistBackendError", "DistNetworkError", "DistError"):
        return True
    return isinstance(error, RuntimeError) and ("gloo" in str(error) or "NCCL" in str(error)) and \
        any(text in str(error) for text in PEER_GONE)


def error_line(error: Exception, out_of_memory: str = OUT_OF_MEMORY) -> str | None:
    """The message for an error the user can act on; None for anything else (a bug).
    `out_of_memory` is the command's fix for running out of memory."""
    if is_peer_failure(error):
        rank = os.environ.get("RANK", "?")
        return (f"rank {rank}: another rank of this job stopped ({first_sentence(error).split('] ')[-1]}); "
                f"its own error line says why")
    if isinstance(error, OSError):
        return os_error_line(error)
    if isinstance(error, json.JSONDecodeError):
        return f"malformed JSON ({error}); fix the file or write it again"
    if is_torch_load_error(error):
        return f"not a readable torch file ({first_sentence(error)}); restore the file or write it again"
    if is_out_of_memory(error):
        return f"out of memory ({first_sentence(error)}); {out_of_memory}"
    if isinstance(error, ValueError) or isinstance(getattr(error, "exit_code", None), int):
        return str(error)  # the project's errors name the file or flag and the fix
    return None


class OneLineUsage:
    """click's usage errors (unknown option, bad choice, missing value) as one `error:` line
    naming the flag, like every other error, instead of click's usage block and "Error:"."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except TyperException as error:
            raise one_line(error)


class Group(OneLineUsage, TyperGroup):
    """The `ddpm-data` command group: an unknown command is one line too."""

    def resolve_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().resolve_command(*args, **kwargs)
        except TyperException as error:
            raise one_line(error)


def one_line(error: TyperException) -> TyperException:
    """`error`, shown as one `error:` line; bare `ddpm-data` keeps printing its help."""
    if type(error).__name__ != "NoArgsIsHelpError":
        line = f"error: {usage_line(error)}"
        error.show = lambda file=None: typer.echo(line, err=True)
    return error


class Command(OneLineUsage, TyperCommand):
    """A command whose failures end as `error: ...` on stderr, never as a traceback.

    User errors (OSError, json.JSONDecodeError, unreadable torch files, running out of memory,
    ValueError and the project's errors derived from it) exit with status 2, or the error's own
    `exit_code` (1 for a diverged training run). Ctrl-C exits with 130 and says what was kept (`interrupted`).
    Anything else is a bug and keeps its traceback; DDPM_TRACEBACK=1 shows it for every error.
    """

    interrupted = INTERRUPTED
    out_of_memory = OUT_OF_MEMORY

    def invoke(self, ctx: typer.Context) -> Any:
        refuse_non_finite(ctx)
        try:
            with warnings.catch_warnings():
                warnings.showwarning = show_warning
                return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):
            raise  # an exit the command chose, or a usage error click reports itself
        except KeyboardInterrupt:
            typer.echo(f"error: interrupted; {self.interrupted}", err=True)
            raise typer.Exit(130) from None
        except Exception as error:
            line = error_line(error, self.out_of_memory)
            if line is None or os.environ.get("DDPM_TRACEBACK"):
                raise
            typer.echo(f"error: {redact(line)}", err=True)
            raise typer.Exit(getattr(error, "exit_code", 2)) from None


def usage_line(error: TyperException) -> str:
    """click's usage error as one line naming the flag: "--mode: 'bogus' is not one of ...; see 'ddpm-data preview --help'"."""
    message = error.format_message().replace("Value error, ", "").rstrip(".")
    message = re.sub(r"^Invalid value for '([^']+)'", r"\1", message)
    ctx = getattr(error, "ctx", None)
    return f"{message}; see '{ctx.command_path} --help'" if ctx is not None else message


def show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """A warning during a command: one `warning: ...` line on stderr, without Python's source line."""
    typer.echo(f"warning: {redact(str(message))}", err=True)


def refuse_non_finite(ctx: typer.Context) -> None:
    """Refuse nan and inf in any float option, naming the flag (click's FLOAT accepts both)."""
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(value, float) and not math.isfinite(value):
            flag = max(param.opts, key=len) if param.opts else param.name
            fail(f"{flag}: {value} is not a finite number; give a number such as 0.1")


class App(typer.Typer):
    """typer.Typer whose every command takes the one error path; `interrupted=` says what a
    command keeps when Ctrl-C stops it, `out_of_memory=` how to need less memory."""

    def command(self, *args: Any, interrupted: str = INTERRUPTED, out_of_memory: str = OUT_OF_MEMORY,
                **kwargs: Any) -> Any:
        kwargs.setdefault("cls", type("Command", (Command,), {"interrupted": interrupted,
                                                              "out_of_memory": out_of_memory}))
        return super().command(*args, **kwargs)


# Plain (not boxed) usage errors: one line naming the option, like every other error here.
APP_SETTINGS = dict(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
data_app = App(help="Prepare image folders: synthesise sample data, build shards, inspect them.",
               no_args_is_help=True, cls=Group, **APP_SETTINGS)
train_app = App(**APP_SETTINGS)
sample_app = App(**APP_SETTINGS)
eval_app = App(**APP_SETTINGS)


@data_app.callback()
def data_main() -> None:
    """Prepare image folders: synthesise sample data, build shards, inspect them."""


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error to stderr and exit with `code` (no traceback): for checks made in
    the command itself; errors raised below it take `Command`'s path."""
    typer.echo(f"error: {redact(message)}", err=True)
    raise typer.Exit(code)


def int_list(text: Optional[str], flag: str, example: str = "1,2,2,4") -> Optional[tuple[int, ...]]:
    """'1,2,2,4' -> (1, 2, 2, 4); None stays None. The one parser of comma-separated options."""
    if text is None:
        return None
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values:
        fail(f"{flag} {text!r}: expected comma-separated integers, e.g. {example}")
    return values


def float_pair(text: Optional[str], flag: str, example: str) -> Optional[tuple[float, float]]:
    """'-160,240' -> (-160.0, 240.0); None stays None."""
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 2 or not all(math.isfinite(v) for v in values):
        fail(f"{flag} {text!r}: expected two comma-separated numbers LOW,HIGH, e.g. {example}")
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
InterpolationOption = Annotated[Optional[Interpolation], typer.Option(help="Resampling of rotated/zoomed samples: fourier keeps the detail exactly; shifted-linear keeps it at near bilinear cost, 3-5x faster. [default: preset's, fourier]", show_default=False)]
# Reader: any field of ddpm_data.config.ReaderConfig.
BalanceOption = Annotated[str, typer.Option(help="Class balance: natural, balanced, sqrt, or class weights like normal=1,abnormal=3 (an epoch follows it).")]
ModeOption = Annotated[ReaderMode, typer.Option(help="Reader: auto (memory if the split fits --memory-budget-mb), memory (data.h5 in RAM/GPU), stream (tar shards).")]
WorkersOption = Annotated[int, typer.Option(help="Stream mode: DataLoader worker processes per GPU (0 = read in this process).")]
MemoryBudgetOption = Annotated[float, typer.Option(help="Mode auto: hold the split in memory when its pixels fit this many MiB.")]
SkipBadShardsOption = Annotated[bool, typer.Option(help="Leave out (and list) shards that fail their checksum instead of stopping.")]
# Reading at a URL: the fields of ddpm_data.transfer.TransferConfig.
RetriesOption = Annotated[int, typer.Option(help="Shards at a URL: retries of a request the server or network failed (refused, timed out, 5xx), one warning line each; 0 = none.")]
StallTimeoutOption = Annotated[float, typer.Option(help="Shards at a URL: seconds without a byte before a transfer counts as stalled (slow but steady downloads go on).")]


def use_transfer(retries: int, stall_timeout: float) -> None:
    """Set how this command reads files at a URL (ddpm_data.transfer)."""
    from ddpm_data import transfer

    transfer.use(TransferConfig(retries=retries, stall_timeout_s=stall_timeout))
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
    from ddpm_data.synth import SynthConfig, contact_sheet, synthesize

    config = SynthConfig(out=out, normal=normal, abnormal=abnormal, size=size, seed=seed, overwrite=overwrite, masks=masks)
    root = synthesize(config)
    typer.echo(f"wrote {normal} normal + {abnormal} abnormal images ({size} px, seed {seed}) to {root}")
    if sheet is not None:
        typer.echo(f"contact sheet: {contact_sheet(root, sheet)}")


# ---------------------------------------------------------------- ddpm-data build/stats/verify


@data_app.command(interrupted="nothing was written (any previous output is unchanged)",
                  out_of_memory="nothing was written; build a smaller --size, with a smaller --buffer-mb or fewer --workers")
def build(
    src: Annotated[Path, typer.Option(help="ImageFolder source: one subfolder per class, images at any depth.")] = Path("data"),
    size: Annotated[str, typer.Option(help="Training resolution(s) in px; '40,96,128' builds all in one pass.")] = "96",
    out: Annotated[str, typer.Option(help="Output folder, or a URL (s3://bucket/shards/{size}: built locally, then uploaded, manifest last); '{size}' is replaced by each size.")] = "shards/{size}",
    margin: Annotated[int, typer.Option(help="Crop margin in px per 128 px: stored = round(size*(128+margin)/128); 0 = none.")] = 12,
    fit: Annotated[Fit, typer.Option(help="Non-square images: crop (centre), squash, or pad (black borders).")] = Fit.CROP,
    channels: Annotated[str, typer.Option(help="auto = 1 when every source image is grey (L, 16-bit grey, DICOM MONOCHROME), else 3; 3 = RGB; 1 = greyscale.")] = "auto",
    intensity: Annotated[IntensityRule, typer.Option(help="High-bit grey (16-bit PNG/TIFF) and DICOM -> 8 bits, one rule for the whole dataset: auto (PNG/TIFF from 0..2^bits-1, the bits the data uses; DICOM as a viewer shows it: its VOI LUT or first window), window (--window), percentile (--percentiles of the pooled values). 8-bit images are never changed.")] = IntensityRule.auto,
    window: Annotated[Optional[str], typer.Option(help="--intensity window: LOW,HIGH of the values mapped to black..white, e.g. 0,4095 or, for CT in Hounsfield units, -160,240 (DICOM values after RescaleSlope/Intercept).", show_default=False)] = None,
    percentiles: Annotated[str, typer.Option(help="--intensity percentile: the dataset's LOW,HIGH percentiles mapped to black..white.")] = "0.5,99.5",
    val_fraction: Annotated[float, typer.Option(help="Share of each class held out for validation (by content hash).")] = 0.1,
    shard_size: Annotated[int, typer.Option(help="Samples per tar shard (64: several shards per class for multi-worker readers).")] = 64,
    workers: Annotated[Optional[int], typer.Option(help="Decode processes (default: all cores; 0 = in-process).")] = None,
    max_pixels: Annotated[int, typer.Option(help="Skip images with more pixels than this (decompression bombs).")] = 100_000_000,
    strict: Annotated[bool, typer.Option(help="Fail instead of skipping bad, duplicate or conflicting files.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder that a build wrote (atomically); any other folder is refused.")] = False,
    buffer_mb: Annotated[int, typer.Option(help="Memory in MiB for images between the workers and the files; bounds the build's memory at any --size.")] = 256,
) -> None:
    """Build resolution-specific WebDataset tar shards, data.h5 and manifest.json from an image folder."""
    from ddpm_data.shards import BuildConfig, build as build_shards

    config = BuildConfig(src=src, size=int_list(size, "--size", "96 or 40,96,128"), out=out, margin=margin, fit=fit,
                         channels=channels, intensity=intensity,
                         window=float_pair(window, "--window", "0,4095 or -160,240"),
                         percentiles=float_pair(percentiles, "--percentiles", "0.5,99.5"),
                         val_fraction=val_fraction, shard_size=shard_size,
                         workers=workers, max_pixels=max_pixels, strict=strict, overwrite=overwrite,
                         buffer_mb=buffer_mb)
    manifests = build_shards(config, progress=True, log=lambda message: typer.echo(message, err=True))
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
    retries: RetriesOption = TransferConfig.retries,
    stall_timeout: StallTimeoutOption = TransferConfig.stall_timeout_s,
) -> None:
    """Summarise a shard folder: counts, shards, mean/std, source sizes, skipped files."""
    use_transfer(retries, stall_timeout)
    from ddpm_data.remote import as_location
    from ddpm_data.stats import collect_stats, format_stats, write_grid

    folder = as_location(folder, "FOLDER")
    summary = collect_stats(folder)
    typer.echo(json.dumps(summary, indent=2, sort_keys=True) if json_output else format_stats(summary))
    if grid is not None:
        written = write_grid(folder, grid, per_class)
        typer.echo(f"contact sheet: {written}", err=json_output)


@data_app.command()
def verify(
    folder: Annotated[str, typer.Argument(help="Shard folder written by 'ddpm-data build' (e.g. shards/96), or its URL (s3://..., https://..., pipe:CMD).")],
    retries: RetriesOption = TransferConfig.retries,
    stall_timeout: StallTimeoutOption = TransferConfig.stall_timeout_s,
) -> None:
    """Recompute every checksum and decode every sample of the tar shards and data.h5."""
    use_transfer(retries, stall_timeout)
    from ddpm_data.redact import public
    from ddpm_data.remote import as_location, join
    from ddpm_data.verify import verify as verify_folder

    folder = as_location(folder, "FOLDER")
    report = verify_folder(folder)
    for problem in report.problems:
        typer.echo(f"{public(join(folder, problem.path))}: {redact(problem.message)}", err=True)
    if not report.ok:
        fail(f"{public(folder)}: {len(report.bad_files)} bad file(s): {', '.join(report.bad_files)}", code=1)
    typer.echo(f"{public(folder)}: ok ({report.files_checked} files, {report.samples_checked} samples decoded)")


# ---------------------------------------------------------------- ddpm-data preview


@data_app.command()
def preview(
    ctx: typer.Context,
    folder: Annotated[str, typer.Argument(help="Shard folder written by 'ddpm-data build' (e.g. shards/96), or its URL (s3://..., https://..., pipe:CMD).")],
    n: Annotated[int, typer.Option("--n", help="Samples to draw for the class shares.")] = 1000,
    balance: BalanceOption = str(ReaderConfig.balance),
    mode: ModeOption = ReaderConfig.mode,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = ReaderConfig.batch_size,
    seed: Annotated[int, typer.Option(help="Seed of the sampling order and the augmentation.")] = ReaderConfig.seed,
    workers: WorkersOption = ReaderConfig.workers,
    memory_budget_mb: MemoryBudgetOption = ReaderConfig.memory_budget_mb,
    skip_bad_shards: SkipBadShardsOption = False,
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
    retries: RetriesOption = TransferConfig.retries,
    stall_timeout: StallTimeoutOption = TransferConfig.stall_timeout_s,
) -> None:
    """Show what training would receive: class shares of N drawn samples, epoch length, augmented samples."""
    use_transfer(retries, stall_timeout)
    from ddpm_data.preview import PreviewConfig, format_report, preview as run_preview
    from ddpm_data.remote import as_location
    from ddpm_data.stream import ReaderConfig

    folder = as_location(folder, "FOLDER")
    reader = ReaderConfig(batch_size=batch_size, balance=balance, mode=mode, memory_budget_mb=memory_budget_mb,
                          seed=seed, workers=workers, on_error="skip" if skip_bad_shards else "raise")
    report = run_preview(folder, PreviewConfig(n=n, grid=grid, per_class=per_class, reader=reader,
                                               augment=augmentation(ctx.params)))
    typer.echo(json.dumps(report, indent=2, sort_keys=True) if json_output else format_report(report, folder))


# ---------------------------------------------------------------- ddpm-train / ddpm-sample


@train_app.command(interrupted="the run folder keeps its last complete checkpoint (each is written whole, "
                              "then renamed); continue with --resume")
def train(
    ctx: typer.Context,
    shards: Annotated[Optional[str], typer.Option(help="Shard folder from 'ddpm-data build' (e.g. shards/96), or its URL (s3://..., gs://..., https://..., pipe:CMD; credentials from the environment); size, channels and classes come from its manifest.")] = None,
    img_size: Annotated[Optional[int], typer.Option(help="Training size in px: uses shards/N when --shards is not given, else checks it matches.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default: runs/<shards name>-<date-time>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its latest checkpoint. Rerunning the original command with --resume works: options equal to the saved ones are accepted; the learning rate, duration and intervals may change; the architecture, data options, batch size and seed may not.")] = False,
    allow_new_data: Annotated[bool, typer.Option(help="With --resume: continue on shards that changed since the run started (rebuilt, more images), as long as the classes are the same.")] = RunConfig.allow_new_data,
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
    upsample: Annotated[Optional[UpsampleMode], typer.Option(help="Up-path resampling (interpolation + conv avoids checkerboard artefacts). [default: bilinear]", show_default=False)] = None,
    dropout: Annotated[Optional[float], typer.Option(help="Dropout in residual blocks. [default: 0.1]", show_default=False)] = None,
    zero_init: Annotated[Optional[bool], typer.Option("--zero-init/--no-zero-init", help="Zero the last layer of each residual block, of each attention and of the output, so each residual branch starts as the identity and the untrained U-Net outputs zero (ADM); --no-zero-init keeps PyTorch's initialisation, as diffusers' UNet2DModel. [default: zero]", show_default=False)] = None,
    class_dropout: Annotated[Optional[float], typer.Option(help="Label dropout for classifier-free guidance (0 disables). [default: 0.1]", show_default=False)] = None,
    num_timesteps: Annotated[Optional[int], typer.Option(help="Diffusion steps T. [default: 1000]", show_default=False)] = None,
    beta_schedule: Annotated[Optional[BetaSchedule], typer.Option(help="Noise schedule. [default: cosine]", show_default=False)] = None,
    prediction: Annotated[Optional[Prediction], typer.Option(help="Network target (eps: the original DDPM objective). [default: v]", show_default=False)] = None,
    noise_distribution: Annotated[Optional[NoiseDistribution], typer.Option(help="Noise levels training draws: uniform over the steps, or EDM's log-normal in sigma (more weight on low noise, fine detail). [default: uniform]", show_default=False)] = None,
    lognormal_mean: Annotated[Optional[float], typer.Option(help="With --noise-distribution lognormal: mean of ln sigma (EDM's P_mean). [default: -1.2]", show_default=False)] = None,
    lognormal_std: Annotated[Optional[float], typer.Option(help="With --noise-distribution lognormal: std of ln sigma (EDM's P_std). [default: 1.2]", show_default=False)] = None,
    aug_conditioning: Annotated[bool, typer.Option(help="Condition the model on the augmentation parameters (non-leaking augmentation).")] = ModelOptions.aug_conditioning,
    data_normalization: Annotated[bool, typer.Option(help="Run the diffusion on zero-mean data of std 0.5, from the manifest's per-channel statistics (--no-data-normalization: on the images in [-1, 1] as they are).")] = ModelOptions.data_normalization,
    # reader
    balance: BalanceOption = str(ReaderConfig.balance),
    mode: ModeOption = ReaderConfig.mode,
    workers: WorkersOption = ReaderConfig.workers,
    memory_budget_mb: MemoryBudgetOption = ReaderConfig.memory_budget_mb,
    skip_bad_shards: SkipBadShardsOption = False,
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
    lr: Annotated[Optional[float], typer.Option(help="AdamW learning rate after warm-up. [default: the preset's: 1e-3 for tiny, 1e-4 for 40-256 px]", show_default=False)] = TrainConfig.lr,
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
    sample_sampler: Annotated[Sampler, typer.Option(help="Sampler of the sample grids and quality scores, as ddpm-sample's --sampler.")] = TrainConfig.sample_sampler,
    sample_steps: Annotated[int, typer.Option(help="Sampler steps for the sample grids and quality scores.")] = TrainConfig.sample_steps,
    sample_guidance: Annotated[float, typer.Option(help="Guidance scale for the sample grids and quality scores.")] = TrainConfig.sample_guidance,
    sample_eta: Annotated[float, typer.Option(help="DDIM eta (with --sample-sampler ddim) for the sample grids and quality scores (0 = deterministic, as ddpm-sample; 1 = stochastic).")] = TrainConfig.sample_eta,
    val_images: Annotated[int, typer.Option(help="Validation images used (at most).")] = TrainConfig.val_images,
    quality_every: Annotated[int, typer.Option(help="Steps between sample-quality scores (SWD of fixed-seed samples to the val images, per class, logged as quality_swd (mean) and quality_swd_worst, divided by each class's accuracy as quality_score; the best is kept as checkpoints/best-quality.pt). 0 = off.")] = TrainConfig.quality_every,
    quality_samples: Annotated[int, typer.Option(help="Images per class drawn for each quality score.")] = TrainConfig.quality_samples,
    quality_classifier: Annotated[bool, typer.Option(help="Divide each class's quality score by the fraction of its samples ddpm-eval's classifier recognises (trained once per shard set, cached as ddpm-eval caches it), so best-quality.pt samples every class as itself.")] = TrainConfig.quality_classifier,
    keep: Annotated[int, typer.Option(help="Step checkpoints kept (plus best.pt).")] = TrainConfig.keep,
    retries: RetriesOption = TransferConfig.retries,
    stall_timeout: StallTimeoutOption = TransferConfig.stall_timeout_s,
) -> None:
    """Train the class-conditional DDPM on a shard folder; resumable, multi-GPU with torchrun.

    Exit status: 0 finished; 130 (Ctrl-C) or 143 (SIGTERM) stopped after a clean checkpoint;
    1 the loss diverged; 2 bad input (a flag, the data, the run folder, a checkpoint)."""
    import dataclasses

    from ddpm_data.config import OnError
    from ddpm_data.remote import as_location
    from ddpm_model.run import run_training

    use_transfer(retries, stall_timeout)
    params = ctx.params
    model_fields = ("model_channels", "num_res_blocks", "upsample", "dropout", "zero_init", "class_dropout",
                    "num_timesteps", "beta_schedule", "prediction", "noise_distribution", "lognormal_mean",
                    "lognormal_std")
    overrides = {name: params[name] for name in model_fields if params[name] is not None}
    if channel_multipliers is not None:
        overrides["channel_multipliers"] = int_list(channel_multipliers, "--channel-multipliers")
    if use_attention is not None:
        overrides["use_attention"] = tuple(bool(a) for a in int_list(use_attention, "--use-attention"))
    train_names = [f.name for f in dataclasses.fields(TrainConfig)]
    config = RunConfig(
        shards=None if shards is None else as_location(shards), img_size=img_size, out=out, resume=resume,
        allow_new_data=allow_new_data,
        overwrite=overwrite, dry_run=dry_run, device=device, progress=progress,
        model=ModelOptions(preset=preset, overrides=overrides, aug_conditioning=aug_conditioning,
                           data_normalization=data_normalization),
        reader=ReaderConfig(balance=balance, mode=mode, workers=workers, memory_budget_mb=memory_budget_mb,
                            on_error=OnError.skip if skip_bad_shards else OnError.raise_),
        augment=augmentation(params),
        train=TrainConfig(**{name: params[name] for name in train_names}),
        given=tuple(sorted({"on_error" if n == "skip_bad_shards" else n for n in typed_options(ctx)})),
    )
    plan, result = run_training(config)
    if int(os.environ.get("RANK", 0)) == 0:  # every rank resolved the same plan; rank 0 reports
        if result is None:
            report_dry_run(plan)
        else:
            report_training(plan, result)
    if result is not None and result.exit_status:
        raise typer.Exit(result.exit_status)


def report_dry_run(plan: Any) -> None:
    """`ddpm-train --dry-run`: the resolved configuration, the parameter count, the step memory."""
    typer.echo(json.dumps(plan.document(), indent=2, sort_keys=True))
    typer.echo(f"parameters: {plan.parameters:,} ({plan.parameters / 1e6:.2f}M); "
               f"run folder: {plan.run_dir}; nothing written (--dry-run)")
    if plan.memory:
        typer.echo(plan.memory)


def report_training(plan: Any, result: Any) -> None:
    """The end of a `ddpm-train` run: status, step, loss, and where its outputs are."""
    verb = "finished" if result.status == "finished" else "stopped by signal; resume with --resume"
    best = f"{result.best_val_loss:.4f}" if result.best_val_loss != float("inf") else "none yet"
    typer.echo(
        f"{verb} at step {result.step} ({result.images_seen:,} images, {result.seconds / 60:.1f} min): "
        f"loss {result.final_loss:.4f}, best val loss {best}\n"
        f"  run folder   {plan.run_dir}\n  checkpoint   {result.last_checkpoint}\n"
        f"  loss curve   {plan.run_dir / 'loss.png'}\n  samples      {plan.run_dir / 'samples'}"
    )


@sample_app.command(interrupted="nothing was written while sampling (every class is sampled before any is "
                               "written); while writing, the classes finished are complete in --out and the others "
                               "keep their previous images")
def sample(
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint file, or a run folder (uses its latest checkpoint).")],
    out: Annotated[Path, typer.Option(help="Output folder: writes OUT/<class>/0000.png ... and OUT/<class>-grid.png.")],
    class_name: Annotated[Optional[list[str]], typer.Option("--class", help="Class to sample (repeatable; default: every class).")] = None,
    n: Annotated[int, typer.Option(help="Images per class.")] = SampleConfig.n,
    sampler: Annotated[Sampler, typer.Option(help="dpmpp-2m (DPM-Solver++ 2M: second order, --steps, deterministic), ddim (--steps, --eta) or ddpm (all diffusion steps).")] = SampleConfig.sampler,
    steps: Annotated[int, typer.Option(help="Network evaluations of dpmpp-2m and ddim (25 dpmpp-2m steps came closer to the data than 50 ddim steps).")] = SampleConfig.steps,
    eta: Annotated[float, typer.Option(help="DDIM stochasticity (with --sampler ddim): 0 = deterministic (best with v-prediction), 1 = as noisy as DDPM (kinder to an eps-prediction model).")] = SampleConfig.eta,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale (1 = none).")] = SampleConfig.guidance,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same images.")] = SampleConfig.seed,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = SampleConfig.batch_size,
    ema: Annotated[bool, typer.Option(help="Use the EMA weights (--no-ema: the raw training weights).")] = SampleConfig.ema,
    device: Annotated[str, typer.Option(help="'auto', 'cpu', 'cuda', 'cuda:1'.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace the PNGs already in OUT/<class>/ (else refuse).")] = False,
) -> None:
    """Generate images of one or more classes from a trained checkpoint."""
    from ddpm_data.grid import save_grid
    from ddpm_model.sample import sample_to_folder

    config = SampleConfig(checkpoint=checkpoint, out=out, classes=tuple(class_name or ()), n=n,
                          sampler=sampler, steps=steps, eta=eta, guidance=guidance, seed=seed,
                          batch_size=batch_size, ema=ema, device=device, overwrite=overwrite)
    results = sample_to_folder(config, log=lambda message: typer.echo(message, err=True))
    for name, (paths, images) in results.items():
        rows = {f"{name} {i + 1}-{min(i + 8, n)}": list(images[i:i + 8].numpy()) for i in range(0, n, 8)}
        grid = save_grid(rows, out / f"{name}-grid.png")
        typer.echo(f"{name}: {len(paths)} images in {out / name}, grid {grid}")



# ---------------------------------------------------------------- ddpm-eval
from ddpm_eval.evaluate import EvalConfig as _Eval  # stdlib-only module: defaults without importing torch
from ddpm_eval.utility import UtilityConfig as _Utility  # stdlib-only too


@eval_app.command(help="Measure generated samples against real shards: SWD, smoothness, class fidelity, copies; with --utility, whether they help a classifier.")
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
    retries: RetriesOption = TransferConfig.retries,
    stall_timeout: StallTimeoutOption = TransferConfig.stall_timeout_s,
    utility: Annotated[bool, typer.Option("--utility", help="Also test whether the samples help: classifiers trained on real, real + samples and samples only, tested on held-out real images (k folds x seeds); a verdict helped/hurt/unclear.")] = False,
    utility_folds: Annotated[int, typer.Option(help="--utility: folds of the real images (each held out once).")] = _Utility.folds,
    utility_seeds: Annotated[int, typer.Option(help="--utility: classifier seeds per fold, from --seed on.")] = _Utility.seeds,
    utility_ratio: Annotated[Optional[float], typer.Option(help="--utility: samples added per real training image of each class. [default: top every class up to the largest]", show_default=False)] = _Utility.ratio,
    utility_steps: Annotated[int, typer.Option(help="--utility: training steps of each classifier, the same in every arm.")] = _Utility.steps,
    utility_width: Annotated[int, typer.Option(help="--utility: first-layer channels of the arms' classifier.")] = _Utility.width,
    utility_batch_size: Annotated[int, typer.Option(help="--utility: batch size of the arms' classifier.")] = _Utility.batch_size,
) -> None:
    use_transfer(retries, stall_timeout)
    from ddpm_data.remote import as_location
    from ddpm_eval.evaluate import evaluate
    from ddpm_eval.summary import format_text

    config = _Eval(real=as_location(real, "--real"), samples=samples, class_name=class_name, report=report,
                   seed=seed, device=device, swd_descriptors=swd_descriptors, swd_directions=swd_directions, swd_min_level=swd_min_level,
                   classifier_epochs=classifier_epochs, classifier_width=classifier_width,
                   classifier_batch_size=classifier_batch_size, copy_ratio=copy_ratio, blur_sigma=blur_sigma,
                   utility=_Utility(folds=utility_folds, seeds=utility_seeds, ratio=utility_ratio, steps=utility_steps,
                                    width=utility_width, batch_size=utility_batch_size) if utility else None)
    result = evaluate(config, log=lambda message: typer.echo(message, err=True))
    typer.echo(json.dumps(result, indent=2, sort_keys=True) if json_output else format_text(result))


# ---------------------------------------------------------------- ddpm-study
study_app = App(**APP_SETTINGS)


@study_app.command(help="Train a grid of configurations on one budget; compare them at one display size (docs/study.md).")
def study(
    study_dir: Annotated[Path, typer.Argument(metavar="STUDY", help="Study folder: study.toml, cells/<cell>/ (run folders), report/.")],
    sizes: Annotated[Optional[str], typer.Option(help="Training sizes in px, e.g. 40,96,128.")] = None,
    upsample: Annotated[Optional[str], typer.Option(help="U-Net up-sampling modes, e.g. bilinear,conv_transpose. [default: bilinear]", show_default=False)] = None,
    augment: Annotated[Optional[str], typer.Option(help="Augmentation presets, e.g. default,none. [default: default]", show_default=False)] = None,
    preset: Annotated[Optional[str], typer.Option(help="ddpm-train presets; auto = the one for each size. [default: auto]", show_default=False)] = None,
    model_channels: Annotated[Optional[str], typer.Option(help="Widths (first-stage channels), e.g. 32,64. [default: the preset's]", show_default=False)] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Training seeds, e.g. 0,1 (2+ give every metric a noise level). [default: 0]", show_default=False)] = None,
    design: Annotated[Optional[str], typer.Option(help="grid: every combination of the axes; one-at-a-time: every axis' first value, then each other value alone. [default: grid]", show_default=False)] = None,
    budget_images: Annotated[Optional[int], typer.Option(help="Budget: images seen per cell (ddpm-train --max-images).")] = None,
    budget_minutes: Annotated[Optional[float], typer.Option(help="Budget: wall time of training per cell, minutes.")] = None,
    measure_at: Annotated[Optional[str], typer.Option(help="Images seen at which every cell is also sampled and measured on its way to --budget-images, e.g. 4000,16000 (curves in the report).")] = None,
    src: Annotated[Optional[Path], typer.Option(help="Image folder to build missing shard sizes from.")] = None,
    shards: Annotated[Optional[str], typer.Option(help="Shard folder per size; '{size}' is replaced. [default: shards/{size}]", show_default=False)] = None,
    display_size: Annotated[Optional[int], typer.Option(help="Size in px every cell is evaluated at. [default: the largest size]", show_default=False)] = None,
    baseline: Annotated[Optional[str], typer.Option(help="Cell (or configuration) the others are compared with. [default: the first]", show_default=False)] = None,
    samples_per_class: Annotated[Optional[int], typer.Option(help="Samples per class and cell. [default: 64]", show_default=False)] = None,
    sample_steps: Annotated[Optional[int], typer.Option(help="DDIM steps. [default: 50]", show_default=False)] = None,
    sample_eta: Annotated[Optional[float], typer.Option(help="DDIM eta. [default: 0, as ddpm-sample]", show_default=False)] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale. [default: 2]", show_default=False)] = None,
    launcher: Annotated[Optional[str], typer.Option(help="Prefix of each ddpm-train command, e.g. 'torchrun --standalone --nproc_per_node 4 --no-python'.")] = None,
    train_args: Annotated[Optional[str], typer.Option(help="Extra ddpm-train options for every cell, e.g. '--batch-size 8 --balance sqrt'.")] = None,
    sample_args: Annotated[Optional[str], typer.Option(help="Extra ddpm-sample options, e.g. '--batch-size 64'.")] = None,
    eval_args: Annotated[Optional[str], typer.Option(help="Extra ddpm-eval options, e.g. '--device cuda'.")] = None,
    eval_bootstrap: Annotated[Optional[int], typer.Option(help="ddpm-eval runs on resampled samples per cell, for a noise level without seeds (0 = off).")] = None,
    cells: Annotated[Optional[str], typer.Option(help="Run only part k of n (every n-th cell from the k-th), e.g. 2/4 in a job array.")] = None,
    dry_run: Annotated[bool, typer.Option(help="List each cell's state and ddpm-train command; run and write nothing.")] = False,
    report_only: Annotated[bool, typer.Option(help="Rebuild STUDY/report/ from the cells measured so far (a stopped study, a job array's finished tasks); train, sample and measure nothing.")] = False,
) -> None:
    from ddpm_study.cells import parse_split
    from ddpm_study.config import StudyError, load_study
    from ddpm_study.runner import run_study

    flags = {"sizes": sizes, "upsample": upsample, "augment": augment, "preset": preset, "model_channels": model_channels,
             "seeds": seeds, "design": design, "images": budget_images, "minutes": budget_minutes, "measure_at": measure_at, "src": src and str(src), "shards": shards,
             "display_size": display_size, "baseline": baseline, "n": samples_per_class, "steps": sample_steps,
             "eta": sample_eta, "guidance": guidance, "launcher": launcher, "train_args": train_args,
             "sample_args": sample_args, "eval_args": eval_args, "eval_bootstrap": eval_bootstrap}
    log = lambda line: typer.echo(redact(line), err=not dry_run)  # noqa: E731  (a dry run's plan is its output)
    try:
        config, fresh = load_study(study_dir, flags)
        split = parse_split(cells) if cells else None
        outcome = run_study(config, split, dry_run=dry_run, log=log, save_settings=fresh and not report_only,
                            report_only=report_only)
    except (StudyError, ValueError, OSError) as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted; every finished step is kept (a cell in training stops at a checkpoint); rerun the same "
             "command to go on", code=130)
    if outcome.report is not None:
        typer.echo(f"report: {outcome.report}")
    if outcome.failures:
        fail(f"{len(outcome.failures)} cell(s) failed: " + "; ".join(f"{n} ({e})" for n, e in outcome.failures.items()), code=1)


if __name__ == "__main__":  # pragma: no cover
    data_app()
