"""Bundled sample dataset: a deterministic stand-in for the private 437/85 medical image set.

Each image is a histology-like tile rendered in optical-density space (Beer-Lambert law, as H&E
stains absorb light): a multi-scale eosin field (fractal 1/f^beta noise) plus a hematoxylin layer
of blurred nuclei. Every image gets its own stain strength, nucleus density and brightness, as
scanners and patients differ, so no single global statistic separates the classes.

Abnormal images carry 1-3 lesions: star-shaped closed regions whose radius is a smooth Fourier
series in the angle, r(theta) = r0 * (1 + sum_k a_k cos(k theta + phi_k)), with a soft edge of
width `edge_px` (a logistic ramp across the boundary). Inside, nuclei are denser and larger and the
eosin density shifts up or down, so intensity and texture change together. Lesions cover roughly
5-30% of the image, large enough to survive a build down to 32 px.

Files: `OUT/normal/normal_0000.png`, `OUT/abnormal/abnormal_0000.png` (RGB PNG), and for each
abnormal image its soft lesion mask `OUT/.masks/abnormal/abnormal_0000.png` (L PNG, 255 = lesion).
The mask folder is hidden, so `ddpm-data build` does not mistake it for a class. `OUT/.ddpm-synth.json`
records the options and marks the folder as synth's own: `--overwrite` replaces only such a folder,
and only while it holds nothing but what synth wrote.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ddpm_data.atomic import check_owned, exchange, make_parents, remove_empty, unwritable

MASK_DIR = ".masks"
MARKER = ".ddpm-synth.json"
CLASSES = ("abnormal", "normal")  # sorted: label 0 = abnormal, 1 = normal, as ImageFolder does
MIN_SIZE = 16

# Stain colours as optical-density vectors (R, G, B); rows of a typical H&E stain matrix.
HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
EOSIN = np.array([0.07, 0.99, 0.11])


class SynthError(ValueError):
    """Bad synth options; the message names the option and the fix."""


@dataclass(frozen=True)
class SynthConfig:
    out: Path                   # ImageFolder root to create
    normal: int = 437           # images in OUT/normal (the reference case's count)
    abnormal: int = 85          # images in OUT/abnormal
    size: int = 128             # side length in pixels
    seed: int = 0               # same seed -> byte-identical files
    overwrite: bool = False     # replace a non-empty OUT that synth wrote
    masks: bool = True          # write lesion masks under OUT/.masks/

    def validate(self) -> None:
        """Raise SynthError naming the CLI option for any invalid field."""
        for option, value in (("--normal", self.normal), ("--abnormal", self.abnormal)):
            if value < 1:
                raise SynthError(f"{option} {value}: must be a positive image count, e.g. {option} 10")
        if self.size < MIN_SIZE:
            raise SynthError(f"--size {self.size}: must be at least {MIN_SIZE} pixels, e.g. --size 128")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise SynthError(f"{out}: exists and is not a folder; choose another OUT")
        if out.is_dir() and any(out.iterdir()):
            check_replaceable(out)  # says why --overwrite would be refused, before suggesting it
            if not self.overwrite:
                raise SynthError(f"{out}: folder is not empty; pass --overwrite to replace it or choose another OUT")
        parent = _existing_parent(out)
        reason = unwritable(parent)
        if reason is not None:
            raise SynthError(f"{out}: cannot write into {parent} ({reason}); choose a writable OUT")


def _synth_files(root: Path) -> set[str]:
    """Relative paths (POSIX) of what synth may have written below `root`: folders and files."""
    made = {MARKER, MASK_DIR, f"{MASK_DIR}/abnormal", *CLASSES}
    pattern = re.compile(rf"({'|'.join(CLASSES)})_\d{{4}}\.png")
    for folder in (*CLASSES, f"{MASK_DIR}/abnormal"):
        if (root / folder).is_dir():
            made |= {f"{folder}/{p.name}" for p in (root / folder).iterdir()
                     if p.is_file() and pattern.fullmatch(p.name) and p.name.startswith(Path(folder).name)}
    return made


def foreign_entries(root: Path) -> list[str]:
    """Paths below `root` (relative, POSIX) that synth did not write; a foreign folder is listed once."""
    made, foreign = _synth_files(root), []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if relative not in made and not any(relative.startswith(f"{other}/") for other in foreign):
            foreign.append(relative)
    return foreign


def check_replaceable(out: Path) -> None:
    """SynthError unless `out` is empty or holds synth's marker and nothing but what synth writes."""
    check_owned(out, MARKER, foreign_entries, SynthError, str(out), "synth", "a folder synth wrote", "OUT")


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path if path.is_dir() else path.parent


# ---------------------------------------------------------------- texture primitives


def _frequency_radius(size: int) -> np.ndarray:
    """|f| in cycles per pixel on the FFT grid, (size, size)."""
    f = np.fft.fftfreq(size)
    return np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)


def fractal_noise(rng: np.random.Generator, size: int, beta: float) -> np.ndarray:
    """Zero-mean, unit-std noise with power spectrum ~ 1/|f|^beta: structure at every scale."""
    radius = _frequency_radius(size)
    radius[0, 0] = 1.0
    spectrum = np.fft.fft2(rng.standard_normal((size, size))) * radius ** (-beta / 2)
    spectrum[0, 0] = 0.0
    field = np.fft.ifft2(spectrum).real
    return (field - field.mean()) / (field.std() + 1e-8)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Periodic Gaussian blur through the FFT (cheap for every sigma)."""
    radius = _frequency_radius(image.shape[0])
    kernel = np.exp(-2.0 * (np.pi * sigma * radius) ** 2)
    return np.fft.ifft2(np.fft.fft2(image) * kernel).real


def nuclei_layer(rng: np.random.Generator, size: int, density: np.ndarray, radius_px: np.ndarray) -> np.ndarray:
    """Blurred dots (cell nuclei) placed with a spatially varying `density` (nuclei per pixel).

    `density` and `radius_px` are (size, size) maps, so a lesion can hold denser, larger nuclei.
    Returns a (size, size) map in [0, ~1]."""
    count = rng.poisson(density)
    small, large = np.zeros((size, size)), np.zeros((size, size))
    weight = np.clip((radius_px - 0.8) / 1.6, 0.0, 1.0)  # blend of two blur radii per pixel
    small += count * (1.0 - weight)
    large += count * weight
    dots = gaussian_blur(small, 0.8 * size / 128) * 2.5 + gaussian_blur(large, 1.6 * size / 128) * 7.0
    return np.clip(dots, 0.0, 1.5)


def lesion_mask(rng: np.random.Generator, size: int, area_fraction: float, edge_px: float) -> np.ndarray:
    """Soft mask in [0, 1] of one lesion covering about `area_fraction` of the image.

    The boundary r(theta) is a low-order Fourier series: irregular but smooth and closed."""
    r0 = size * np.sqrt(area_fraction / np.pi)
    margin = 0.55 * r0
    cy, cx = rng.uniform(margin, size - margin, 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    theta = np.arctan2(yy - cy, xx - cx)
    radius = np.ones_like(theta)
    for k in range(2, 7):
        radius += rng.uniform(0.0, 0.28 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    distance = np.hypot(yy - cy, xx - cx)
    return 1.0 / (1.0 + np.exp(-(r0 * radius - distance) / (edge_px / 4.0)))


# ---------------------------------------------------------------- one image


def _lesions(rng: np.random.Generator, size: int) -> np.ndarray:
    """Union of 1-3 lesions whose total area is 5-30% of the image."""
    count = int(rng.choice([1, 1, 2, 3]))
    total = rng.uniform(0.06, 0.28)
    edge_px = rng.uniform(1.5, 4.0) * size / 128
    mask = np.zeros((size, size))
    for share in rng.dirichlet(np.full(count, 3.0)):
        mask = np.maximum(mask, lesion_mask(rng, size, max(total * share, 0.04), edge_px))
    return mask


def render(rng: np.random.Generator, size: int, abnormal: bool) -> tuple[np.ndarray, np.ndarray]:
    """One tile: (RGB uint8 (size, size, 3), lesion mask float (size, size) in [0, 1])."""
    scale = (size / 128) ** 2
    mask = _lesions(rng, size) if abnormal else np.zeros((size, size))
    # Per-image variation (stain batch, section thickness, cellularity) shared by both classes.
    stain = rng.uniform(0.6, 1.4)
    base_density = rng.uniform(0.008, 0.040) / scale
    structure = fractal_noise(rng, size, beta=rng.uniform(2.6, 3.4))  # glands, stroma, folds
    grain = fractal_noise(rng, size, beta=1.2)                         # fibre texture
    density = base_density * np.exp(rng.uniform(0.3, 0.9) * structure)
    radius = np.full((size, size), rng.uniform(0.8, 1.4))
    eosin = 0.55 + 0.18 * structure + 0.06 * grain
    if abnormal:
        # Lesion: 2-3x denser, larger nuclei, eosin shifted by +-25-45%, coarser grain.
        density = density * (1.0 + mask * rng.uniform(1.0, 2.0))
        radius = radius + mask * rng.uniform(0.9, 1.6)
        shift = rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.45)
        eosin = eosin * (1.0 + shift * mask) + 0.10 * mask * fractal_noise(rng, size, beta=2.0)
    hema = nuclei_layer(rng, size, density, radius)
    optical_density = stain * (np.clip(eosin, 0.05, None)[..., None] * EOSIN * 0.45 + hema[..., None] * HEMATOXYLIN * 1.1)
    rgb = np.exp(-optical_density) * rng.uniform(0.90, 1.0)  # illumination
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8), mask


# ---------------------------------------------------------------- writing


def _image_rng(seed: int, class_name: str, index: int) -> np.random.Generator:
    """An independent stream per image, so files don't depend on generation order."""
    return np.random.default_rng([seed, CLASSES.index(class_name), index])


def _write_class(root: Path, config: SynthConfig, class_name: str, count: int) -> None:
    (root / class_name).mkdir(parents=True)
    if config.masks and class_name == "abnormal":
        (root / MASK_DIR / class_name).mkdir(parents=True)
    for index in range(count):
        name = f"{class_name}_{index:04d}.png"
        image, mask = render(_image_rng(config.seed, class_name, index), config.size, class_name == "abnormal")
        Image.fromarray(image, "RGB").save(root / class_name / name, format="PNG", optimize=False, compress_level=6)
        if config.masks and class_name == "abnormal":
            Image.fromarray(np.round(mask * 255).astype(np.uint8), "L").save(root / MASK_DIR / class_name / name)


def synthesize(config: SynthConfig) -> Path:
    """Write the sample dataset to `config.out` atomically; returns the folder.

    Files go to a temporary folder beside OUT, which replaces OUT only when complete, so an
    interrupted or failed run (a full disk) leaves whatever OUT held before. Raises SynthError."""
    config.validate()
    out = Path(config.out).absolute()
    created: list[Path] = []
    try:
        created = make_parents(out)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.synth-", dir=out.parent))
    except OSError as error:
        remove_empty(created)
        raise SynthError(f"{out}: cannot write there ({error.strerror}); choose a writable OUT") from error
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the dataset is an ordinary folder
    try:
        _write_class(staging, config, "normal", config.normal)
        _write_class(staging, config, "abnormal", config.abnormal)
        _write_marker(staging, config)
        _replace(staging, out)
    except OSError as error:
        raise SynthError(f"{error.filename or out}: {error.strerror or error}; free some disk space or choose "
                         f"another OUT. Nothing was changed") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after an exchange this is the old OUT
        if not out.exists():
            remove_empty(created)
    return out


def _write_marker(root: Path, config: SynthConfig) -> None:
    options = {"normal": config.normal, "abnormal": config.abnormal, "size": config.size, "seed": config.seed,
               "masks": config.masks}
    (root / MARKER).write_text(json.dumps({"written_by": "ddpm-data synth", **options}, sort_keys=True) + "\n")


def _replace(staging: Path, out: Path) -> None:
    """Move `staging` to `out`, swapping it with an existing `out` (checked again first) in one step."""
    if not out.exists():
        staging.rename(out)
        return
    check_replaceable(out)
    if not exchange(staging, out):  # no renameat2: two renames
        retired = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(retired)
        staging.rename(out)
        shutil.rmtree(retired, ignore_errors=True)


def contact_sheet(root: str | Path, path: str | Path, per_class: int = 8) -> Path:
    """Grid of the first `per_class` images of each class folder under `root`, written to `path`."""
    from ddpm_data.grid import save_grid

    root = Path(root)
    rows = {}
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(class_dir.glob("*.png"))[:per_class]
        rows[class_dir.name] = [Image.open(f).convert("RGB") for f in files]
    return save_grid(rows, path)
