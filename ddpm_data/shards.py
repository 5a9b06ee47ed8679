"""`ddpm-data build`: an ImageFolder source -> per-resolution tar shards + data.h5 + manifest.json.

One pass over the source serves every requested size: a process pool hashes the files so the
main process can plan the split (`split.plan_source`), then decodes and resizes each image once
per stored size (`images`), streaming results back in storage order while the main process
appends them to the tar shards and the HDF5 file of every size (`parallel.OrderedPool`). The
images in flight and the HDF5 write buffers together stay within `--buffer-mb`, so memory grows
neither with the folder nor with the image size. Output is written atomically
(`atomic.atomic_folder`), replaces only a folder a build wrote (`check_replaceable`), and is
byte-deterministic (fixed tar headers, metadata-free PNG, HDF5 without timestamps). The files
themselves are written by `shardformat` (specified in docs/data-format.md). An `--out` URL
(s3://..., any writable fsspec URL) is built in a local temporary folder, then uploaded with the
manifest last (`remote.upload_folder`).
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ddpm_data import images as img
from ddpm_data.atomic import (BusyError, atomic_folder, busy_holder, check_owned, is_empty_folder, staging_folder,
                              unwritable)
from ddpm_data.config import IntensityRule
from ddpm_data.images import DEFAULT_MAX_PIXELS, Fit
from ddpm_data.intensity import Intensity, IntensityRecord
from ddpm_data.manifest import (FORMAT_VERSION, MANIFEST_NAME, SPLITS, Manifest, load_manifest, sha256_file,
                                write_manifest)
from ddpm_data.parallel import OrderedPool
from ddpm_data.redact import redact
from ddpm_data.remote import Location, RemoteError, as_location, check_writable, is_url, list_names, upload_folder
from ddpm_data.shardformat import HDF5_NAME, Hdf5Writer, ShardEntry, ShardWriter
from ddpm_data.split import SourceItem, SourcePlan, find_classes, plan_source, read_regular
from ddpm_data.survey import Survey, probe_file

DEFAULT_MARGIN = 12       # px per 128 px: resize to 140, random-crop 128
# 64 samples per shard: at size 96 (stored 105 px) a shard is ~1.5 MB (~3 MB at size 128), big
# enough that opening it costs nothing next to reading it on local disk, small enough that the
# sample data (437 normal / 85 abnormal) gives 7 + 2 train shards, so ranks x loader workers can
# each own whole shards of a class. Use larger shards (e.g. 1000+) for remote/object storage.
DEFAULT_SHARD_SIZE = 64
DRAFT_FACTOR = 2          # JPEGs decode at no less than 2x the largest stored size (images.decode)
IN_FLIGHT_PER_WORKER = 16  # images a worker may run ahead of the writer (fewer when --buffer-mb is reached)
# 256 MiB: at size 96 (stored 105 px, 33 KB per image) that is thousands of images, far more than
# the writer ever needs; at size 2048 (15 MB per image) it still lets every worker run a little ahead.
DEFAULT_BUFFER_MB = 256
# The largest training size a build makes: a 4096 px RGB image stored with the default margin is
# 57 MiB in memory, 16 of them in flight per worker ~1 GiB; the U-Net presets stop at 256 px.
MAX_SIZE = 4096
# The files a build writes into its folder, and the eval classifier cached beside them
# (ddpm_eval.classifier.cache_path). `--overwrite` replaces a folder holding nothing else.
BUILD_FILE = re.compile(r"manifest\.json|data\.h5|(train|val)-.+-\d{6}\.tar|eval-classifier-\w+-\w+\.pt(\.partial)?")


class BuildError(ValueError):
    """The build cannot run or failed its checks; the message names the flag or file and the fix."""


@dataclass(frozen=True)
class BuildConfig:
    """Options of `ddpm-data build`, 1:1 with its CLI flags."""

    src: Path = Path("data")             # ImageFolder root: one subfolder per class
    size: tuple[int, ...] = (96,)         # training resolutions (px); several = one pass
    out: str = "shards/{size}"            # output folder; "{size}" is replaced per size
    margin: int = DEFAULT_MARGIN          # crop margin in px per 128 px (0: store exactly `size`)
    fit: Fit = Fit.CROP                   # how non-square images become square
    channels: int | str = "auto"          # 3 = RGB, 1 = grey (L), "auto": 1 when every source image is grey
    intensity: IntensityRule = IntensityRule.auto  # high-bit grey and DICOM -> 8 bits (intensity.py)
    window: tuple[float, float] | None = None      # --intensity window: LOW,HIGH of the values (DICOM: modality)
    percentiles: tuple[float, float] = (0.5, 99.5)  # --intensity percentile: the dataset's LOW,HIGH percentiles
    val_fraction: float = 0.1             # share of each class held out for validation
    shard_size: int = DEFAULT_SHARD_SIZE  # samples per tar shard
    workers: int | None = None            # decode processes; None = all cores, 0 = in-process
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are skipped as decompression bombs
    strict: bool = False                  # any skipped file (or a class without train images) fails the build
    overwrite: bool = False               # replace an existing output folder that a build wrote
    buffer_mb: int = DEFAULT_BUFFER_MB    # memory (MiB) for images between the workers and the files

    def __post_init__(self) -> None:
        if not self.size or any(not isinstance(s, int) or s < 8 for s in self.size):
            raise BuildError(f"--size: need one or more integers >= 8 (e.g. 96 or 40,96,128), got {self.size!r}")
        too_large = [s for s in self.size if s > MAX_SIZE]
        if too_large:
            raise BuildError(self.size_error(max(too_large)))
        if len(set(self.size)) != len(self.size):
            raise BuildError(f"--size: {self.size!r} lists a size twice")
        if len(self.size) > 1 and "{size}" not in self.out:
            raise BuildError(f"--out {self.out}: several sizes need a '{{size}}' placeholder, e.g. shards/{{size}}")
        if self.margin < 0:
            raise BuildError(f"--margin: must be >= 0, got {self.margin}")
        if not isinstance(self.fit, Fit):
            raise BuildError(f"--fit {self.fit!r}: unknown; valid: {', '.join(f.value for f in Fit)}")
        if str(self.channels) not in ("auto", "1", "3"):
            raise BuildError(f"--channels: must be auto, 1 or 3, got {self.channels}")
        object.__setattr__(self, "channels", self.channels if self.channels == "auto" else int(self.channels))
        self._check_intensity()
        if not 0.0 <= self.val_fraction < 1.0:
            raise BuildError(f"--val-fraction: must be in [0, 1), got {self.val_fraction}")
        if self.shard_size < 1:
            raise BuildError(f"--shard-size: must be >= 1, got {self.shard_size}")
        if self.workers is not None and self.workers < 0:
            raise BuildError(f"--workers: must be >= 0, got {self.workers}")
        if self.max_pixels < 1:
            raise BuildError(f"--max-pixels: must be >= 1, got {self.max_pixels}")
        if self.buffer_mb < 1:
            raise BuildError(f"--buffer-mb: must be >= 1, got {self.buffer_mb}")

    def _check_intensity(self) -> None:
        try:
            object.__setattr__(self, "intensity", IntensityRule(self.intensity))
        except ValueError:
            valid = ", ".join(rule.value for rule in IntensityRule)
            raise BuildError(f"--intensity {self.intensity!r}: unknown; valid: {valid}") from None
        if self.intensity is IntensityRule.window:
            if self.window is None or len(self.window) != 2 or not self.window[0] < self.window[1]:
                raise BuildError(f"--intensity window: needs --window LOW,HIGH with LOW < HIGH (e.g. --window 0,4095 "
                                 f"for 12-bit data, or -160,240 for a CT soft-tissue window), got {self.window}")
        elif self.window is not None:
            raise BuildError(f"--window {','.join(map(str, self.window))}: used only with --intensity window; "
                             f"add --intensity window")
        low, high = self.percentiles
        if not 0.0 <= low < high <= 100.0:
            raise BuildError(f"--percentiles {low},{high}: need 0 <= LOW < HIGH <= 100 (e.g. 0.5,99.5)")

    def size_error(self, size: int) -> str:
        """The message for a --size above MAX_SIZE: the memory one image of it would take."""
        stored = self.stored_size(size)
        mib = stored * stored * self.max_channels / (1 << 20)
        return (f"--size {size}: above {MAX_SIZE} px, the largest a build makes; one image stored at {stored} px "
                f"takes {mib:,.0f} MiB of memory ({IN_FLIGHT_PER_WORKER} in flight per worker). Build at a "
                f"training size such as 96, 128 or 256 (the model presets stop at 256)")

    @property
    def max_channels(self) -> int:
        """Channels an image may take: 3 until `auto` is resolved."""
        return 3 if self.channels == "auto" else self.channels

    def out_for(self, size: int) -> Location:
        """Output folder of `size`: a Path, or a URL (str) to upload to."""
        return as_location(self.out.replace("{size}", str(size)), "--out")

    def stored_size(self, size: int) -> int:
        """Stored image side for training size `size` (see images.stored_size_for)."""
        return img.stored_size_for(size, self.margin)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready options as recorded in the manifest: those that shape the output.

        `workers`, `overwrite` and `buffer_mb` only change how the build runs, so they are left out
        and the manifest stays byte-identical however many processes built it.
        """
        options = asdict(self)
        del options["workers"], options["overwrite"], options["buffer_mb"]
        options.update(src=str(self.src), size=list(self.size), fit=self.fit.value, out=redact(self.out),
                       intensity=self.intensity.value, window=None if self.window is None else list(self.window),
                       percentiles=list(self.percentiles))
        return options


def available_cores() -> int:
    """Cores this process may run on (respects CPU affinity / container limits where visible)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ---------------------------------------------------------------- worker side


@dataclass(frozen=True)
class _DecodeSettings:
    stored_sizes: tuple[int, ...]
    fit: Fit
    channels: int
    max_pixels: int
    intensity: Intensity


@dataclass
class _Decoded:
    """A worker's result for one source file: per stored size, PNG bytes and (C, S, S) uint8."""

    reason: str | None = None                  # skip reason, None when decoded
    width: int = 0                             # oriented source size
    height: int = 0
    kind: str = "8-bit"                        # images.Source's kind, how and inverted
    how: str | None = None
    inverted: bool = False
    histogram: np.ndarray | None = None        # (256,) int64 grey levels of the first stored size, all channels
    colourless: bool = False                   # 3 channels, all equal (within 2 levels)
    outputs: list[_Stored] = field(default_factory=list)  # one per stored size


@dataclass
class _Stored:
    """One stored image: PNG bytes, (C, S, S) uint8 pixels, and per-channel sums for mean/std.

    Sums are computed in the worker (exact int64) to keep the single writer process light.
    """

    png: bytes
    pixels: np.ndarray
    channel_sum: np.ndarray     # (C,) int64, sum of pixel values
    channel_sum_sq: np.ndarray  # (C,) int64, sum of squared pixel values


_VALUES = np.arange(256, dtype=np.int64)


def _decode_one(settings: _DecodeSettings, item: tuple[str, str]) -> _Decoded:
    path, sha256 = item
    try:
        data = read_regular(path)
    except OSError as error:
        return _Decoded(reason=f"unreadable: {error.strerror or error}")
    if hashlib.sha256(data).hexdigest() != sha256:
        return _Decoded(reason="changed while the build was running; rebuild")
    try:
        source = img.read_source(data, settings.max_pixels, DRAFT_FACTOR * max(settings.stored_sizes), settings.intensity)
    except img.BadImage as error:
        return _Decoded(reason=str(error))
    image = img.to_channels(source.image, settings.channels)
    result = _Decoded(width=image.width, height=image.height, kind=source.kind, how=source.how, inverted=source.inverted)
    for stored in settings.stored_sizes:
        square = img.to_channels(img.quantize(img.fit_square(image, stored, settings.fit)), settings.channels)
        pixels = img.to_array(square)
        # Per-channel histograms give exact sums of v and v**2 without an int64 copy of the image.
        histograms = np.stack([np.bincount(channel.ravel(), minlength=256) for channel in pixels]).astype(np.int64)
        result.outputs.append(_Stored(img.encode_png(square), pixels, histograms @ _VALUES, histograms @ _VALUES**2))
        if result.histogram is None:
            result.histogram = histograms.sum(axis=0)
            result.colourless = len(pixels) == 3 and _colourless(pixels)
    return result


def _colourless(pixels: np.ndarray) -> bool:
    """True when the three channels of (3, S, S) uint8 pixels differ by at most 2 levels anywhere."""
    wide = pixels.astype(np.int16)
    return bool(np.abs(wide[0] - wide[1]).max() <= 2 and np.abs(wide[1] - wide[2]).max() <= 2)


# ---------------------------------------------------------------- writer side


class _SizeWriter:
    """Writes one output folder: tar shards, data.h5 and the train-split pixel statistics."""

    def __init__(self, folder: Path, size: int, stored_size: int, plan: SourcePlan, config: BuildConfig,
                 channels: int, buffer_bytes: int) -> None:
        self.folder, self.size, self.stored_size = folder, size, stored_size
        self.classes, self.channels, self.shard_size = plan.classes, channels, config.shard_size
        self.counts = {split: {name: 0 for name in plan.classes} for split in SPLITS}
        self.shards: list[ShardEntry] = []  # closed shards
        self.source_sizes: dict[str, int] = {}
        self._tars: dict[str, ShardWriter] = {}  # split -> open shard
        self._started: dict[tuple[str, str], int] = {}  # (split, class) -> shards begun
        self._sum = np.zeros(self.channels, dtype=np.int64)      # exact integer sums: order-free
        self._sum_sq = np.zeros(self.channels, dtype=np.int64)
        self._h5 = Hdf5Writer(folder / HDF5_NAME, size, stored_size, self.channels, plan.classes, SPLITS, buffer_bytes)

    def add(self, item: SourceItem, width: int, height: int, stored: _Stored) -> None:
        """Append one sample (its PNG, (C, S, S) uint8 pixels and pixel sums) to its split."""
        split = item.split
        sidecar = {"source": item.relpath, "class": item.class_name, "label": item.label,
                   "width": width, "height": height}
        self._shard_for(split, item.class_name).add(item.key, item.label, sidecar, stored.png)
        self.counts[split][item.class_name] += 1
        size_key = f"{width}x{height}"
        self.source_sizes[size_key] = self.source_sizes.get(size_key, 0) + 1
        if split == "train":
            self._sum += stored.channel_sum
            self._sum_sq += stored.channel_sum_sq
        self._h5.add(split, stored.pixels, item.label, item.key)

    def _shard_for(self, split: str, class_name: str) -> ShardWriter:
        current = self._tars.get(split)
        if current is not None and (current.class_name != class_name or current.count >= self.shard_size):
            self.shards.append(self._tars.pop(split).close())
            current = None
        if current is None:
            index = self._started.get((split, class_name), 0)
            self._started[split, class_name] = index + 1
            current = self._tars[split] = ShardWriter(self.folder, split, class_name, index)
        return current

    def abort(self) -> None:
        """Close every file without finishing it; never raises (see ShardWriter/Hdf5Writer.abort)."""
        for split in list(self._tars):
            self._tars.pop(split).abort()
        self._h5.abort()

    def finish(self, plan: SourcePlan, skipped: list[tuple[str, str]], config: BuildConfig,
               intensity: IntensityRecord) -> dict[str, Any]:
        """Close every file and return the manifest document."""
        for split in list(self._tars):
            self.shards.append(self._tars.pop(split).close())
        self._h5.close()
        n = sum(self.counts["train"].values()) * self.stored_size * self.stored_size
        mean = (self._sum / (255.0 * n)) if n else np.zeros(self.channels)
        var = (self._sum_sq / (255.0**2 * n) - mean**2) if n else np.zeros(self.channels)
        return {
            "format_version": FORMAT_VERSION,
            "tool_version": _tool_version(),
            "size": self.size,
            "stored_size": self.stored_size,
            "channels": self.channels,
            "classes": list(plan.classes),
            "counts": self.counts,
            "shards": [entry.to_json() for entry in sorted(self.shards, key=lambda entry: entry.path)],
            "hdf5": {"path": HDF5_NAME, "sha256": sha256_file(self.folder / HDF5_NAME)},
            "skipped": [{"path": path, "reason": reason} for path, reason in skipped],
            "mean": [round(float(m), 6) for m in mean],
            "std": [round(float(np.sqrt(max(v, 0.0))), 6) for v in var],
            "source_sizes": dict(sorted(self.source_sizes.items())),
            "ignored": plan.ignored,
            "options": config.to_dict(),
            "intensity": intensity.to_json(),
            "sample_checksums": True,  # shardformat writes png_sha256 into every sidecar, pixel_sha256 into data.h5
        }


# ---------------------------------------------------------------- the build


def _tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ddpm-pipeline")
    except PackageNotFoundError:
        return "unknown"


def _check_outputs(config: BuildConfig, folders: list[Path]) -> None:
    """Refuse, before any work, every output folder that cannot or must not be written."""
    find_classes(config.src)  # fail on a bad source layout before any work or progress bar
    for out in folders:
        _check_out_path(out, config)
        _check_out_state(out, config)


def _check_out_path(out: Path, config: BuildConfig) -> None:
    """The output must be a folder path apart from the source."""
    src, resolved = config.src.resolve(), out.resolve()
    if resolved == src or src in resolved.parents:
        raise BuildError(f"--out {out}: lies inside --src {config.src}; the source folder is never written to")
    if resolved in src.parents:
        raise BuildError(f"--out {out}: holds --src {config.src}; choose an --out outside the source folder")
    if out.is_symlink():
        raise BuildError(f"--out {out}: is a symbolic link; give the folder it points to, or another --out")
    blocker = next((p for p in [out, *out.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise BuildError(f"--out {out}: {blocker} is a file, not a folder; choose another --out")


def _check_out_state(out: Path, config: BuildConfig) -> None:
    """An existing output must be replaceable, nobody else may be writing it, its parent writable."""
    if out.exists() and not is_empty_folder(out):  # `mkdir out && ddpm-data build --out out` is fine
        check_replaceable(out)  # says why --overwrite would be refused, before suggesting it
        if not config.overwrite:
            raise BuildError(f"{out}: exists; pass --overwrite to replace it (or choose another --out)")
    holder = busy_holder(out)
    if holder is not None:
        raise BuildError(f"{out}: another build ({holder}) is writing it right now; wait for it to finish "
                         f"or choose another --out")
    parent = next(p for p in out.absolute().parents if p.exists())
    reason = unwritable(parent)
    if reason is not None:
        raise BuildError(f"--out {out}: cannot write into {parent} ({reason}); choose a writable --out")


def foreign_entries(folder: Path) -> list[str]:
    """Names of the entries of `folder` that a build does not write (folders, other files)."""
    return sorted(entry.name + ("/" if entry.is_dir() else "") for entry in folder.iterdir()
                  if entry.is_dir() or not entry.is_file() or not BUILD_FILE.fullmatch(entry.name))


def check_replaceable(folder: Path) -> None:
    """BuildError unless `folder` is empty or holds a build's output and nothing else."""
    check_owned(folder, MANIFEST_NAME, foreign_entries, BuildError, f"--out {folder}", "a build",
                "a build's output folder", "--out")


def _write_error(config: BuildConfig, error: OSError) -> BuildError:
    where = error.filename or config.out_for(config.size[0])
    reason = error.strerror or str(error)
    if config.src.resolve() in Path(where).resolve().parents:
        fix = "make the source readable"
    elif error.errno == errno.ENOSPC:
        fix = "free some disk space or choose another --out"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "choose a writable --out"
    else:
        fix = "check the path or choose another --out"
    return BuildError(f"{where}: {reason}; {fix}. Nothing was written; any previous output is unchanged")


def _strict_error(skipped: list[tuple[str, str]]) -> BuildError:
    lines = "\n".join(f"  {path}: {reason}" for path, reason in skipped)
    return BuildError(f"--strict: {len(skipped)} file(s) would be skipped:\n{lines}")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def build(config: BuildConfig, progress: bool = False, log: Callable[[str], None] = _stderr) -> list[Manifest]:
    """Build every size of `config`; returns the written manifests (one per size, same order).

    `progress` shows a rich progress bar on stderr (the CLI turns it on); `log` receives warnings
    (a class without training images), by default printed to stderr.

    Raises SourceError (bad source layout) or BuildError (bad options, an output that exists, is a
    file, holds files a build did not write or is being written by another build; `strict` with
    skipped files; a class left without usable images; an output that cannot be written, e.g. a
    full disk; a failed upload). Nothing is written to the output paths unless the whole build
    succeeds; at a URL, readers find no manifest until every other file is uploaded.
    """
    try:
        outputs = [config.out_for(size) for size in config.size]
        for out in outputs:
            check_writable(out, "--out")  # http(s):// and pipe: are read-only: refused before any image is read
    except ValueError as error:
        raise BuildError(str(error)) from None
    if not any(is_url(out) for out in outputs):
        _check_outputs(config, outputs)
        _build_guarded(config, outputs, progress, log)
        return [load_manifest(out) for out in outputs]
    if not all(is_url(out) for out in outputs):
        raise BuildError(f"--out {config.out}: either every size goes to a URL or none")
    for out in outputs:
        _check_url_out(out, config)
    with staging_folder() as staging:  # $TMPDIR: needs room for the whole output
        folders = [staging / str(size) for size in config.size]
        _check_outputs(config, folders)
        _build_guarded(config, folders, progress, log)
        try:
            for folder, out in zip(folders, outputs):
                upload_folder(folder, out, MANIFEST_NAME, config.overwrite, _owned)
            return [load_manifest(out) for out in outputs]
        except RemoteError as error:
            raise BuildError(f"--out {error}") from None


def _owned(name: str) -> bool:
    """A file name a build writes (or the manifest an interrupted upload staged)."""
    return bool(BUILD_FILE.fullmatch(name)) or name == f".{MANIFEST_NAME}.uploading"


def _check_url_out(out: str, config: BuildConfig) -> None:
    """The rules of a local --out, at a URL, before any work: an existing folder is replaced only
    with --overwrite, and only when it holds nothing but a build's files."""
    try:
        names = list_names(out)
    except RemoteError as error:
        raise BuildError(f"--out {error}") from None
    if not names:
        return
    if not config.overwrite:
        raise BuildError(f"{out}: exists; pass --overwrite to replace it (or choose another --out)")
    foreign = [name for name in names if not _owned(name)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise BuildError(f"--out {out}: also holds {shown}, which a build did not write; --overwrite would "
                         f"delete them. Move them out of the folder or choose another --out")


def _build_guarded(config: BuildConfig, folders: list[Path], progress: bool, log: Callable[[str], None]) -> None:
    """`_build`, with a busy output or an OS error turned into one BuildError line."""
    try:
        _build(config, folders, progress, log)
    except BusyError as error:
        raise BuildError(f"{error} or choose another --out") from None
    except OSError as error:
        raise _write_error(config, error) from error


def _in_flight(config: BuildConfig, workers: int) -> int:
    """Images the workers may run ahead of the writer: half of --buffer-mb, at most 16 per worker."""
    per_image = sum(2 * config.max_channels * config.stored_size(size) ** 2 for size in config.size)  # pixels + PNG
    return max(1, min(max(1, workers) * IN_FLIGHT_PER_WORKER, config.buffer_mb * (1 << 19) // per_image))


def _build(config: BuildConfig, folders: list[Path], progress: bool, log: Callable[[str], None]) -> None:
    """The build proper, into the local `folders` (one per size, atomically)."""
    workers = available_cores() if config.workers is None else config.workers
    hdf5_buffer = config.buffer_mb * (1 << 19) // len(config.size)  # the other half of --buffer-mb
    with _Progress(progress) as reporter, OrderedPool(workers) as pool:
        hashing = reporter.task("hashing source files")
        in_flight = max(1, workers) * IN_FLIGHT_PER_WORKER * 8
        plan = plan_source(config.src, config.val_fraction, partial(pool.map, chunksize=8, in_flight=in_flight),
                           on_file=hashing)
        survey = _survey(plan, config, partial(pool.map, chunksize=8, in_flight=in_flight),
                         reporter.task("surveying channels and intensities", total=len(plan.items)))
        channels, channels_note = survey.channels(config.channels)
        intensity = survey.intensity(config.intensity, config.window, config.percentiles)
        settings = _DecodeSettings(tuple(config.stored_size(s) for s in config.size), config.fit, channels,
                                   config.max_pixels, intensity)
        record = IntensityRecord(plan.classes, intensity, channels_note)
        skipped = list(plan.skipped)  # with --strict, all skips are collected first and reported together
        tasks = ((str(item.path), item.sha256) for item in plan.items)  # streamed from the plan's file
        decoded_stream = pool.map(partial(_decode_one, settings), tasks, chunksize=4,
                                  in_flight=_in_flight(config, workers))
        with _atomic_folders(folders, config.overwrite) as folders:
            writers = [_SizeWriter(folder, size, config.stored_size(size), plan, config, channels, hdf5_buffer)
                       for folder, size in zip(folders, config.size)]
            try:
                advance = reporter.task("decoding and resizing", total=len(plan.items))
                for item, decoded in zip(plan.items, decoded_stream):
                    advance()
                    if decoded.reason is not None:
                        skipped.append((item.relpath, decoded.reason))
                        continue
                    record.add(item.class_name, item.relpath, decoded.kind, decoded.how, decoded.inverted,
                               decoded.histogram, decoded.colourless)
                    for writer, stored in zip(writers, decoded.outputs):
                        writer.add(item, decoded.width, decoded.height, stored)
                skipped.sort()
                if config.strict and skipped:
                    raise _strict_error(skipped)
                _check_classes(writers[0], plan, skipped)
                _check_train_classes(writers[0], config, log)
                for line in record.warnings(channels):
                    log(line)
                for writer, folder in zip(writers, folders):
                    write_manifest(folder, writer.finish(plan, skipped, config, record))
            except BaseException:
                for writer in writers:
                    writer.abort()
                raise
            finally:
                plan.close()


def _survey(plan: SourcePlan, config: BuildConfig, map_files: Callable, advance: Callable[[], None]) -> Survey:
    """Probe every planned file (survey.py): whether all are grey, and their high-bit values."""
    survey = Survey()
    paths = (str(item.path) for item in plan.items)
    for probe in map_files(partial(probe_file, config.intensity, config.max_pixels), paths):
        advance()
        survey.add(probe)
    return survey


def _check_classes(writer: _SizeWriter, plan: SourcePlan, skipped: list[tuple[str, str]]) -> None:
    for name in plan.classes:
        if writer.counts["train"][name] + writer.counts["val"][name] == 0:
            reasons = [f"  {path}: {reason}" for path, reason in skipped if path.split("/", 1)[0] == name]
            raise BuildError(f"class '{name}': no usable images; every file was skipped:\n" + "\n".join(reasons[:20]))


def _check_train_classes(writer: _SizeWriter, config: BuildConfig, log: Callable[[str], None]) -> None:
    """A class whose every image went to val is never trained on: an error with --strict, else a warning."""
    for name, count in writer.counts["train"].items():
        if count == 0:
            message = (f"class '{name}': no training images (its {writer.counts['val'][name]} image(s) went to "
                       f"val by their content hash), so training never sees it; add images of this class or "
                       f"lower --val-fraction (now {config.val_fraction})")
            if config.strict:
                raise BuildError(f"--strict: {message}")
            log(f"warning: {message}")


class _atomic_folders:
    """Enter `atomic_folder` for every output folder; all are committed only on success."""

    def __init__(self, folders: list[Path], overwrite: bool) -> None:
        self._managers = [atomic_folder(folder, overwrite, check_replaceable) for folder in folders]

    def __enter__(self) -> list[Path]:
        entered = []
        try:
            for manager in self._managers:
                entered.append(manager.__enter__())
        except BaseException as error:  # discard the folders entered so far: never commit them half-built
            for manager in reversed(self._managers[:len(entered)]):
                manager.__exit__(type(error), error, error.__traceback__)
            raise
        return entered

    def __exit__(self, *exc: Any) -> bool:
        error = None
        for manager in self._managers:
            try:
                manager.__exit__(*exc)
            except BaseException as raised:  # keep going so no temp folder is left behind
                error = error or raised
        if error is not None and exc[0] is None:
            raise error
        return False


class _Progress:
    """A rich progress bar on stderr, or nothing (tests, library use)."""

    def __init__(self, enabled: bool) -> None:
        self._progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeRemainingColumn(), console=Console(stderr=True))

    def __enter__(self) -> "_Progress":
        if self._progress is not None:
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def task(self, description: str, total: int | None = None) -> Callable[[int | None], None]:
        """Register a task; returns `advance(total=None)`, which moves it on by one (and sets its total)."""
        if self._progress is None:
            return lambda total=None: None
        task_id = self._progress.add_task(description, total=total)

        def advance(total: int | None = None) -> None:
            self._progress.update(task_id, advance=1, **({"total": total} if total is not None else {}))

        return advance
