"""Training-step throughput of our U-Net vs diffusers' UNet2DModel at a matched configuration.

    python bench/unet.py                          # 96 px preset, CPU, float32 (~1.5 min)
    python bench/unet.py --size 48                # a quicker CPU run
    python bench/unet.py --device cuda --dtype bfloat16 --batch-size 64 --steps 20 --warmup 3

Both networks: the "96" preset's stages (64, 128, 128, 256 channels, 2 res blocks, attention
at the last two stages and the middle, 64 channels per head), scale-shift timestep conditioning,
a class embedding with a null class, the same dropout. Each step is forward + MSE loss +
backward + AdamW step (foreach) on the same batch; each model runs in the memory format
(contiguous or channels_last) that is faster for it in this run; steps of all four
(model, format) pairs are interleaved and the median counts, so a shared machine's load hits
both models alike. The last line is JSON:
ours_img_s, diffusers_img_s, ratio (ours / diffusers), flops_per_img (forward + backward,
counted with torch.utils.flop_counter), efficiency (our achieved FLOP/s over the FLOP/s of a
large matmul measured here). diffusers is a benchmark-only dependency (`pip install -e .[bench]`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_model.presets import PRESETS  # noqa: E402
from ddpm_model.schedule import NoiseSchedule  # noqa: E402
from ddpm_model.unet import UNet, UNetConfig  # noqa: E402

NUM_CLASSES = 2


@dataclass(frozen=True)
class BenchConfig:
    size: int = 96              # image size, pixels (a multiple of 8 for the 4-stage layout)
    batch_size: int = 2         # images per step (CPU default; use 32+ on a GPU)
    steps: int = 4              # timed steps per model and memory format (median counts)
    warmup: int = 1             # untimed steps per model and format after the first
    device: str = "cpu"         # "cpu" or "cuda"
    dtype: str = "float32"      # "float32" or "bfloat16" (autocast)
    dropout: float = 0.1        # in both models' residual blocks
    upsample: str = "bilinear"  # our upsampling mode (diffusers: nearest + conv)
    preset: str = "96"          # the layout both networks take: a preset of ddpm_model/presets.py
    seed: int = 0


def our_unet_config(config: BenchConfig) -> UNetConfig:
    """Our U-Net in the bench's layout: the preset at the bench's size, dropout and upsampling."""
    return dataclasses.replace(PRESETS[config.preset], num_classes=NUM_CLASSES, image_size=config.size,
                               dropout=config.dropout, upsample=config.upsample)


def ours(config: BenchConfig, unet_config: UNetConfig | None = None) -> nn.Module:
    """Our U-Net: `unet_config` when given (e.g. the one a trainer resolved), else the bench's layout."""
    unet_config = unet_config or our_unet_config(config)

    class Ours(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = UNet(unet_config)

        def forward(self, x, t, labels):
            return self.net(x, t, labels)

    return Ours()


def diffusers_unet(config: BenchConfig) -> nn.Module:
    from diffusers import UNet2DModel

    preset = PRESETS[config.preset]
    channels = tuple(preset.model_channels * m for m in preset.channel_multipliers)
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in preset.use_attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(preset.use_attention))
    net = UNet2DModel(
        sample_size=config.size, in_channels=3, out_channels=3, block_out_channels=channels,
        layers_per_block=preset.num_res_blocks, down_block_types=down, up_block_types=up,
        attention_head_dim=preset.attention_head_channels, norm_num_groups=preset.norm_groups,
        resnet_time_scale_shift="scale_shift",
        num_class_embeds=NUM_CLASSES + 1, dropout=config.dropout, add_attention=True)

    class Diffusers(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, t, labels):
            return self.net(x, t, class_labels=labels).sample

    return Diffusers()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: nn.Module, config: BenchConfig, device: torch.device,
              memory_format: torch.memory_format) -> Callable[[], None]:
    """One training step on a fixed batch, noised with our cosine schedule."""
    g = torch.Generator().manual_seed(config.seed)
    n, s = config.batch_size, config.size
    schedule = NoiseSchedule(1000, "cosine")
    x0 = torch.rand(n, 3, s, s, generator=g) * 2 - 1
    noise = torch.randn(n, 3, s, s, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    x_t = schedule.q_sample(x0, t, noise).to(device).contiguous(memory_format=memory_format)
    noise, t = noise.to(device).contiguous(memory_format=memory_format), t.to(device)
    labels = torch.randint(0, NUM_CLASSES + 1, (n,), generator=g).to(device)
    model.to(device=device, memory_format=memory_format).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=config.dtype == "bfloat16")

    def step() -> None:
        with autocast:
            loss = F.mse_loss(model(x_t, t, labels).float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_steps(step: Callable[[], None], count: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(count):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / count


FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def median_step_seconds(builders: dict[str, Callable[[BenchConfig], nn.Module]], config: BenchConfig,
                        device: torch.device) -> dict[tuple[str, str], float]:
    """{(model, memory format): median seconds per step} over every model and format.

    Every (model, format) pair is warmed up, then the pairs take turns, one step each, for
    `steps` rounds; the median step time per pair counts. Interleaving spreads a shared
    machine's load over all pairs instead of penalising whichever ran during a busy spell."""
    steps = {}
    for name, build in builders.items():
        for fmt_name, fmt in FORMATS.items():
            torch.manual_seed(config.seed)
            step = make_step(build(config), config, device, fmt)
            for _ in range(1 + config.warmup):  # first call: allocation, kernel selection
                step()
            steps[name, fmt_name] = step
    times: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    for _ in range(config.steps):
        for key, step in steps.items():
            times[key].append(time_steps(step, 1, device))
    return {key: statistics.median(values) for key, values in times.items()}


def best_formats(medians: dict[tuple[str, str], float], batch_size: int) -> dict[str, tuple[float, str]]:
    """{model: (images/s, memory format)} in each model's faster format; prints every format's."""
    result = {}
    for name in dict.fromkeys(name for name, _ in medians):
        by_format = {fmt: medians[name, fmt] for fmt in FORMATS}
        for fmt, seconds in by_format.items():
            print(f"{name}: {fmt} {batch_size / seconds:.3f} img/s", flush=True)
        best = min(by_format, key=by_format.get)
        result[name] = (batch_size / by_format[best], best)
    return result


def throughputs(builders: dict[str, Callable[[BenchConfig], nn.Module]], config: BenchConfig,
                device: torch.device) -> dict[str, tuple[float, str]]:
    """{model: (images/s, memory format)} in each model's faster format (`median_step_seconds`)."""
    return best_formats(median_step_seconds(builders, config, device), config.batch_size)


def count_flops_per_image(config: BenchConfig, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = ours(config).to(device)
    n, s = config.batch_size, config.size
    x = torch.randn(n, 3, s, s, device=device)
    t = torch.randint(0, 1000, (n,), device=device)
    labels = torch.zeros(n, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter:
        F.mse_loss(model(x, t, labels), x).backward()
    return counter.get_total_flops() / n


def matmul_flops_per_second(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul: what this device can do at best in this dtype."""
    side = 4096 if device.type == "cuda" else 1024
    a = torch.randn(side, side, device=device, dtype=dtype)
    b = torch.randn(side, side, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    repeats = 50 if device.type == "cuda" else 5
    seconds = time_steps(lambda: a @ b, repeats, device)
    return 2 * side ** 3 / seconds


def parse_args() -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = BenchConfig()
    parser.add_argument("--size", type=int, default=defaults.size, help="image size, px")
    parser.add_argument("--preset", default=defaults.preset, choices=sorted(PRESETS),
                        help="the layout both networks take (tiny: 3 stages, attention at the last)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help="timed steps per model and memory format (median counts)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup,
                        help="extra untimed steps per model and format")
    parser.add_argument("--device", default=defaults.device, choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=defaults.dtype, choices=["float32", "bfloat16"])
    parser.add_argument("--upsample", default=defaults.upsample,
                        choices=["bilinear", "bicubic", "nearest", "conv_transpose"])
    args = parser.parse_args()
    halvings = 2 ** (len(PRESETS[args.preset].channel_multipliers) - 1)
    if args.size % halvings:
        parser.error(f"--size: {args.size} must be a multiple of {halvings} (the {args.preset} preset's stages)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; use --device cpu")
    return BenchConfig(size=args.size, batch_size=args.batch_size, steps=args.steps,
                       warmup=args.warmup, device=args.device, dtype=args.dtype,
                       upsample=args.upsample, preset=args.preset)


def main() -> None:
    config = parse_args()
    device = torch.device(config.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    params_ours = count_parameters(ours(config))
    params_theirs = count_parameters(diffusers_unet(config))
    difference = abs(params_ours - params_theirs) / params_theirs
    print(f"parameters: ours {params_ours:,}, diffusers {params_theirs:,} "
          f"({difference:.1%} apart)")
    if difference > 0.15:
        raise SystemExit("configurations are not matched: parameter counts differ by > 15%")
    print(f"{config.size} px, batch {config.batch_size}, {config.dtype} on {device}, "
          f"{torch.get_num_threads()} threads", flush=True)
    measured = throughputs({"ours": ours, "diffusers": diffusers_unet}, config, device)
    (ours_img_s, ours_format), (theirs_img_s, theirs_format) = measured.values()
    flops_per_img = count_flops_per_image(config, device)
    peak = matmul_flops_per_second(
        device, torch.bfloat16 if config.dtype == "bfloat16" else torch.float32)
    efficiency = ours_img_s * flops_per_img / peak
    print(f"ours {ours_img_s:.2f} img/s ({ours_format}), diffusers {theirs_img_s:.2f} img/s "
          f"({theirs_format}); {flops_per_img / 1e9:.1f} GFLOP/img; matmul "
          f"{peak / 1e9:.0f} GFLOP/s")
    print(json.dumps({
        "ours_img_s": round(ours_img_s, 3), "diffusers_img_s": round(theirs_img_s, 3),
        "ratio": round(ours_img_s / theirs_img_s, 3), "flops_per_img": int(flops_per_img),
        "efficiency": round(efficiency, 4), "params_ours": params_ours,
        "params_diffusers": params_theirs, "size": config.size,
        "batch_size": config.batch_size, "device": config.device, "dtype": config.dtype,
        "format_ours": ours_format, "format_diffusers": theirs_format,
    }))


if __name__ == "__main__":
    main()
