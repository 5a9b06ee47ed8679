"""Benchmark the training data path: augmented batches per second at 96 px, ours vs transform-resize.

In one run, on one generated source folder (`ddpm_data.synth`: 437 normal + 85 abnormal RGB
images of 128 px) and the same cores:
- ours, memory mode: shards built at 96 px (stored 105), split held in memory, `Augmenter` with
  the default recipe (crop, flip 0.5, rotation +-10 deg, brightness/contrast 0.1) on the device;
- ours, stream mode: the tar shards decoded by `--workers` DataLoader workers, same augmentation;
- baseline, "Approach 1" of docs/design.md (transform-resize): torchvision `ImageFolder` on the source PNGs with
  Resize(105) -> RandomCrop(96) -> RandomHorizontalFlip -> RandomRotation(10) -> ColorJitter(0.1,
  0.1) -> ToTensor -> Normalize(0.5, 0.5) (the 140 -> 128 recipe scaled to 96 px), DataLoader with
  the same workers and batch size, batches moved to the device;
- the floor: one bare `F.grid_sample` (bilinear, reflection, as ours) of the same batch, already
  float, the resampling no augmentation of rotated samples can avoid; timed right after each of
  our memory-mode batches. limit_ratio = median over those pairs of its time / our time per batch
  (reader + augmentation).
Contenders run in alternating rounds of `--seconds`; each one's best round counts.
Also the data wait a trainer sees per step: time blocked in next(reader) + augmentation while a
model step of `--step-ms` runs between batches (simulated with sleep: the device computes, the
host is free, as on a GPU).

    python bench/data_path.py [--batch-size 32] [--workers 2] [--seconds 2] [--rounds 3] [--step-ms 100]

Last line: JSON with ours_img_s (memory mode), baseline_img_s, ratio, limit_ratio and the
per-mode figures. Goals on a 2-core CPU, memory mode: ratio >= 4, limit_ratio >= 0.5.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_data.augment import AugmentConfig, Augmenter  # noqa: E402
from ddpm_data.config import Interpolation  # noqa: E402
from ddpm_data.shards import BuildConfig, build  # noqa: E402
from ddpm_data.stream import ReaderConfig, open_reader  # noqa: E402
from ddpm_data.synth import SynthConfig, synthesize  # noqa: E402

SIZE = 96


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device) -> float:
    begin = time.perf_counter()
    function()
    sync(device)
    return time.perf_counter() - begin


class Contender:
    """A batch source timed in rounds: `batch()` delivers one augmented batch on the device."""

    def __init__(self, name: str, batch, floor=None):
        self.name, self.batch, self.floor = name, batch, floor
        self.floor_ratios: list[float] = []  # bare grid_sample time / our time, pairwise

    def run(self, seconds: float, device: torch.device, warmup: int = 3) -> list[float]:
        """One round: seconds per batch for about `seconds`."""
        for _ in range(warmup):  # also drops what loader workers prefetched while others ran
            self.batch()
        sync(device)
        durations, start = [], time.perf_counter()
        while time.perf_counter() - start < seconds:
            duration = timed(self.batch, device)
            durations.append(duration)
            if self.floor is not None:  # interleaved, so both see the same machine load
                self.floor_ratios.append(timed(self.floor, device) / duration)
        return durations


def figures(durations: list[float], batch_size: int) -> dict:
    per_batch = statistics.median(durations)
    return {"img_s": batch_size / per_batch, "ms_per_batch": 1000 * per_batch, "batches": len(durations)}


def data_wait(batch, device: torch.device, step_s: float, steps: int = 10) -> float:
    """Median time blocked per step when a model step of `step_s` runs between batches."""
    waits = []
    for _ in range(steps):
        time.sleep(step_s)
        waits.append(timed(batch, device))
    return statistics.median(waits)


def our_source(shards: Path, mode: str, args, device: torch.device, batch_size: int) -> tuple:
    config = ReaderConfig(batch_size=batch_size, mode=mode, workers=args.workers if mode == "stream" else 0,
                          device=str(device), seed=0)
    reader = open_reader(shards, config)
    augmenter = Augmenter(AugmentConfig(interpolation=args.interpolation or AugmentConfig().interpolation), SIZE)
    generator = torch.Generator(device).manual_seed(0)

    def batch():
        images, _ = next(reader)
        return augmenter(images, generator)

    return reader, batch


def bare_grid_sample(reader, args, device: torch.device):
    """One grid_sample (bilinear, reflection, as ours) of a float batch to 96 px, rotated +-10 deg."""
    images = next(reader)[0].float()
    stored = images.shape[-1]
    generator = torch.Generator().manual_seed(0)
    angle = (torch.rand(args.batch_size, generator=generator) * 2 - 1) * math.radians(10)
    scale = SIZE / stored
    zeros = torch.zeros_like(angle)
    theta = torch.stack([torch.stack([scale * angle.cos(), -scale * angle.sin(), zeros], 1),
                         torch.stack([scale * angle.sin(), scale * angle.cos(), zeros], 1)], 1)
    grid = F.affine_grid(theta, [args.batch_size, 3, SIZE, SIZE], align_corners=False).contiguous().to(device)

    def run():
        F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    return run


def baseline_source(src: Path, args, device: torch.device, batch_size: int):
    """Transform-resize (docs/design.md) at 96 px: the 140 -> 128 recipe scaled to 105 -> 96."""
    from torchvision import datasets, transforms

    stored = round(SIZE * 140 / 128)
    transform = transforms.Compose([
        transforms.Resize((stored, stored)),
        transforms.RandomCrop((SIZE, SIZE)),
        transforms.RandomHorizontalFlip(p=0.5),
        transforms.RandomRotation(degrees=10),
        transforms.ColorJitter(brightness=0.1, contrast=0.1),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
    ])
    dataset = datasets.ImageFolder(str(src), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, persistent_workers=args.workers > 0,
                                         pin_memory=device.type == "cuda")
    batches = itertools.chain.from_iterable(itertools.repeat(loader))

    def batch():
        images, labels = next(batches)
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 2))
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per contender per round")
    parser.add_argument("--rounds", type=int, default=3, help="contenders alternate; best round counts")
    parser.add_argument("--step-ms", type=float, default=100.0, help="simulated model step for the data wait")
    parser.add_argument("--preset-batch", type=int, default=6, help="batch size of the 96 px preset (the trainer's)")
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 2),
                        help="torch intra-op threads of our data path: the cores the baseline's workers get "
                             "(1 is steadier when other jobs share the machine)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--interpolation", default=None, choices=[item.value for item in Interpolation],
                        help="the rotation's resampling on our side (default: the augmentation default's)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        src = synthesize(SynthConfig(out=Path(tmp) / "src", size=128, seed=0, masks=False))
        shards = Path(tmp) / "shards" / str(SIZE)
        build(BuildConfig(src=src, size=(SIZE,), out=str(shards)))
        memory_reader, memory_batch = our_source(shards, "memory", args, device, args.batch_size)
        stream_reader, stream_batch = our_source(shards, "stream", args, device, args.batch_size)
        contenders = [
            Contender("memory", memory_batch, floor=bare_grid_sample(memory_reader, args, device)),
            Contender("stream", stream_batch),
            Contender("baseline", baseline_source(src, args, device, args.batch_size)),
        ]
        best: dict[str, dict] = {}
        for _ in range(args.rounds):  # alternate, keep each contender's best round: the machine may be shared
            for contender in contenders:
                round_figures = figures(contender.run(args.seconds, device), args.batch_size)
                if round_figures["img_s"] > best.get(contender.name, {"img_s": 0.0})["img_s"]:
                    best[contender.name] = round_figures
        best["memory"]["limit_ratio"] = statistics.median(contenders[0].floor_ratios)
        stream_reader.close()
        del contenders  # stop the loader workers before the next ones start
        # The trainer's view at the 96 px preset's batch size: time blocked per step.
        waits = {}
        for name, make in (("memory", lambda: our_source(shards, "memory", args, device, args.preset_batch)[1]),
                           ("stream", lambda: our_source(shards, "stream", args, device, args.preset_batch)[1]),
                           ("baseline", lambda: baseline_source(src, args, device, args.preset_batch))):
            batch = make()
            for _ in range(3):
                batch()
            waits[name] = 1000 * data_wait(batch, device, args.step_ms / 1000)
            del batch
    memory, stream, base = best["memory"], best["stream"], best["baseline"]
    result = {
        "device": str(device), "threads": torch.get_num_threads(), "batch_size": args.batch_size,
        "workers": args.workers, "size": SIZE,
        "ours_img_s": round(memory["img_s"], 1),
        "baseline_img_s": round(base["img_s"], 1),
        "ratio": round(memory["img_s"] / base["img_s"], 2),
        "limit_ratio": round(memory["limit_ratio"], 2),
        "stream_img_s": round(stream["img_s"], 1),
        "stream_ratio": round(stream["img_s"] / base["img_s"], 2),
        "memory": {k: round(v, 3) for k, v in memory.items()},
        "stream": {k: round(v, 3) for k, v in stream.items()},
        "baseline": {k: round(v, 3) for k, v in base.items()},
        "wait_ms_per_step": {k: round(v, 2) for k, v in waits.items()},
        "wait_batch_size": args.preset_batch,
        "step_ms": args.step_ms,
    }
    for name, row in (("memory", memory), ("stream", stream), ("baseline", base)):
        print(f"{name:>8}: {row['img_s']:8.1f} img/s, {row['ms_per_batch']:7.2f} ms per batch of {args.batch_size}; "
              f"data wait {waits[name]:6.2f} ms per step (batch {args.preset_batch}, {args.step_ms:g} ms step)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
