"""`ddpm-data preview`: what the trainer would receive, before training.

Draws `n` samples through the reader exactly as training would (same balance, mode and seed),
reports the empirical class shares next to the intended probabilities and the epoch length, how
much of the images' fine detail the augmentation keeps (the spectrum's high-frequency ratio of the
augmented batches against the plain centre crops of the same images; 1 = all of it), and
optionally writes a contact sheet of augmented samples, one row per class, with the plain centre
crops of the same images beneath so the augmentation can be judged by eye.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddpm_data.augment import AugmentConfig, Augmenter, center_crop
from ddpm_data.balance import draws_per_image
from ddpm_data.grid import save_grid
from ddpm_data.stream import ReaderConfig, open_reader


@dataclass(frozen=True)
class PreviewConfig:
    """Options of `ddpm-data preview`, 1:1 with its flags."""

    n: int = 1000  # samples drawn for the class shares
    grid: Path | None = None  # contact sheet of augmented samples (PNG), or None
    per_class: int = 8  # grid columns: samples shown per class
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"--n: must be >= 1, got {self.n}")
        if self.per_class < 1:
            raise ValueError(f"--per-class: must be >= 1, got {self.per_class}")


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (for pictures)."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def preview(shard_dir: str | Path, config: PreviewConfig) -> dict[str, Any]:
    """Draw `config.n` samples; returns the JSON report (see docs/data-pipeline.md)."""
    reader = open_reader(shard_dir, config.reader)
    try:
        labels, kept, images = _draw(reader, config)
    finally:
        reader.close()
    classes = reader.classes
    drawn = torch.bincount(labels, minlength=len(classes)).tolist()
    report: dict[str, Any] = {
        "fractions": {name: drawn[label] / len(labels) for label, name in enumerate(classes)},
        "expected": dict(reader.probabilities),
        "drawn": dict(zip(classes, drawn)),
        "n": len(labels),
        "mode": reader.mode.value,
        "balance": str(config.reader.balance),
        "batch_size": config.reader.batch_size,
        "epoch_length": reader.epoch_length,
        "epoch_samples": reader.epoch_samples,
        "draws_per_image_per_epoch": draws_per_image(reader.probabilities, reader.counts),
        "train_counts": dict(reader.counts),
        "skipped": list(reader.skipped),
        "spectrum_hf_ratio": _high_frequency_ratio(images, reader.manifest.size, config),
        "grid": None,
    }
    if config.grid is not None:
        report["grid"] = str(_write_grid(kept, classes, reader.manifest.size, config))
    return report


def _draw(reader, config: PreviewConfig) -> tuple[torch.Tensor, dict[int, list[torch.Tensor]], list[torch.Tensor]]:
    """Labels of the first n samples, up to `per_class` images of each class for the grid, and the batches."""
    labels, kept, batches = [], {}, []
    for _ in range(math.ceil(config.n / config.reader.batch_size)):
        images, batch_labels = next(reader)
        labels.append(batch_labels.cpu())
        batches.append(images)
        for image, label in zip(images.cpu(), batch_labels.tolist()):
            if len(kept.setdefault(label, [])) < config.per_class:
                kept[label].append(image)
    return torch.cat(labels)[: config.n], kept, batches


def _high_frequency_ratio(batches: list[torch.Tensor], size: int, config: PreviewConfig) -> float:
    """Spectrum power above 0.25 cycles/px of the augmented batches over the plain centre crops'."""
    from ddpm_data.spectrum import high_frequency_ratio, radial_power_spectrum

    augmenter = Augmenter(config.augment, size)
    generator = torch.Generator(device=batches[0].device).manual_seed(config.reader.seed)
    augmented = torch.cat([augmenter(images, generator)[0].cpu() for images in batches])
    plain = torch.cat([center_crop(images, size).cpu() for images in batches])
    frequency, reference = radial_power_spectrum(plain)
    return high_frequency_ratio(frequency, radial_power_spectrum(augmented)[1], reference)


def _write_grid(kept: dict[int, list[torch.Tensor]], classes: list[str], size: int, config: PreviewConfig) -> Path:
    augmenter = Augmenter(config.augment, size)
    generator = torch.Generator().manual_seed(config.reader.seed)
    rows = {}
    for label in sorted(kept):
        images = torch.stack(kept[label])
        augmented, _ = augmenter(images, generator)
        rows[classes[label]] = list(to_uint8(augmented).numpy())
        rows[f"{classes[label]} plain"] = list(to_uint8(center_crop(images, size)).numpy())
    return save_grid(rows, config.grid, tile=max(size, 64))


def format_report(report: dict[str, Any], folder: str | Path) -> str:
    """Human-readable lines for the terminal."""
    lines = [
        f"{folder}: mode {report['mode']}, balance {report['balance']}, {report['n']} samples drawn",
        f"epoch = {report['epoch_samples']} draws = {report['epoch_length']} batches of {report['batch_size']} "
        "(every training image drawn at least once on average)",
        f"{'class':<16} {'share':>7} {'expected':>9} {'images':>7} {'draws/image/epoch':>18}",
    ]
    for name, share in report["fractions"].items():
        lines.append(f"{name:<16} {share:7.3f} {report['expected'][name]:9.3f} {report['train_counts'][name]:7d} "
                     f"{report['draws_per_image_per_epoch'][name]:18.2f}")
    lines.append(f"augmented batches' spectrum HF ratio vs the plain crops: {report['spectrum_hf_ratio']:.3f} "
                 "(1 = detail kept, < 1 blurred)")
    for entry in report["skipped"]:
        lines.append(f"skipped {entry['path']}: {entry['reason']}")
    if report["grid"]:
        lines.append(f"grid: {report['grid']}")
    return "\n".join(lines)
