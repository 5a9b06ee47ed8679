"""Architectures per training resolution (docs/design.md's table, plus `tiny` for CPU tests), a
derived architecture for any other size, and the recommended batch size of each.

    python -m ddpm_model.presets      # print the flow and parameter counts of every preset

A preset is a complete `UNetConfig`; a change is `dataclasses.replace(preset, ...)`, which
`resolve_model` does for the data's size, channels and classes and for the options a user set.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from .diffusion import DIFFUSION_FIELDS, UNET_FIELDS, DiffusionConfig
from .unet import UNetConfig, describe

PRESETS: dict[str, UNetConfig] = {
    "40": UNetConfig(40, 64, (1, 2, 4), 2, (False, False, True)),
    "96": UNetConfig(96, 64, (1, 2, 2, 4), 2, (False, False, True, True)),
    "128": UNetConfig(128, 64, (1, 2, 2, 4, 8), 2, (False, False, False, True, True)),
    "256": UNetConfig(256, 64, (1, 2, 2, 4, 4, 8), 2, (False, False, False, False, True, True)),
    # CPU tests and demos: any image_size divisible by 4 (16, 32, ...); a few seconds a step.
    "tiny": UNetConfig(32, 32, (1, 2, 2), 1, (False, False, True), norm_groups=8),
}


class PresetNotes(NamedTuple):
    batch_size: int  # images per step on an 8 GB GPU (docs/design.md); tiny: a CPU batch
    estimate: str    # docs/design.md's parameter estimate, shown next to the real count
    lr: float        # AdamW learning rate: measured for tiny (docs/benchmarks.md); 1e-4 as in
                     # diffusers' examples for the 16-70M-parameter presets (not measured here)


NOTES: dict[str, PresetNotes] = {
    "40": PresetNotes(8, "~15-20M", 1e-4),
    "96": PresetNotes(6, "~30-35M", 1e-4),
    "128": PresetNotes(4, "~40-50M", 1e-4),
    "256": PresetNotes(2, "~50-60M", 1e-4),
    "tiny": PresetNotes(16, "", 1e-3),
}

# Derived architectures: stage count -> channel multipliers, following the presets' pattern.
MULTIPLIERS = {3: (1, 2, 4), 4: (1, 2, 2, 4), 5: (1, 2, 2, 4, 8), 6: (1, 2, 2, 4, 4, 8),
               7: (1, 2, 2, 4, 4, 8, 8)}
BOTTLENECK = (8, 12)  # px at the lowest resolution, as in the presets: attention there is cheap
TINY_SIZES = (16, 32)


def _sized_presets() -> dict[int, str]:
    return {config.image_size: name for name, config in PRESETS.items() if name != "tiny"}


def derive_preset(size: int) -> UNetConfig | None:
    """The fewest stages (3-7) whose bottleneck, size / 2^(stages-1), is a whole number of
    8-12 px; 64 channels, 2 residual blocks, attention at the two lowest resolutions.
    None when no stage count fits."""
    for stages, multipliers in MULTIPLIERS.items():
        factor = 2 ** (stages - 1)
        if size % factor == 0 and BOTTLENECK[0] <= size // factor <= BOTTLENECK[1]:
            attention = (False,) * (stages - 2) + (True, True)
            return UNetConfig(size, 64, multipliers, 2, attention)
    return None


def preset_for_size(size: int) -> UNetConfig:
    """The architecture for `size` px: the preset trained at that size (40, 96, 128, 256),
    `tiny` at 16 or 32, otherwise `derive_preset(size)` (160 -> 5 stages, bottleneck 10 px).
    Raises ValueError naming nearby sizes that work."""
    sized = _sized_presets()
    if size in sized:
        return PRESETS[sized[size]]
    if size in TINY_SIZES:
        return dataclasses.replace(PRESETS["tiny"], image_size=size)
    derived = derive_preset(size)
    if derived is None:
        lower = [s for s in _workable_sizes() if s < size][-2:]
        higher = [s for s in _workable_sizes() if s > size][:2]
        raise ValueError(
            f"size: no architecture for {size} px: no 3-7 stage U-Net halves it down to a whole "
            f"{BOTTLENECK[0]}-{BOTTLENECK[1]} px bottleneck; nearby sizes that work: "
            f"{', '.join(map(str, lower + higher))}; or name a preset and override its fields")
    return derived


def _workable_sizes() -> list[int]:
    derivable = {b * 2 ** (stages - 1) for stages in MULTIPLIERS
                 for b in range(BOTTLENECK[0], BOTTLENECK[1] + 1)}
    return sorted(derivable | set(TINY_SIZES) | set(_sized_presets()))


def nearest_notes(config_or_size: UNetConfig | int) -> tuple[PresetNotes, float]:
    """(the notes of the preset an architecture is closest to, its pixel ratio past the largest
    preset): tiny's for the tiny layout; else the nearest preset at or above its size."""
    config = (preset_for_size(config_or_size) if isinstance(config_or_size, int)
              else config_or_size)
    tiny = PRESETS["tiny"]
    if (config.model_channels, config.channel_multipliers, config.num_res_blocks) == (
            tiny.model_channels, tiny.channel_multipliers, tiny.num_res_blocks):
        return NOTES["tiny"], 1.0
    sized = _sized_presets()
    for size in sorted(sized):
        if size >= config.image_size:
            return NOTES[sized[size]], 1.0
    largest = max(sized)
    return NOTES[sized[largest]], config.image_size ** 2 / largest ** 2


def default_batch_size(config_or_size: UNetConfig | int) -> int:
    """The recommended batch size: a preset's own (`NOTES`); for any other architecture, that
    of the nearest preset at or above its pixel count; past the largest preset, its batch
    scaled down by the pixel ratio (at least 1)."""
    notes, ratio = nearest_notes(config_or_size)
    return max(1, int(notes.batch_size / ratio))


def default_lr(config_or_size: UNetConfig | int) -> float:
    """The recommended AdamW learning rate, from the same preset as `default_batch_size`."""
    return nearest_notes(config_or_size)[0].lr


def resolve_model(size: int, in_channels: int, num_classes: int, preset: str | None = None,
                  overrides: dict[str, Any] | None = None
                  ) -> tuple[UNetConfig, DiffusionConfig]:
    """The model for data of `size` px, `in_channels` and `num_classes`: the named `preset`
    (or `preset_for_size(size)`), then `overrides`, keyed by UNetConfig and DiffusionConfig
    field names (e.g. {"model_channels": 32, "num_timesteps": 100, "aug_dim": 9})."""
    if preset is None:
        base = preset_for_size(size)
    elif preset in PRESETS:
        base = PRESETS[preset]
    else:
        raise ValueError(f"preset: {preset!r} unknown; valid: {', '.join(PRESETS)}")
    overrides = dict(overrides or {})
    from_data = sorted(set(overrides) & {"image_size", "in_channels", "num_classes"})
    if from_data:
        raise ValueError(f"overrides: {from_data} come from the data; pass them as size, "
                         f"in_channels and num_classes")
    unknown = sorted(set(overrides) - set(UNET_FIELDS) - set(DIFFUSION_FIELDS))
    if unknown:
        valid = [n for n in UNET_FIELDS + DIFFUSION_FIELDS
                 if n not in ("image_size", "in_channels", "num_classes")]
        raise ValueError(f"overrides: unknown model fields {unknown}; valid: {', '.join(valid)}")
    unet = dataclasses.replace(
        base, image_size=size, in_channels=in_channels, num_classes=num_classes,
        **{k: v for k, v in overrides.items() if k in UNET_FIELDS})
    diffusion = DiffusionConfig(**{k: v for k, v in overrides.items() if k in DIFFUSION_FIELDS})
    return unet, diffusion


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A run's model, resolved once: the preset's name, the U-Net, the diffusion, and the batch
    size and learning rate recommended for it (used where the user gave none)."""

    preset: str
    unet: UNetConfig
    diffusion: DiffusionConfig
    batch_size: int
    lr: float


def resolve_architecture(size: int, in_channels: int, num_classes: int, preset: str | None = None,
                         overrides: dict[str, Any] | None = None) -> Architecture:
    """`resolve_model`, named (the preset given, the one for `size`, or 'derived (N px)'), with
    its recommended batch size and learning rate."""
    unet, diffusion = resolve_model(size, in_channels, num_classes, preset, overrides)
    return Architecture(preset or preset_name(size), unet, diffusion, default_batch_size(unet), default_lr(unet))


def preset_name(size: int) -> str:
    """The name of the preset `preset_for_size` picks, or 'derived (N px)' for a size without one."""
    def shape(config: UNetConfig) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(config).items() if k != "image_size"}

    chosen = shape(preset_for_size(size))
    return next((name for name, preset in PRESETS.items() if shape(preset) == chosen), f"derived ({size} px)")


def describe_presets(num_classes: int = 2) -> str:
    """Markdown: each preset's flow diagram (generated from the model) and its parameters."""
    parts = []
    for name, preset in PRESETS.items():
        config, notes = dataclasses.replace(preset, num_classes=num_classes), NOTES[name]
        estimate = f" (design estimate {notes.estimate})" if notes.estimate else ""
        parts.append(f"### Preset `{name}`: {config.image_size} px, "
                     f"multipliers {config.channel_multipliers}, attention "
                     f"{tuple(int(a) for a in config.use_attention)}, batch "
                     f"{notes.batch_size}{estimate}\n\n```\n{describe(config)}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":  # pragma: no cover
    print(describe_presets())
