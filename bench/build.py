"""Benchmark `ddpm-data build` against a single-process PIL loop doing the same per-image work.

Both sides, in the same run and on the same generated source folder: decode each image, apply
EXIF orientation, centre-crop to square, LANCZOS-resize to the stored size of every requested
size, and save a PNG. The build additionally hashes, splits, writes tar shards, data.h5 and the
manifest. Each side runs `--repeat` times; the best time counts (the machine may be shared).
Final line: JSON with `ratio` = baseline seconds / build seconds (goal on 2 cores: >= 1.6).

    python bench/build.py [--images 300] [--source-px 512] [--size 96] [--workers N]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_data.images import PNG_COMPRESS_LEVEL, stored_size_for  # noqa: E402
from ddpm_data.shards import DEFAULT_MARGIN, BuildConfig, available_cores, build  # noqa: E402


def make_source(root: Path, images: int, source_px: int, seed: int = 0) -> Path:
    """`images` photo-like JPEGs (smooth structure + grain), 80 % normal / 20 % abnormal."""
    rng = np.random.default_rng(seed)
    for i in range(images):
        class_name = "abnormal" if i % 5 == 0 else "normal"
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((source_px, source_px), Image.Resampling.BICUBIC))
        grain = rng.normal(0, 12, smooth.shape)
        pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
        path = root / class_name / f"img_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    return root


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the build's pool workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def baseline(src: Path, sizes: list[int], out: Path) -> float:
    """The plain loop: one process, PIL decode + crop + LANCZOS + PNG save per image and size."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for n, path in enumerate(sorted(src.rglob("*.jpg"))):
        image = Image.open(path)
        ImageOps.exif_transpose(image, in_place=True)
        if image.mode != "RGB":
            image = image.convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        square = image.crop((left, top, left + side, top + side))
        for size in sizes:
            stored = stored_size_for(size, DEFAULT_MARGIN)
            square.resize((stored, stored), Image.Resampling.LANCZOS).save(
                out / f"{n}_{size}.png", format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return time.perf_counter() - start


def timed_build(src: Path, sizes: list[int], out: Path, workers: int) -> float:
    config = BuildConfig(src=src, size=tuple(sizes), out=str(out / "{size}"), workers=workers, overwrite=True)
    start = time.perf_counter()
    build(config)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="source images to generate")
    parser.add_argument("--source-px", type=int, default=512, help="side of each generated source image")
    parser.add_argument("--size", default="96", help="training size(s), e.g. 96 or 40,96,128")
    parser.add_argument("--workers", type=int, default=None, help="build decode processes (default: all cores)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per side; the best counts")
    args = parser.parse_args()
    args.workers = available_cores() if args.workers is None else args.workers
    sizes = [int(s) for s in args.size.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        root = Path(tmp)
        src = make_source(root / "src", args.images, args.source_px)
        base_times, build_times, base_cpu, build_cpu = [], [], [], []
        for _ in range(args.repeat):  # interleaved so both sides see the same machine load
            cpu = _cpu_seconds()
            base_times.append(baseline(src, sizes, root / "baseline"))
            base_cpu.append(_cpu_seconds() - cpu)
            cpu = _cpu_seconds()
            build_times.append(timed_build(src, sizes, root / "shards", args.workers))
            build_cpu.append(_cpu_seconds() - cpu)
        base, built = min(base_times), min(build_times)
    print(f"source: {args.images} JPEGs of {args.source_px}x{args.source_px} px; sizes {sizes}; "
          f"{available_cores()} cores, build workers {args.workers}")
    print(f"single-process PIL loop : {base:7.2f} s  ({args.images / base:6.1f} images/s)")
    print(f"ddpm-data build         : {built:7.2f} s  ({args.images / built:6.1f} images/s)")
    print(f"CPU seconds (all processes): loop {min(base_cpu):.2f}, build {min(build_cpu):.2f} "
          f"(a loaded machine shows in wall time, not here)")
    print(json.dumps({"bench": "build", "images": args.images, "source_px": args.source_px, "sizes": sizes,
                      "cores": available_cores(), "workers": args.workers, "baseline_s": round(base, 3),
                      "build_s": round(built, 3), "baseline_cpu_s": round(min(base_cpu), 3),
                      "build_cpu_s": round(min(build_cpu), 3), "ratio": round(base / built, 3)}))


if __name__ == "__main__":
    main()
