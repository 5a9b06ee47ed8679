"""Staircase controls made from real images: what the jaggedness measure must rank correctly.

    python -m ddpm_study.controls DATA [--low 40,96] [--size 128] [--limit 80]

DATA is an ImageFolder of square images (e.g. `ddpm-data synth data`), or a folder of photographs
of any size (e.g. tests/data/photos), which are cut into `size` px patches. Half the images (every
other one) are the reference; the controls are made from the other half, at the display size S:
- real: the held-out images as they are;
- staircase-L: downsampled to L px (LANCZOS, antialiased), then nearest-neighbour upscaled to S,
  so every edge is a staircase of (S / L) px steps;
- bicubic-L, lanczos-L, bilinear-L: the same small images upscaled smoothly: soft, not jaggy;
- noise: the held-out images plus Gaussian noise (sigma 12 of 255): rough, not jaggy.
The script prints the jaggedness of each against the reference half, with the evaluator's edge
roughness and spectrum high-frequency ratio beside it for comparison.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ddpm_eval.images import IMAGE_SUFFIXES

NOISE_SIGMA = 12.0  # of 255: visible grain, well above a camera's noise at these sizes
UPSCALERS = {"staircase": Image.Resampling.NEAREST, "bicubic": Image.Resampling.BICUBIC,
             "lanczos": Image.Resampling.LANCZOS, "bilinear": Image.Resampling.BILINEAR}


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image.transpose(1, 2, 0).squeeze(-1) if image.shape[0] == 1 else image.transpose(1, 2, 0))


def _stack(items: list[np.ndarray]) -> np.ndarray:
    array = np.stack(items)
    return array[:, None] if array.ndim == 3 else array.transpose(0, 3, 1, 2)


def make_controls(images: np.ndarray, lows: tuple[int, ...] = (40,), seed: int = 0) -> dict[str, np.ndarray]:
    """{real, <upscaler>-<low> for each low, noise}: uint8 (N, C, S, S) each, from uint8 (N, C, S, S) `images`."""
    size = images.shape[-1]
    controls = {"real": images}
    for low in lows:
        small = [_pil(image).resize((low, low), Image.Resampling.LANCZOS) for image in images]
        for name, filter_ in UPSCALERS.items():
            controls[f"{name}-{low}"] = _stack([np.asarray(image.resize((size, size), filter_)) for image in small])
    noise = np.random.default_rng(seed).normal(0.0, NOISE_SIGMA, images.shape)
    controls["noise"] = np.clip(images + noise, 0, 255).round().astype(np.uint8)
    return controls


def measure_controls(images: np.ndarray, labels: np.ndarray, lows: tuple[int, ...] = (40,),
                     others: bool = True) -> dict[str, dict[str, float]]:
    """Jaggedness (and s.e.) of each control made from the odd images, measured against the even images
    (the reference); with `others`, also the evaluator's edge roughness and spectrum HF ratio."""
    from ddpm_eval.edges import edge_statistics
    from ddpm_eval.images import to_float
    from ddpm_eval.jaggedness import class_references, per_class_jaggedness
    from ddpm_data.spectrum import high_frequency_ratio, radial_power_spectrum

    reference = to_float(images[0::2])
    references = class_references(reference, labels[0::2])
    frequency, real_power = radial_power_spectrum(reference)
    rows = {}
    for name, control in make_controls(images[1::2], lows).items():
        x = to_float(control)
        jagged = per_class_jaggedness(x, labels[1::2], references)[0]
        rows[name] = {"jaggedness": jagged.value, "standard_error": jagged.standard_error}
        if others:
            rows[name] |= {"edge_roughness": edge_statistics(x).roughness,
                           "spectrum_hf_ratio": high_frequency_ratio(frequency, radial_power_spectrum(x)[1], real_power)}
    return rows


def read_folder(root: Path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ImageFolder root/<class>/*.png -> (uint8 (N, 3, S, S), labels (N,)), the first `limit` per class."""
    images, labels = [], []
    for label, class_dir in enumerate(sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith("."))):
        for path in sorted(class_dir.glob("*.png"))[:limit]:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")).transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise ValueError(f"{root}: no class folders with PNG images")
    return np.stack(images), np.asarray(labels)


def read_patches(root: Path, size: int = 128, stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every image file directly in `root`, cut into `size` px patches every `stride` px (default size / 2),
    row by row: (uint8 (N, 3, size, size), labels (N,) all 0)."""
    stride = stride or size // 2
    patches = []
    for path in sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
        for top in range(0, array.shape[1] - size + 1, stride):
            for left in range(0, array.shape[2] - size + 1, stride):
                patches.append(array[:, top : top + size, left : left + size])
    if not patches:
        raise ValueError(f"{root}: no image files of at least {size} px")
    return np.stack(patches), np.zeros(len(patches), dtype=np.int64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="ImageFolder of square images, or a folder of photographs")
    parser.add_argument("--low", default="40,96", help="sizes in px the controls are downsampled to, e.g. 40,96")
    parser.add_argument("--size", type=int, default=128, help="patch size for a folder of photographs")
    parser.add_argument("--limit", type=int, default=80, help="images per class of an ImageFolder")
    args = parser.parse_args(argv)
    try:
        lows = tuple(int(word) for word in args.low.split(","))
        has_classes = any(path.is_dir() and not path.name.startswith(".") for path in args.data.iterdir())
        images, labels = read_folder(args.data, args.limit) if has_classes else read_patches(args.data, args.size)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{len(images)} images at {images.shape[-1]} px: every other one the reference, controls from the rest\n")
    print("| control | jaggedness | s.e. | edge roughness (deg) | spectrum HF ratio |\n|---|---|---|---|---|")
    for name, row in measure_controls(images, labels, lows).items():
        print(f"| {name} | {row['jaggedness']:+.1f} | {row['standard_error']:.1f} | {row['edge_roughness']:.1f} | "
              f"{row['spectrum_hf_ratio']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
