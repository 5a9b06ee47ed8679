"""Test data for the ddpm_eval tests: shards built from rendered shapes, sample folders, degraded copies."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("abnormal", "normal")


def render(rng: np.random.Generator, label: int, size: int, supersample: int = 4) -> np.ndarray:
    """An anti-aliased RGB image (3, size, size) uint8: a soft-shaded ellipse, plus a bright blob if abnormal."""
    big = size * supersample
    y, x = np.mgrid[0:big, 0:big] / big
    background = 40 + 30 * x + 20 * y
    cy, cx = rng.uniform(0.35, 0.65, 2)
    ry, rx = rng.uniform(0.18, 0.3, 2)
    angle = rng.uniform(0, np.pi)
    u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    inside = (u / rx) ** 2 + (v / ry) ** 2 <= 1
    image = np.where(inside, 150 + 40 * rng.uniform() - 60 * ((u / rx) ** 2 + (v / ry) ** 2), background)
    if label == CLASSES.index("abnormal"):
        by, bx = cy + rng.uniform(-0.08, 0.08), cx + rng.uniform(-0.08, 0.08)
        image = np.where((x - bx) ** 2 + (y - by) ** 2 <= rng.uniform(0.05, 0.08) ** 2, 245, image)
    image = image.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    tint = np.array([1.0, 0.85, 0.7])[:, None, None]
    return np.clip(image[None] * tint, 0, 255).round().astype(np.uint8)


def make_shards(root: Path, size: int = 32, counts: tuple[int, int] = (32, 50), seed: int = 0, channels: int = 3) -> Path:
    """Render an ImageFolder of (abnormal, normal) `counts` images and build it with `ddpm-data build` into `root`/shards."""
    from ddpm_data.shards import BuildConfig, build

    rng = np.random.default_rng(seed)
    source = root / "source"
    for label, count in enumerate(counts):
        (source / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image = render(rng, label, round(size * 140 / 128))
            Image.fromarray(image.transpose(1, 2, 0)).save(source / CLASSES[label] / f"{index:03d}.png")
    build(BuildConfig(src=source, size=(size,), out=str(root / "shards"), workers=0, val_fraction=0.25, channels=channels))
    return root / "shards"


def write_samples(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Save uint8 (N, 3, S, S) images as `folder`/<class>/<index>.png, as ddpm-sample does."""
    for index, (image, label) in enumerate(zip(images, labels)):
        path = folder / CLASSES[int(label)] / f"{index:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.transpose(1, 2, 0)).save(path)
    return folder


def fresh_real(size: int = 32, counts: tuple[int, int] = (12, 20), seed: int = 99) -> tuple[np.ndarray, np.ndarray]:
    """New real-like images (in no split): rendered at the stored size and centre-cropped like the shards."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), counts)
    stored = round(size * 140 / 128)
    offset = (stored - size) // 2
    images = np.stack([render(rng, int(label), stored) for label in labels])
    return np.ascontiguousarray(images[..., offset : offset + size, offset : offset + size]), labels


FAST = {"swd_descriptors": 2048, "classifier_epochs": 20, "classifier_batch_size": 16}  # EvalConfig overrides for tests
_SHARED: dict[str, Path] = {}


def shared_shards(tmp_path_factory) -> Path:
    """One shard folder per test session (building and classifier training happen once); do not modify it."""
    if "shards" not in _SHARED:
        _SHARED["shards"] = make_shards(tmp_path_factory.mktemp("eval-real"))
    return _SHARED["shards"]


def jaggy(images: np.ndarray) -> np.ndarray:
    """Nearest-neighbour 2x down- then up-sampling: staircase edges, the user's complaint."""
    return np.ascontiguousarray(images[..., ::2, ::2].repeat(2, axis=-2).repeat(2, axis=-1))


def noisy(images: np.ndarray, sigma: float = 25.0, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, images.shape)
    return np.clip(images + noise, 0, 255).round().astype(np.uint8)


def blur(images: np.ndarray, passes: int = 2) -> np.ndarray:
    out = images.astype(np.float64)
    for _ in range(passes):
        for axis in (-1, -2):
            out = (np.roll(out, 1, axis) + 2 * out + np.roll(out, -1, axis)) / 4
    return out.round().astype(np.uint8)
