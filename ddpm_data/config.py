"""The options of the data side that the commands take: image fitting, the reader, augmentation.

Standard library only, so `cli.py` takes its option defaults from here without importing torch
(`--help` stays instant). Each field is one command-line option of the same name.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

from ddpm_data.balance import Balance, BalanceMode


class Fit(str, Enum):
    """How a non-square image becomes square before resizing."""

    CROP = "crop"      # centre crop to the shorter side (no distortion, loses the edges)
    SQUASH = "squash"  # resize both sides to the target (keeps everything, distorts)
    PAD = "pad"        # pad the shorter side with PAD_FILL (keeps everything, adds borders)


class IntensityRule(str, Enum):
    """How high-bit-depth grey values (16-bit PNG/TIFF, DICOM) become 8-bit; see intensity.py."""

    auto = "auto"  # PNG/TIFF from 0..2**bits-1 (the bits the dataset uses); DICOM as a viewer shows it
    window = "window"  # one fixed --window LOW,HIGH for every high-bit file (DICOM: modality values)
    percentile = "percentile"  # the window is the dataset's pooled --percentiles LOW,HIGH


class Interpolation(str, Enum):
    """Resampling of rotated/zoomed samples: shifted linear, exact Fourier shifts, or a `F.grid_sample` mode."""

    shifted_linear = "shifted-linear"  # prefilter + bilinear at a shifted grid: keeps the high frequencies, 3-5x faster
    fourier = "fourier"  # rotation as three Fourier-shift shears: exact; zoom: shifted linear
    bilinear = "bilinear"  # halves the power above 0.25 cycles/px at +-10 degrees
    bicubic = "bicubic"  # sharper than bilinear, ~3x slower on the CPU; overshoot is clamped


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation per sample; each transform is off at 0 (or crop=False)."""

    crop: bool = True  # random integer crop out of the stored margin; False: centre crop
    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.0  # probability of a vertical flip (off: anatomy has an up and a down)
    degrees: float = 10.0  # rotation angle uniform in [-degrees, degrees] about the crop centre
    zoom: float = 0.0  # zoom factor log-uniform in [1/(1+zoom), 1+zoom]; 0 = off
    brightness: float = 0.1  # brightness factor uniform in [1-b, 1+b]
    contrast: float = 0.1  # contrast factor uniform in [1-c, 1+c], around the mean grey level
    interpolation: Interpolation = Interpolation.fourier  # shifted-linear is 3-5x faster; on the quality bench it was not as close (docs/benchmarks.md)

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"--{name}: {getattr(self, name)} is not a probability in [0, 1]")
        if not 0.0 <= self.degrees <= 180.0:
            raise ValueError(f"--degrees: {self.degrees} is outside [0, 180]")
        for name in ("brightness", "contrast"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"--{name}: {getattr(self, name)} is outside [0, 1)")
        if not 0.0 <= self.zoom <= 1.0:
            raise ValueError(f"--zoom: {self.zoom} is outside [0, 1]")
        if self.interpolation not in list(Interpolation):
            valid = ", ".join(item.value for item in Interpolation)
            raise ValueError(f"--interpolation {self.interpolation!r}: unknown; valid: {valid}")
        object.__setattr__(self, "interpolation", Interpolation(self.interpolation))

    @classmethod
    def none(cls) -> "AugmentConfig":
        """Every transform off: the augmenter becomes a centre crop."""
        return cls(crop=False, hflip=0.0, vflip=0.0, degrees=0.0, zoom=0.0, brightness=0.0, contrast=0.0)

    @property
    def is_identity(self) -> bool:
        return self == AugmentConfig.none().replace(interpolation=self.interpolation)

    def replace(self, **changes) -> "AugmentConfig":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return AugmentConfig(**values)


AUGMENT_PRESETS = {"default": AugmentConfig(), "none": AugmentConfig.none()}


def augment_config(preset: str = "default", **overrides) -> AugmentConfig:
    """`--augment PRESET` plus per-field flags; overrides that are None keep the preset's value."""
    if preset not in AUGMENT_PRESETS:
        raise ValueError(f"--augment {preset!r}: unknown; valid: {', '.join(AUGMENT_PRESETS)}")
    return AUGMENT_PRESETS[preset].replace(**{key: value for key, value in overrides.items() if value is not None})


class ReaderMode(str, Enum):
    auto = "auto"
    stream = "stream"
    memory = "memory"


class OnError(str, Enum):
    """What a shard that fails its checksum or does not parse does."""

    raise_ = "raise"  # stop with an error naming the shard
    skip = "skip"  # leave it out, listed in `reader.skipped`


@dataclass(frozen=True)
class ReaderConfig:
    """How batches are drawn; 1:1 with the reader's CLI options."""

    batch_size: int = 8  # images per batch on each rank
    balance: Balance = Balance(BalanceMode.sqrt)  # class probabilities (balance.py); docs/design.md says why sqrt
    mode: ReaderMode = ReaderMode.auto
    memory_budget_mb: float = 2048.0  # auto picks memory when the split's pixels fit in this
    seed: int = 0
    workers: int = 0  # stream mode: DataLoader worker processes (0: read in this process)
    device: str = "cpu"  # where batches are delivered; memory mode keeps the split there
    on_error: OnError = OnError.raise_
    split: str = "train"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", _enum(ReaderMode, self.mode, "--mode"))
        object.__setattr__(self, "on_error", _enum(OnError, self.on_error, "on_error"))
        if isinstance(self.balance, str):
            object.__setattr__(self, "balance", Balance.parse(self.balance))
        if self.batch_size < 1:
            raise ValueError(f"--batch-size: must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ValueError(f"--workers: must be >= 0, got {self.workers}")
        if self.memory_budget_mb < 0:
            raise ValueError(f"--memory-budget-mb: must be >= 0, got {self.memory_budget_mb}")


def _enum(kind: type[Enum], value: Any, flag: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{flag} {value!r}: unknown; valid: {', '.join(item.value for item in kind)}") from None
