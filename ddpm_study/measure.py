"""Every cell measured at one display size: samples resized, ddpm-eval against that size's shards, jaggedness.

A 40 px sample and a 128 px sample cannot be compared pixel for pixel. Both are resized with PIL's
LANCZOS filter to the display size D (the largest trained size unless --display-size). LANCZOS is
antialiased when it shrinks, and smooth when it enlarges. The resized samples are then measured
against real images built at D (the shards of size D, centre-cropped as ddpm-eval does): once
with `ddpm-eval --json`, and once with the jaggedness measure (ddpm_eval.jaggedness).
Optionally (`eval_bootstrap` B >= 2), ddpm-eval also runs on B resamples of the sample images,
drawn with replacement within each class, and the spread of those runs is the noise level of
every ddpm-eval metric.

The checkerboard measure (ddpm_eval.checkerboard) is taken at the cell's own size instead, against
the real train images of that size: resizing would move the frequencies it reads off their bins.

Writes STUDY/cells/<cell>/study/display-<D>/<class>/*.png and metrics-<D>.json:
{inputs, metrics, noise, real_val, counts, training, warnings}; on the way (--measure-at N) the
same under study/at-N/.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from ddpm_eval.images import IMAGE_SUFFIXES
from ddpm_study.cells import Cell
from ddpm_study.config import StudyConfig
from ddpm_study.files import STATE_NAME, cell_dir, read_json, sample_marker, stage_dir, write_json
from ddpm_study.tools import Tools



MEASURED_OWN_SIZE = ("checkerboard",)  # measures taken at the cell's own size; a change re-measures every cell


def metrics_path(config: StudyConfig, cell: Cell, stage: int | None = None) -> Path:
    return stage_dir(config, cell, stage) / f"metrics-{config.display}.json"


def display_dir(config: StudyConfig, cell: Cell, nearest: bool = False, stage: int | None = None) -> Path:
    """Where the cell's samples are, resized to the display size: LANCZOS, or nearest neighbour (`nearest`)."""
    return stage_dir(config, cell, stage) / f"display-{'nearest-' if nearest else ''}{config.display}"


def pick_metrics(result: dict) -> dict:
    """The ddpm-eval numbers the table shows (missing keys become None)."""
    levels = result.get("swd_levels") or [None]
    return {key: result.get(key) for key in ("swd", "spectrum_hf_ratio", "edge_roughness", "edge_orientation_distance",
                                              "frechet_classifier_distance", "class_accuracy", "nn_ratio")} | {"swd_finest": levels[0]}


def resize_folder(source: Path, target: Path, size: int, nearest: bool = False) -> dict[str, int]:
    """source/<class>/* -> target/<class>/*.png at size x size px (PIL LANCZOS, or NEAREST with `nearest`);
    returns images per class."""
    from PIL import Image

    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS
    if target.exists():
        shutil.rmtree(target)
    counts = {}
    for class_dir in sorted(path for path in source.iterdir() if path.is_dir() and not path.name.startswith(".")):
        files = sorted(path for path in class_dir.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
        (target / class_dir.name).mkdir(parents=True, exist_ok=True)
        for path in files:
            with Image.open(path) as image:
                if image.size != (size, size):
                    image = image.resize((size, size), resample)
                image.save(target / class_dir.name / f"{path.stem}.png")
        counts[class_dir.name] = len(files)
    return counts


class DisplayReference:
    """The real images at the display size, prepared once per process: jaggedness references and floor."""

    _cache: dict[Path, "DisplayReference"] = {}

    def __init__(self, shard_dir: Path):
        from ddpm_eval.images import load_real, to_float
        from ddpm_eval.jaggedness import class_references, per_class_jaggedness

        self.real = load_real(shard_dir)
        self._bins = None  # checkerboard bin power per class, made when first asked for
        self.references = class_references(to_float(self.real.train.images), self.real.train.labels)
        val = self.real.val.of_classes(sorted(self.references))
        self.val_jaggedness = per_class_jaggedness(to_float(val.images), val.labels, self.references)[0]

    @classmethod
    def of(cls, shard_dir: Path) -> "DisplayReference":
        if shard_dir not in cls._cache:
            cls._cache[shard_dir] = cls(shard_dir)
        return cls._cache[shard_dir]

    def jaggedness(self, folder: Path):
        from ddpm_eval.images import load_samples, to_float
        from ddpm_eval.jaggedness import per_class_jaggedness

        samples = load_samples(folder, self.real.classes, self.real.size, self.real.channels)
        return per_class_jaggedness(to_float(samples.images), samples.labels, self.references)[0]

    def checkerboard(self, folder: Path) -> tuple[float, float]:
        """(value, standard error) of the samples in `folder` (this reference's size), mean over the classes."""
        from ddpm_eval.checkerboard import bin_power, checkerboard
        from ddpm_eval.images import load_samples, to_float

        if self._bins is None:
            train = self.real.train
            self._bins = {int(label): bin_power(to_float(train.images[train.labels == label]))
                          for label in np.unique(train.labels)}
        samples = load_samples(folder, self.real.classes, self.real.size, self.real.channels)
        images = to_float(samples.images)
        results = [checkerboard(bin_power(images[torch_mask(samples.labels == label)]), bins)
                   for label, bins in self._bins.items() if np.any(samples.labels == label)]
        if not results:
            raise ValueError(f"{folder}: no samples of the real images' classes")
        value = float(np.mean([result.value for result in results]))
        return value, float(np.sqrt(sum(result.standard_error ** 2 for result in results))) / len(results)


def torch_mask(mask: np.ndarray):
    import torch

    return torch.from_numpy(np.asarray(mask))


def measure_cell(config: StudyConfig, cell: Cell, tools: Tools, log: Callable[[str], None],
                 stage: int | None = None) -> str | None:
    """Write the cell's metrics at the display size unless they are current; returns an error line or None."""
    run_dir, home = cell_dir(config, cell), stage_dir(config, cell, stage)
    real_dir = config.shard_dir(config.display)
    inputs = {"samples": sample_marker(config, cell, stage), "display_size": config.display, "real": str(real_dir),
              "eval_args": list(config.eval_args), "eval_bootstrap": config.eval_bootstrap, "own_size": list(MEASURED_OWN_SIZE)}
    path = metrics_path(config, cell, stage)
    if read_json(path).get("inputs") == inputs:
        return None
    log(f"study: {cell.name}: measuring at {config.display} px" + (f" ({stage:,} images)" if stage else ""))
    folder = display_dir(config, cell, stage=stage)
    counts = resize_folder(home / "samples", folder, config.display)
    result, error = _evaluate(tools, real_dir, folder, config.eval_args)
    if error:
        return f"measure: {error}"
    nearest_folder = display_dir(config, cell, nearest=True, stage=stage)
    resize_folder(home / "samples", nearest_folder, config.display, nearest=True)
    try:  # the smooth view's jaggedness is ddpm-eval's own; the nearest view is measured here alone
        reference = DisplayReference.of(real_dir)
        jagged_nearest = reference.jaggedness(nearest_folder)
        periodic, periodic_se = DisplayReference.of(config.shard_dir(cell.size)).checkerboard(home / "samples")
    except ValueError as error:  # the evaluator's input errors name the file and the fix
        return f"measure: {error}"
    noise = {"jaggedness": result.get("jaggedness_se"), "jaggedness_nearest": jagged_nearest.standard_error,
             "checkerboard": periodic_se}
    if config.eval_bootstrap:
        spread, error = _bootstrap(tools, real_dir, folder, config)
        if error:
            return f"measure: {error}"
        noise |= spread
    val = result.get("reference", {}).get("val_vs_train", {})
    summary = read_json(run_dir / "summary.json") if stage is None else read_json(home / "samples.json")
    write_json(path, {
        "cell": cell.name, "configuration": cell.configuration, "inputs": inputs,
        "metrics": {**pick_metrics(result), "jaggedness": result.get("jaggedness"),
                    "jaggedness_nearest": jagged_nearest.value, "checkerboard": periodic},
        "noise": noise,
        "edge_roughness_real": result.get("edge_roughness_real"),
        "real_val": {**pick_metrics(val), "jaggedness": reference.val_jaggedness.value,
                     "jaggedness_nearest": reference.val_jaggedness.value, "n": val.get("n")},
        "counts": {"samples": counts, "real_train": len(reference.real.train), "real_val": len(reference.real.val)},
        "stage": stage,
        "training": {"images_seen": summary.get("images_seen"), "step": summary.get("step"),
                     "train_seconds": read_json(run_dir / STATE_NAME).get("train_seconds")},
        "warnings": result.get("warnings", []),
    })
    return None


def _evaluate(tools: Tools, real_dir: Path, folder: Path, eval_args) -> tuple[dict, str | None]:
    run = tools(["ddpm-eval", *eval_args, "--real", str(real_dir), "--samples", str(folder), "--json"], capture=True)
    if run.returncode != 0:
        return {}, f"ddpm-eval: {run.error_line}"
    try:
        return json.loads(run.stdout or ""), None
    except ValueError:
        return {}, "ddpm-eval --json: output is not JSON"


def _bootstrap(tools: Tools, real_dir: Path, folder: Path, config: StudyConfig) -> tuple[dict, str | None]:
    """Std of every ddpm-eval metric over `eval_bootstrap` resamples (with replacement, per class) of `folder`."""
    root = folder.with_name(folder.name + "-bootstrap")
    runs = []
    try:
        for index in range(config.eval_bootstrap):
            resample = _resample(folder, root / str(index), np.random.default_rng(index))
            result, error = _evaluate(tools, real_dir, resample, config.eval_args)
            if error:
                return {}, f"bootstrap resample {index}: {error}"
            runs.append(pick_metrics(result))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    spread = {}
    for key in runs[0]:
        values = [run[key] for run in runs if run[key] is not None]
        spread[key] = float(np.std(values, ddof=1)) if len(values) >= 2 else None
    return spread, None


def _resample(folder: Path, target: Path, rng: np.random.Generator) -> Path:
    """target/<class>/<i>.png: links to a same-size draw with replacement from each class of `folder`."""
    for class_dir in sorted(path for path in folder.iterdir() if path.is_dir()):
        files = sorted(class_dir.glob("*.png"))
        (target / class_dir.name).mkdir(parents=True, exist_ok=True)
        for index, pick in enumerate(rng.integers(len(files), size=len(files))):
            link = target / class_dir.name / f"{index:05d}.png"
            try:
                link.symlink_to(files[pick].absolute())
            except OSError:  # file systems without symlinks
                shutil.copyfile(files[pick], link)
    return target
