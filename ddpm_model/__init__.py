"""Class-conditional DDPM: U-Net, noise schedule, loss, DDPM/DDIM sampling with guidance, EMA.

    from ddpm_model import create_ddpm
    model = create_ddpm(image_size=96, model_channels=64, channel_multipliers=(1, 2, 2, 4),
                        num_res_blocks=2, use_attention=(0, 0, 1, 1), num_classes=2)
    # or: DDPM(PRESETS["96"], DiffusionConfig()) with ddpm_model.presets.PRESETS

The names below are imported on first use, so `import ddpm_model.config` (what the CLI reads for
its option defaults) does not load torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DDPM": "diffusion", "DiffusionConfig": "diffusion", "Prediction": "diffusion", "Sampler": "diffusion",
    "create_ddpm": "diffusion", "EMA": "ema", "BetaSchedule": "schedule", "NoiseSchedule": "schedule",
    "UNet": "unet", "UNetConfig": "unet", "UpsampleMode": "unet", "count_parameters": "unet",
    "describe": "unet",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ddpm_model' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
