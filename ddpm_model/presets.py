"""Architectures per training resolution, from the analysis' table (plus `tiny` for CPU tests).

    python -m ddpm_model.presets      # print the flow and parameter counts of every preset
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .diffusion import DDPM, DDPMConfig, create_ddpm
from .unet import describe


@dataclass(frozen=True)
class Preset:
    """The architecture keyword arguments of `create_ddpm` for one resolution."""

    name: str
    image_size: int
    model_channels: int
    channel_multipliers: tuple[int, ...]
    num_res_blocks: int
    use_attention: tuple[bool, ...]
    norm_groups: int = 32
    estimate: str = ""  # the analysis' parameter estimate, for the docs

    def kwargs(self, num_classes: int, **overrides: Any) -> dict[str, Any]:
        """create_ddpm keyword arguments; `overrides` (e.g. image_size=16, aug_dim=6) win."""
        fields = {f.name for f in dataclasses.fields(DDPMConfig)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"overrides: unknown create_ddpm arguments {unknown}; valid: "
                             f"{sorted(fields)}")
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name in fields}
        return {**base, "num_classes": num_classes, **overrides}

    def config(self, num_classes: int, **overrides: Any) -> DDPMConfig:
        return DDPMConfig(**self.kwargs(num_classes, **overrides))

    def create(self, num_classes: int, **overrides: Any) -> DDPM:
        return create_ddpm(**self.kwargs(num_classes, **overrides))


PRESETS: dict[str, Preset] = {
    preset.name: preset for preset in (
        Preset("40", 40, 64, (1, 2, 4), 2, (False, False, True), estimate="~15-20M"),
        Preset("96", 96, 64, (1, 2, 2, 4), 2, (False, False, True, True), estimate="~30-35M"),
        Preset("128", 128, 64, (1, 2, 2, 4, 8), 2, (False, False, False, True, True),
               estimate="~40-50M"),
        Preset("256", 256, 64, (1, 2, 2, 4, 4, 8), 2, (False, False, False, False, True, True),
               estimate="~50-60M"),
        # CPU tests and demos: any image_size divisible by 4 (16, 32, ...); a few seconds a step.
        Preset("tiny", 32, 32, (1, 2, 2), 1, (False, False, True), norm_groups=8),
    )
}


def preset_for_size(size: int) -> Preset:
    """The preset trained at `size` pixels; 16 and 32 give `tiny` at that size."""
    for preset in PRESETS.values():
        if preset.name != "tiny" and preset.image_size == size:
            return preset
    if size in (16, 32):
        return dataclasses.replace(PRESETS["tiny"], image_size=size)
    sizes = ", ".join(str(p.image_size) for p in PRESETS.values() if p.name != "tiny")
    raise ValueError(f"size: no preset for {size} px; presets exist for {sizes} (and 'tiny' "
                     f"at 16 or 32); or pass the architecture to create_ddpm yourself")


def describe_presets(num_classes: int = 2) -> str:
    """Markdown: each preset's flow diagram (generated from the model) and its parameters."""
    parts = []
    for preset in PRESETS.values():
        estimate = f" (analysis estimate {preset.estimate})" if preset.estimate else ""
        parts.append(f"### Preset `{preset.name}`: {preset.image_size} px, "
                     f"multipliers {preset.channel_multipliers}, attention "
                     f"{tuple(int(a) for a in preset.use_attention)}{estimate}\n\n```\n"
                     f"{describe(preset.config(num_classes).unet_config())}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":  # pragma: no cover
    print(describe_presets())
