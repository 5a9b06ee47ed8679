"""Staircase controls made from real images: what the jaggedness measure must rank correctly.

    python -m ddpm_study.controls DATA [--low 40] [--limit 160]

DATA is an ImageFolder of square images (e.g. `ddpm-data synth data`). Three sets are made at the
images' own size S:
- real: the images as they are;
- jaggy: downsampled to `low` px (LANCZOS, antialiased), then nearest-neighbour upscaled to S, so
  every edge is a staircase of (S / low) px steps;
- soft: the same downsampled images bicubic-upscaled to S, smooth but blurred.
The script prints the jaggedness of each set against the real set, with the evaluator's edge
roughness and spectrum high-frequency ratio beside it for comparison.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CONTROLS = ("real", "jaggy", "soft")


def make_controls(images: np.ndarray, low: int) -> dict[str, np.ndarray]:
    """{real, jaggy, soft}: uint8 (N, C, S, S) each, from uint8 (N, C, S, S) `images` via `low` px."""
    size = images.shape[-1]
    jaggy, soft = [], []
    for image in images:
        pil = Image.fromarray(image.transpose(1, 2, 0).squeeze(-1) if image.shape[0] == 1 else image.transpose(1, 2, 0))
        small = pil.resize((low, low), Image.Resampling.LANCZOS)
        jaggy.append(np.asarray(small.resize((size, size), Image.Resampling.NEAREST)))
        soft.append(np.asarray(small.resize((size, size), Image.Resampling.BICUBIC)))

    def stack(items: list[np.ndarray]) -> np.ndarray:
        array = np.stack(items)
        return array[:, None] if array.ndim == 3 else array.transpose(0, 3, 1, 2)

    return {"real": images, "jaggy": stack(jaggy), "soft": stack(soft)}


def measure_controls(images: np.ndarray, labels: np.ndarray, low: int) -> dict[str, dict[str, float]]:
    """Jaggedness (and s.e.), edge roughness and HF ratio of each control against `images` themselves."""
    from ddpm_eval.edges import edge_statistics
    from ddpm_eval.images import to_float
    from ddpm_eval.jaggedness import class_references, per_class_jaggedness
    from ddpm_eval.spectrum import high_frequency_ratio, radial_power_spectrum

    real = to_float(images)
    references = class_references(real, labels)
    frequency, real_power = radial_power_spectrum(real)
    rows = {}
    for name, control in make_controls(images, low).items():
        x = to_float(control)
        jagged = per_class_jaggedness(x, labels, references)[0]
        rows[name] = {"jaggedness": jagged.value, "standard_error": jagged.standard_error,
                      "edge_roughness": edge_statistics(x).roughness,
                      "spectrum_hf_ratio": high_frequency_ratio(frequency, radial_power_spectrum(x)[1], real_power)}
    return rows


def read_folder(root: Path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ImageFolder root/<class>/* -> (uint8 (N, 3, S, S), labels (N,)), the first `limit` per class."""
    images, labels = [], []
    for label, class_dir in enumerate(sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith("."))):
        for path in sorted(class_dir.glob("*.png"))[:limit]:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")).transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise ValueError(f"{root}: no class folders with PNG images")
    return np.stack(images), np.asarray(labels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="ImageFolder of square images")
    parser.add_argument("--low", type=int, default=40, help="size in px the controls are downsampled to")
    parser.add_argument("--limit", type=int, default=80, help="images per class")
    args = parser.parse_args(argv)
    try:
        images, labels = read_folder(args.data, args.limit)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{len(images)} images at {images.shape[-1]} px; controls via {args.low} px\n")
    print("| control | jaggedness | s.e. | edge roughness (deg) | spectrum HF ratio |\n|---|---|---|---|---|")
    for name, row in measure_controls(images, labels, args.low).items():
        print(f"| {name} | {row['jaggedness']:+.1f} | {row['standard_error']:.1f} | {row['edge_roughness']:.1f} | "
              f"{row['spectrum_hf_ratio']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
