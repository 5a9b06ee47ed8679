"""`ddpm-data stats`: summarise a shard folder (or URL) from its manifest, and draw a contact sheet."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ddpm_data.grid import save_grid
from ddpm_data.manifest import SPLITS, Manifest, load_manifest
from ddpm_data.redact import public
from ddpm_data.remote import Location, file_sizes, is_url
from ddpm_data.shardformat import FormatError, decode_png, iter_shard


def collect_stats(folder: Location) -> dict[str, Any]:
    """JSON-ready summary of `folder` (a path or a URL): counts (as in the manifest), shards with
    bytes (None when missing, or at a URL that cannot be listed), mean/std, source sizes, skipped
    files and the ignored count. Raises ManifestError."""
    manifest = load_manifest(folder)
    sizes = file_sizes(manifest.root)  # one listing, also for a URL
    shards = [{**entry.to_json(), "bytes": sizes.get(entry.path)} for entry in manifest.shards]
    return {
        "folder": public(folder) if is_url(folder) else str(Path(folder)),
        "size": manifest.size,
        "stored_size": manifest.stored_size,
        "channels": manifest.channels,
        "classes": manifest.classes,
        "counts": manifest.counts,
        "totals": {split: manifest.num_samples(split) for split in SPLITS},
        "shards": shards,
        "hdf5": {**manifest.hdf5, "bytes": sizes.get(manifest.hdf5["path"])},
        "mean": manifest.mean,
        "std": manifest.std,
        "source_sizes": manifest.source_sizes,
        "skipped": manifest.skipped,
        "ignored": manifest.ignored,
        "tool_version": manifest.tool_version,
        "options": manifest.options,
        "intensity": manifest.intensity,
    }


def _megabytes(size: int | None) -> str:
    return "missing or unlisted" if size is None else f"{size / 1e6:.2f} MB"


def format_stats(stats: dict[str, Any], max_sizes: int = 10) -> str:
    """Human-readable text of `collect_stats` output."""
    channel_names = ["R", "G", "B"] if stats["channels"] == 3 else ["L"]
    lines = [
        f"{stats['folder']}: size {stats['size']} (stored {stats['stored_size']} px), "
        f"{stats['channels']} channel(s), {len(stats['classes'])} classes",
        "",
        f"  {'class':<20} {'label':>5} {'train':>7} {'val':>7}",
    ]
    for label, name in enumerate(stats["classes"]):
        lines.append(f"  {name:<20} {label:>5} {stats['counts']['train'].get(name, 0):>7} "
                     f"{stats['counts']['val'].get(name, 0):>7}")
    lines.append(f"  {'total':<20} {'':>5} {stats['totals']['train']:>7} {stats['totals']['val']:>7}")
    lines += ["", f"shards ({len(stats['shards'])}):"]
    lines += [f"  {s['path']:<40} {s['count']:>6} samples  {_megabytes(s['bytes'])}" for s in stats["shards"]]
    lines.append(f"  {stats['hdf5']['path']:<40} {stats['totals']['train'] + stats['totals']['val']:>6} samples  "
                 f"{_megabytes(stats['hdf5']['bytes'])}")
    lines += ["", "per-channel mean / std (train split, [0, 1] units):"]
    lines += [f"  {c}: {m:.4f} / {s:.4f}" for c, m, s in zip(channel_names, stats["mean"], stats["std"])]
    sizes = sorted(stats["source_sizes"].items(), key=lambda kv: (-kv[1], kv[0]))
    lines += ["", f"source image sizes ({len(sizes)} distinct):"]
    lines += [f"  {wh:<14} {n:>6}" for wh, n in sizes[:max_sizes]]
    if len(sizes) > max_sizes:
        lines.append(f"  ... {len(sizes) - max_sizes} more (see --json)")
    lines += _intensity_lines(stats.get("intensity") or {})
    lines += ["", f"skipped: {len(stats['skipped'])}"]
    lines += [f"  {s['path']}: {s['reason']}" for s in stats["skipped"]]
    lines.append(f"ignored (hidden or non-image files): {stats['ignored']}")
    return "\n".join(lines)


def _intensity_lines(intensity: dict[str, Any]) -> list[str]:
    """The intensity rule, how channels were chosen, and per class what the rule did."""
    if not intensity:
        return ["", "intensity: not recorded (built before the intensity rule; rebuild to see it)"]
    if intensity["rule"] == "auto":
        low, high = intensity["high_bit_range"]
        rule = f"auto (16-bit PNG/TIFF from {low:g}..{high:g}; DICOM by each file's VOI LUT or first window)"
    else:
        rule = f"{intensity['rule']} (PNG/TIFF window {intensity['window']}, DICOM window {intensity['dicom_window']})"
    lines = ["", f"intensity: {rule}", f"channels: {intensity['channels']}",
             f"  {'class':<20} {'8-bit':>6} {'16-bit':>6} {'DICOM':>6} {'windowed':>8} {'rescaled':>8} "
             f"{'inverted':>8}  grey levels p1 / p50 / p99 (range)"]
    for name, row in intensity["classes"].items():
        levels = row["grey_levels"]
        shown = (f"{levels['p1']} / {levels['p50']} / {levels['p99']} ({levels['range'][0]}..{levels['range'][1]})"
                 if levels["range"] else "-")
        lines.append(f"  {name:<20} {row['8-bit']:>6} {row['high-bit']:>6} {row['dicom']:>6} {row['windowed']:>8} "
                     f"{row['rescaled']:>8} {row['inverted']:>8}  {shown}")
    for flag in ("near_black", "saturated"):
        paths = intensity.get(flag, [])
        lines.append(f"{flag.replace('_', '-')}: {len(paths)}" + "".join(f"\n  {path}" for path in paths))
    return lines


class GridError(ValueError):
    """The contact sheet cannot be written; the message names the path and the fix."""


def _decode(path: Location, key: str, members: dict[str, bytes], folder: Location) -> np.ndarray:
    try:
        return decode_png(members.get("png", b""))
    except FormatError as error:
        raise FormatError(path, f"sample {key}: .png {error.reason}; run 'ddpm-data verify {folder}'") from error


def sample_images(manifest: Manifest, per_class: int) -> dict[str, list[np.ndarray]]:
    """Up to `per_class` stored images per class (train shards first, then val), uint8 (C, S, S)."""
    rows: dict[str, list[np.ndarray]] = {}
    for name in manifest.classes:
        images: list[np.ndarray] = []
        for path in manifest.shard_paths("train", name) + manifest.shard_paths("val", name):
            images += _first_images(path, per_class - len(images), manifest.root)
            if len(images) == per_class:
                break
        rows[name] = images
    return {name: images for name, images in rows.items() if images}


def _first_images(path: Location, n: int, folder: Location) -> list[np.ndarray]:
    """Up to `n` images from the start of one shard of `folder` (not checksummed: see verify)."""
    images: list[np.ndarray] = []
    samples = iter_shard(path)
    try:
        while len(images) < n:
            try:
                sample = next(samples, None)
            except FormatError as error:  # missing, or not a readable tar
                raise FormatError(path, f"{error.reason}; run 'ddpm-data verify {folder}' and rebuild "
                                        f"the folder") from error
            if sample is None:
                break
            images.append(_decode(path, *sample, folder))
    finally:
        samples.close()
    return images


def _check_grid_path(path: Path) -> None:
    if path.is_dir():
        raise GridError(f"--grid {path}: is a folder; give a file name, e.g. {path / 'grid.png'}")
    blocker = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocker is not None:
        raise GridError(f"--grid {path}: {blocker} is a file, not a folder; choose another --grid path")


def write_grid(folder: Location, path: str | Path, per_class: int = 8) -> Path:
    """Write a contact sheet of `per_class` samples per class of `folder` (a path or a URL) to
    `path` (PNG).

    Raises ManifestError, FormatError (a missing or damaged shard, naming it) or GridError."""
    path = Path(path)
    _check_grid_path(path)
    rows = sample_images(load_manifest(folder), per_class)
    try:
        return save_grid(rows, path)
    except OSError as error:
        raise GridError(f"--grid {path}: cannot write it ({error.strerror or error}); choose a writable path") from error
