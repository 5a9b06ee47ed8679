"""One evaluation: samples and two reference sets against the real train split; `evaluate(config) -> dict`.

The candidates are the samples and two references that give the numbers a scale:
- `val_vs_train`: real val images, the floor a perfect generator would reach;
- `blurred_vs_train`: real val images blurred by `blur_sigma` px, the smoothness ceiling: how the
  numbers move when edges are smoother than real (lower roughness, spectrum tail ratio < 1).
Each metric is computed per class against that class's train images; the overall value is the
unweighted mean over classes, so a rare class counts as much as a common one whatever mix of
samples was drawn. Copies are counted over all training images of every class.

This module imports only the standard library at import time, so `cli.py` can read EvalConfig's
defaults without loading torch; the metric modules are imported inside `evaluate`.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ddpm_eval.utility import UtilityConfig

FRECHET_NOTE = (
    "Fréchet distance in the eval classifier's feature space (FCD); NOT Inception FID and not comparable "
    "with published FID numbers, only with other runs against the same shards and cached classifier"
)
FEW_IMAGES_WARNING = 50  # below this many images in a class the numbers are noisy


@dataclass(frozen=True)
class EvalConfig:
    real: Path  # shard folder written by 'ddpm-data build' (manifest.json + data.h5)
    samples: Path  # ImageFolder of generated images: <samples>/<class>/*.png at the shards' size
    class_name: str | None = None  # evaluate only this class
    report: Path | None = None  # write a Markdown report with grids and plots here
    seed: int = 0  # patch draws, projections and the classifier's training
    device: str = "cpu"  # torch device for the classifier and nearest-neighbour search
    swd_descriptors: int = 8192  # 7x7 patches drawn per pyramid level and image set
    swd_directions: int = 128  # random projections per repeat; 4 repeats (Karras et al. 2018: 4 x 512)
    swd_min_level: int = 16  # px; the coarsest pyramid level (Karras et al. 2018 stop at 16)
    classifier_epochs: int = 30  # training passes of the eval classifier (cached afterwards)
    classifier_width: int = 16  # first-layer channels of the eval classifier
    classifier_batch_size: int = 32
    copy_ratio: float = 1 / 3  # near-copy: nearest training image this much closer than the 2nd (Yoon et al. 2023)
    blur_sigma: float = 1.0  # px; Gaussian blur of the smoothness-ceiling reference
    utility: UtilityConfig | None = None  # also test whether the samples help a classifier (None: skip)

    def classifier_config(self) -> "ClassifierConfig":
        """The eval classifier's settings (its cache key); with the defaults, the classifier the
        trainer's quality score uses (ClassifierConfig's defaults), so either trains it for both."""
        from ddpm_eval.classifier import ClassifierConfig

        return ClassifierConfig(epochs=self.classifier_epochs, width=self.classifier_width,
                                batch_size=self.classifier_batch_size, seed=self.seed)

    def __post_init__(self) -> None:
        checks = {
            "--swd-descriptors": self.swd_descriptors >= 16,
            "--swd-directions": self.swd_directions >= 1,
            "--swd-min-level": self.swd_min_level >= 7,
            "--classifier-epochs": self.classifier_epochs >= 1,
            "--classifier-width": self.classifier_width >= 1,
            "--classifier-batch-size": self.classifier_batch_size >= 2,
            "--copy-ratio": 0.0 <= self.copy_ratio < 1.0,
            "--blur-sigma": self.blur_sigma > 0,
        }
        bad = [flag for flag, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"{', '.join(bad)}: out of range (need descriptors >= 16, directions >= 1, min level >= 7 px, "
                "epochs >= 1, width >= 1, batch size >= 2, 0 <= copy ratio < 1, blur sigma > 0)"
            )


def evaluate(config: EvalConfig, log: Callable[[str], None] | None = None) -> dict:
    """Measure `config.samples` against `config.real`; returns the result dict (docs/evaluation.md).

    Raises EvalInputError / ManifestError (both ValueError) with a message naming the bad input.
    """
    import numpy as np
    import torch

    from ddpm_eval.classifier import load_or_train, predict
    from ddpm_eval.images import blurred, load_real, load_samples, require_counts
    from ddpm_eval.memorization import flagged_copies, nearest_training_images

    log = log or (lambda message: None)
    started = time.perf_counter()
    try:
        device = torch.device(config.device)
    except RuntimeError as error:
        raise ValueError(f"--device {config.device}: not a torch device ({error}); use e.g. cpu or cuda") from error
    real = load_real(config.real)
    samples = load_samples(config.samples, real.classes, real.size, real.channels, only=config.class_name)
    labels = sorted(int(label) for label in np.unique(samples.labels))
    require_counts(samples, real, labels, Path(config.samples))
    candidates = {
        "samples": samples,
        "val_vs_train": real.val.of_classes(labels),
        "blurred_vs_train": blurred(real.val.of_classes(labels), config.blur_sigma),
    }

    classifier_config = config.classifier_config()
    model, classifier_path, trained = load_or_train(real, classifier_config, device, log)
    log("measuring samples and references")
    train_features = predict(model, real.train.images, device)[1]
    val_neighbours = nearest_training_images(real.val.images, real.train.images, device)
    references = {
        label: _ClassReference(real.train.of_class(label), train_features[real.train.labels == label],
                               val_neighbours.distance[real.val.labels == label], config)
        for label in labels
    }

    measured, spectra, flagged = {}, {}, []
    selected_val = np.isin(real.val.labels, labels)
    for name, candidate in candidates.items():
        predictions, features = predict(model, candidate.images, device)
        neighbours = nearest_training_images(candidate.images, real.train.images, device)
        per_class, powers = {}, []
        for label in labels:
            mask = candidate.labels == label
            metrics, power = references[label].measure(candidate.select(mask), predictions[mask], features[mask])
            per_class[real.classes[label]] = {**metrics, **_memorization(neighbours, mask, references[label].val_distances, config)}
            powers.append(power)
        everything = np.ones(len(candidate), dtype=bool)
        measured[name] = {**_overall(per_class), **_memorization(neighbours, everything, val_neighbours.distance[selected_val], config),
                          "n": len(candidate), "per_class": per_class}
        spectra[name] = np.mean(powers, axis=0).tolist()
        if name == "samples":
            flagged = flagged_copies(candidate, neighbours, real.train, config.copy_ratio)

    result = {
        **measured["samples"],
        "classifier_val_accuracy": measured["val_vs_train"]["class_accuracy"],
        "edge_roughness_real": float(np.mean([references[label].edges.roughness for label in labels])),
        "frechet_note": FRECHET_NOTE,
        "flagged_copies": flagged,
        "reference": {"val_vs_train": measured["val_vs_train"], "blurred_vs_train": measured["blurred_vs_train"]},
        "swd_level_sizes": references[labels[0]].swd.sizes,
        "spectra": {"frequency": references[labels[0]].frequency.tolist(),
                    "real_train": np.mean([references[label].power for label in labels], axis=0).tolist(), **spectra},
        "classes": [real.classes[label] for label in labels],
        "counts": {split: {real.classes[label]: int((image_set.labels == label).sum()) for label in labels}
                   for split, image_set in (("samples", samples), ("train", real.train), ("val", real.val))},
        "classifier": {"cache": str(classifier_path) if classifier_path.is_file() else "not cached",
                       "trained_now": trained, "config": asdict(classifier_config)},
        "warnings": _warnings(samples, real, labels),
        "config": {key: (str(value) if isinstance(value, Path) else value) for key, value in asdict(config).items()},
    }
    from ddpm_data.redact import scrub

    if config.utility is not None:
        result["utility"] = _utility(real, samples, config, device, result["copies"], log)
    result = scrub(_finite(result))  # a pipe: --real keeps no secret in results.json or the output
    if config.report is not None:
        from ddpm_eval.report import write_report

        result["report"] = str(write_report(result, real.classes, samples, real.train, candidates["blurred_vs_train"], Path(config.report)))
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def _utility(real, samples, config: EvalConfig, device, copies: int, log: Callable[[str], None]) -> dict:
    """The downstream test (ddpm_eval/utility.py), warned when samples copy training images: copies
    of images in a test fold would show as a gain."""
    from ddpm_eval.utility import measure_utility

    utility = measure_utility(real, samples, config.utility, config.seed, device, log)
    if copies:
        utility["warnings"].append(f"{copies} samples are near-copies of real training images, which sit in the "
                                   "test folds: part of a gain may be those images leaking into training")
    return utility


class _ClassReference:
    """One class's train images, prepared once and measured against by every candidate set."""

    def __init__(self, train, features, val_distances, config: EvalConfig):
        from ddpm_eval.edges import edge_statistics
        from ddpm_eval.images import to_float
        from ddpm_eval.checkerboard import bin_power
        from ddpm_eval.jaggedness import staircase_index
        from ddpm_data.spectrum import radial_power_spectrum
        from ddpm_eval.swd import PyramidSWD

        images = to_float(train.images)
        self.staircase = staircase_index(images)
        self.bins = bin_power(images)
        self.swd = PyramidSWD(images, config.swd_descriptors, config.swd_directions, config.swd_min_level, config.seed)
        self.frequency, self.power = radial_power_spectrum(images)
        self.edges = edge_statistics(images)
        self.features = features
        self.val_distances = val_distances  # real val images of this class to their nearest training image

    def measure(self, candidate, predictions, features):
        """Distribution, smoothness and fidelity metrics of one class's candidates; returns (metrics, power spectrum)."""
        import numpy as np

        from ddpm_eval.checkerboard import bin_power, checkerboard
        from ddpm_eval.classifier import class_accuracy
        from ddpm_eval.edges import edge_statistics, orientation_distance
        from ddpm_eval.frechet import frechet_distance
        from ddpm_eval.images import to_float
        from ddpm_eval.jaggedness import jaggedness, staircase_index
        from ddpm_data.spectrum import high_frequency_ratio, log_spectrum_distance, radial_power_spectrum

        images = to_float(candidate.images)
        levels = self.swd.distances(images)
        jagged = jaggedness(staircase_index(images), self.staircase)
        periodic = checkerboard(bin_power(images), self.bins)
        _, power = radial_power_spectrum(images)
        edges = edge_statistics(images)
        return {
            "n": len(candidate),
            "swd": float(np.mean(levels)),
            "swd_levels": levels,
            "spectrum_hf_ratio": high_frequency_ratio(self.frequency, power, self.power),
            "spectrum_distance": log_spectrum_distance(power, self.power),
            "jaggedness": jagged.value,
            "jaggedness_se": jagged.standard_error,
            "checkerboard": periodic.value,
            "edge_roughness": edges.roughness,
            "edge_orientation_distance": orientation_distance(edges.orientation_histogram, self.edges.orientation_histogram),
            "class_accuracy": class_accuracy(predictions, candidate.labels),
            "frechet_classifier_distance": frechet_distance(features, self.features),
        }, power


def _memorization(neighbours, mask, val_distances, config: EvalConfig) -> dict:
    from ddpm_eval.memorization import summarize

    summary = summarize(neighbours, mask, val_distances, config.copy_ratio)
    return {"copies": summary.copies, "copy_fraction": summary.copy_fraction, "nn_ratio": summary.nn_ratio,
            "nn_distance_median": summary.nn_distance_median}


_MEAN_OVER_CLASSES = ("swd", "spectrum_hf_ratio", "spectrum_distance", "jaggedness", "checkerboard", "edge_roughness",
                      "edge_orientation_distance", "class_accuracy", "frechet_classifier_distance")


def _overall(per_class: dict) -> dict:
    """Unweighted means over classes (per level for `swd_levels`); the jaggedness' standard error
    combines the classes' as `jaggedness.mean_over_classes` does."""
    import numpy as np

    from ddpm_eval.jaggedness import Jaggedness, mean_over_classes

    rows = list(per_class.values())
    overall = {key: float(np.mean([row[key] for row in rows])) for key in _MEAN_OVER_CLASSES}
    overall["swd_levels"] = np.mean([row["swd_levels"] for row in rows], axis=0).tolist()
    overall["jaggedness_se"] = mean_over_classes(
        [Jaggedness(row["jaggedness"], row["jaggedness_se"], row["n"]) for row in rows]).standard_error
    return overall


def _warnings(samples, real, labels) -> list[str]:
    messages = []
    for label in labels:
        name = real.classes[label]
        for what, image_set in (("samples", samples), ("real val images", real.val)):
            count = int((image_set.labels == label).sum())
            if count < FEW_IMAGES_WARNING:
                messages.append(f"class '{name}': only {count} {what}; numbers from fewer than {FEW_IMAGES_WARNING} are noisy")
    return messages


def _finite(value):
    """NaN/inf -> None so the result is valid JSON (e.g. roughness of images without edges)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value
