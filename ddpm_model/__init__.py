"""Class-conditional DDPM: U-Net, noise schedule, loss, DDPM/DDIM sampling with guidance, EMA.

    from ddpm_model import create_ddpm
    model = create_ddpm(image_size=96, model_channels=64, channel_multipliers=(1, 2, 2, 4),
                        num_res_blocks=2, use_attention=(0, 0, 1, 1), num_classes=2)
    # or: DDPM(PRESETS["96"], DiffusionConfig()) with ddpm_model.presets.PRESETS
"""
from .diffusion import DDPM, DiffusionConfig, Prediction, Sampler, create_ddpm
from .ema import EMA
from .schedule import BetaSchedule, NoiseSchedule
from .unet import UNet, UNetConfig, UpsampleMode, count_parameters, describe

__all__ = [
    "BetaSchedule", "DDPM", "DiffusionConfig", "EMA", "NoiseSchedule", "Prediction", "Sampler",
    "UNet", "UNetConfig", "UpsampleMode", "count_parameters", "create_ddpm", "describe",
]
