"""`ddpm-eval --utility`: do the samples help a classifier of the real classes, tested on real images?

Three arms, each a small classifier tested on held-out *real* images over k folds of the real data
(both splits of the shards) and a few seeds (`ddpm_eval/arms.py`):
- `real_only`: trained on the real training fold;
- `real_plus_synthetic`: the same fold plus samples (by default every class topped up to the
  largest one's count; `ratio` adds that many samples per real training image of each class);
- `synthetic_only`: trained on the samples alone (when they cover every class).
Scores: balanced accuracy (the primary metric), and the rarest real class's recall and AUROC.
The verdict compares the first two arms unit by unit (same fold, same seed, same initialisation):
`helped` when the 95 % interval of the mean paired difference in balanced accuracy lies above 0,
`hurt` below 0, else `unclear`.

The interval. The k x seeds paired differences are not independent: the folds' training sets
overlap by (k - 2) / (k - 1), so a plain t interval over them is too narrow (Dietterich 1998). The
variance is inflated as in the corrected repeated cross-validation t-test (Nadeau & Bengio 2003;
Bouckaert & Frank 2004): se = sqrt((1 / J + n_test / n_train) * s^2) over J = k x seeds units,
with n_test / n_train = 1 / (k - 1), and t with J - 1 degrees of freedom. Every mean +- se here
uses that standard error.

Where it can fail: the samples come from a generator trained on the shards' train split, which
lands in the test folds; a generator that copies its training images leaks test images into the
real + synthetic arm and shows as a gain. The evaluation's near-copy count sits beside the verdict
for that reason (a warning when it is above 0).

This module imports only the standard library at import time (cli.py reads UtilityConfig's
defaults); numpy and torch come with `ddpm_eval.arms`, inside `measure_utility`.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

ARMS = ("real_only", "real_plus_synthetic", "synthetic_only")
PRIMARY = "balanced_accuracy"
CONFIDENCE = 0.95
VERDICTS = ("helped", "hurt", "unclear")


@dataclass(frozen=True)
class UtilityConfig:
    folds: int = 5  # k: each real image is held out once; 5 keeps ~17 of 85 rare images per test fold
    seeds: int = 3  # classifier seeds per fold (--seed, --seed + 1, ...): training noise, paired across arms
    ratio: float | None = None  # samples added per real training image of a class; None: top every class up to the largest
    steps: int = 100  # optimiser steps per classifier, equal in every arm: more images is not more training
    width: int = 16  # first-layer channels of the arms' classifier (the eval classifier's architecture)
    batch_size: int = 64  # twice the eval classifier's: steadier rare-class decisions from seed to seed

    def __post_init__(self) -> None:
        checks = {
            "--utility-folds": self.folds >= 2,
            "--utility-seeds": self.seeds >= 1,
            "--utility-ratio": self.ratio is None or self.ratio > 0,
            "--utility-steps": self.steps >= 1,
            "--utility-width": self.width >= 1,
            "--utility-batch-size": self.batch_size >= 2,
        }
        bad = [flag for flag, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"{', '.join(bad)}: out of range (need folds >= 2, seeds >= 1, ratio > 0, steps >= 1, "
                             "width >= 1, batch size >= 2)")

    def classifier_config(self) -> "ClassifierConfig":
        """The arms' classifier: the eval classifier's recipe (learning rate, 48 px input) at this width
        and batch size; its seed is set per run."""
        from ddpm_eval.classifier import ClassifierConfig

        return ClassifierConfig(width=self.width, batch_size=self.batch_size)


@dataclass(frozen=True)
class Estimate:
    """A mean over fold x seed units with its corrected standard error and 95 % t interval."""

    mean: float
    se: float
    low: float
    high: float


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile (0.5 <= p < 1) of Student's t with `dof` >= 1 degrees of freedom: bisection on
    the CDF, integrated by Simpson's rule (the standard library has no t distribution)."""
    log_scale = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)

    def mass_to(x: float, intervals: int = 2000) -> float:  # P(0 < T < x)
        h = x / intervals
        density = [math.exp(log_scale - (dof + 1) / 2 * math.log1p((i * h) ** 2 / dof)) for i in range(intervals + 1)]
        return h / 3 * (density[0] + density[-1] + 4 * sum(density[1:-1:2]) + 2 * sum(density[2:-1:2]))

    low, high = 0.0, 1.0
    while 0.5 + mass_to(high) < p:
        low, high = high, 2 * high
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if 0.5 + mass_to(middle) < p else (low, middle)
    return (low + high) / 2


def estimate(values: list[float], folds: int) -> Estimate:
    """Mean of the fold x seed `values` (NaN ones left out) with the corrected standard error
    sqrt((1 / J + 1 / (folds - 1)) * variance) and its 95 % t interval (J - 1 degrees of freedom)."""
    finite = [value for value in values if math.isfinite(value)]
    if not finite:
        return Estimate(math.nan, math.nan, math.nan, math.nan)
    mean = statistics.fmean(finite)
    if len(finite) < 2:
        return Estimate(mean, math.nan, math.nan, math.nan)
    se = math.sqrt((1 / len(finite) + 1 / (folds - 1)) * statistics.variance(finite))
    half = t_quantile(0.5 + CONFIDENCE / 2, len(finite) - 1) * se
    return Estimate(mean, se, mean - half, mean + half)


def verdict(difference: Estimate) -> str:
    """`helped` if the interval of (real + synthetic - real only) lies above 0, `hurt` below, else `unclear`."""
    if difference.low > 0:
        return "helped"
    if difference.high < 0:
        return "hurt"
    return "unclear"


def summarise(arms: dict, folds: int) -> dict:
    """Per arm and metric an Estimate (as a dict), the paired differences real + synthetic - real
    only, and the verdict on the primary metric. `arms`: ARMS name -> {metric: (folds, seeds) array}
    or None for an arm not run."""
    summary = {name: None if scores is None else {metric: asdict(estimate(values.ravel().tolist(), folds))
                                                  for metric, values in scores.items()}
               for name, scores in arms.items()}
    real, mixed = arms["real_only"], arms["real_plus_synthetic"]
    differences = {metric: estimate((mixed[metric] - real[metric]).ravel().tolist(), folds) for metric in real}
    return {"verdict": verdict(differences[PRIMARY]), "primary": PRIMARY, "arms": summary,
            "difference": {metric: asdict(value) for metric, value in differences.items()},
            "units": {name: None if scores is None else {metric: values.tolist() for metric, values in scores.items()}
                      for name, scores in arms.items()}}


def measure_utility(real, samples, config: UtilityConfig, seed: int, device,
                    log: Callable[[str], None] = lambda message: None) -> dict:
    """The three arms on `real` (RealData: both splits pooled) and `samples` (ImageSet of synthetic
    images with the shards' labels); the result under `utility` in docs/evaluation.md."""
    import numpy as np

    from ddpm_eval.arms import Trainer, content_folds, cross_validate, joined, with_synthetic
    from ddpm_eval.images import EvalInputError

    started = time.perf_counter()
    data = joined(real.train, real.val)
    num_classes = len(real.classes)
    counts = np.bincount(data.labels, minlength=num_classes)
    short = [f"{real.classes[label]} {int(count)}" for label, count in enumerate(counts) if count < config.folds]
    if short:
        raise EvalInputError(f"--utility-folds {config.folds}: too few real images of class {', '.join(short)} "
                             f"(each fold needs one of every class); use fewer folds or more data")
    rare = int(np.argmin(counts))
    folds = content_folds(data, config.folds)
    seeds = list(range(seed, seed + config.seeds))
    trainer = Trainer(config.classifier_config(), config.steps, num_classes, device)
    units = config.folds * config.seeds
    log(f"utility: {units} classifiers per arm ({config.folds} folds x {config.seeds} seeds, {config.steps} steps each)")
    record: list = []
    arms = {"real_only": cross_validate(data, folds, lambda train, fold, s: train, seeds, rare, trainer),
            "real_plus_synthetic": cross_validate(data, folds, with_synthetic(samples, num_classes, config.ratio, record),
                                                  seeds, rare, trainer)}
    covered = set(np.unique(samples.labels).tolist()) == set(range(num_classes))
    arms["synthetic_only"] = cross_validate(data, folds, samples, seeds, rare, trainer) if covered else None
    result = summarise(arms, config.folds)
    wanted, added = (np.mean([draw[i] for draw in record], axis=0) for i in (0, 1))
    result |= {
        "rare_class": real.classes[rare],
        "folds": config.folds, "seeds": seeds,
        "real_counts": {name: int(count) for name, count in zip(real.classes, counts)},
        "synthetic_added": {name: float(count) for name, count in zip(real.classes, added)},
        "synthetic_wanted": {name: float(count) for name, count in zip(real.classes, wanted)},
        "interval": "95% t interval over folds x seeds paired units, variance corrected for overlapping "
                    "training folds (Nadeau & Bengio 2003)",
        "warnings": _warnings(real.classes, wanted, added, covered),
        "config": asdict(config),
        "seconds": round(time.perf_counter() - started, 1),
    }
    result["line"] = verdict_line(result)
    return result


def _warnings(classes: tuple[str, ...], wanted, added, covered: bool) -> list[str]:
    """Why the arms may not be what was asked for; `wanted`, `added`: mean samples per class and draw."""
    messages = [f"class '{name}': {have:.0f} samples added per fold of the {want:.0f} wanted (that is all there are); "
                f"sample more (ddpm-sample --n {math.ceil(want)}) for the full top-up"
                for name, want, have in zip(classes, wanted, added) if have < want]
    if not added.any():
        messages.append("no samples were added to the real + synthetic arm (only samples of the largest class?); "
                        "its difference to real only is training noise")
    if not covered:
        messages.append("synthetic only: not run, the samples do not cover every class")
    return messages


def verdict_line(result: dict) -> str:
    """One sentence: the verdict and the primary metric's paired difference with its interval."""
    difference = result["difference"][PRIMARY]
    said = {"helped": "the samples helped", "hurt": "the samples hurt",
            "unclear": "cannot tell whether the samples help"}[result["verdict"]]
    return (f"utility: {result['verdict']}: {said}: balanced accuracy real + synthetic - real only "
            f"{_signed(difference['mean'])} (95% interval {_signed(difference['low'])} to {_signed(difference['high'])}; "
            f"{result['folds']} folds x {len(result['seeds'])} seeds, tested on held-out real images)")


def _signed(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:+.3f}"
