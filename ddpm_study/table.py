"""The comparison: each metric per configuration, with its noise, and its change against a baseline.

A configuration's value is the mean over its seeds. Its noise, the standard error of that mean,
comes from one of three sources:
- `seeds`: with 2+ seeds, std over the seeds / sqrt(seeds), for every metric. This is the
  honest one, because it includes the training's own randomness.
- `images`: with one seed, the jaggedness's standard error over the sample images.
- `bootstrap`: with one seed and eval_bootstrap B, the std over B resampled ddpm-eval runs.

The change against the baseline is a "% improvement", signed so that better is positive:

    improvement = (badness(baseline) - badness(cell)) / |badness(baseline)| * 100

where badness is the value itself when lower is better, 1 - value for class accuracy (the error
rate), and the distance from the real images' value when "like real" is best (spectrum HF ratio and
NN ratio: |ln value|; edge roughness: |value - real|). For jaggedness, which is already relative to
real images, +100% means the baseline's excess over real images is gone. A difference is marked
within noise (≈) when |cell - baseline| <= 2 * sqrt(se_cell^2 + se_baseline^2). No percentage
is given (–) when the baseline's own badness is within 2 standard errors of 0: a baseline that is
already as good as real has nothing to take a percentage of. Beside it, the same change paired by
seed, with a Student-t interval (paired.py): sharper, because cells of one seed share their randomness.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ddpm_study.paired import format_paired, paired_change

WITHIN_NOISE_Z = 2.0  # standard errors of the difference within which a change is not told from chance


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    better: str  # lower | higher | real (closest to the real images' value)
    digits: int = 3
    signed: bool = False

    def badness(self, value: float, real_roughness: float | None) -> float | None:
        if value is None:
            return None
        if self.better == "lower":
            return value
        if self.better == "higher":
            return 1.0 - value
        if self.key == "edge_roughness":
            return None if real_roughness is None else abs(value - real_roughness)
        return abs(math.log(value)) if value > 0 else None


METRICS = (
    Metric("jaggedness", "jaggedness", "lower", 1, signed=True),
    Metric("jaggedness_nearest", "jagg. (nearest view)", "lower", 1, signed=True),
    Metric("checkerboard", "checkerboard", "real", 2),
    Metric("swd", "SWD", "lower"),
    Metric("swd_finest", "SWD finest", "lower"),
    Metric("spectrum_hf_ratio", "HF ratio", "real", 2),
    Metric("edge_roughness", "edge rough.", "real", 1),
    Metric("edge_orientation_distance", "orient. dist.", "lower"),
    Metric("frechet_classifier_distance", "FCD", "lower", 2),
    Metric("class_accuracy", "class acc.", "higher", 2),
    Metric("nn_ratio", "NN ratio", "real", 2),
)


def compare(documents: list[dict], baseline: str | None) -> dict:
    """Group the cells' metric documents (measure.py) by configuration, in the given order, and compare.

    `baseline` is a configuration name (None: the first configuration). Returns the JSON-ready table.
    """
    groups: dict[str, list[dict]] = {}
    for document in documents:
        groups.setdefault(document["configuration"], []).append(document)
    if not groups:
        return {"baseline": baseline, "configurations": [], "real_val": None, "metrics": _metric_list()}
    if baseline is None:
        baseline = next(iter(groups))
    real_roughness = _mean([d.get("edge_roughness_real") for d in documents])
    rows = [_aggregate(name, cells) for name, cells in groups.items()]
    base = next((row for row in rows if row["configuration"] == baseline), None)
    for row in rows:
        row["vs_baseline"] = None if base is None else {
            metric.key: _change(metric, row["values"][metric.key], base["values"][metric.key], real_roughness)
            for metric in METRICS}
        row["paired"] = None if base is None or row is base else {
            metric.key: None if row["vs_baseline"][metric.key]["improvement_pct"] is None  # no percentage: as above
            else paired_change(metric, groups[row["configuration"]], groups[baseline], real_roughness)
            for metric in METRICS}
    first = documents[0]
    return {"baseline": baseline, "baseline_measured": base is not None, "configurations": rows,
            "real_val": {"values": first.get("real_val"), "n": (first.get("real_val") or {}).get("n")},
            "edge_roughness_real": real_roughness, "metrics": _metric_list()}


def _metric_list() -> list[dict]:
    return [{"key": m.key, "label": m.label, "better": m.better} for m in METRICS]


def seed_mean(per_seed: list) -> tuple[float | None, float | None]:
    """(mean, standard error std / sqrt(n)) of the seeds' known values; the error needs two or more."""
    known = [value for value in per_seed if value is not None]
    if not known:
        return None, None
    noise = float(np.std(known, ddof=1) / math.sqrt(len(known))) if len(known) >= 2 else None
    return float(np.mean(known)), noise


def _aggregate(name: str, cells: list[dict]) -> dict:
    values = {}
    for metric in METRICS:
        per_seed = [cell["metrics"].get(metric.key) for cell in cells]
        known = [value for value in per_seed if value is not None]
        mean, seed_noise = seed_mean(per_seed)
        if seed_noise is not None:
            noise, source = seed_noise, f"seeds ({len(known)})"
        elif len(cells) == 1 and (cells[0].get("noise") or {}).get(metric.key) is not None:
            noise = cells[0]["noise"][metric.key]
            source = "images" if metric.key.startswith("jaggedness") else "bootstrap"
        else:
            noise, source = None, None
        values[metric.key] = {"mean": mean, "noise": noise, "noise_source": source, "per_seed": per_seed}
    counts = [cell.get("counts", {}) for cell in cells]
    training = [cell.get("training", {}) for cell in cells]
    return {
        "configuration": name,
        "cells": [cell["cell"] for cell in cells],
        "samples_per_cell": [sum((count.get("samples") or {}).values()) for count in counts],
        "images_trained": [item.get("images_seen") for item in training],
        "train_minutes": [None if item.get("train_seconds") is None else item["train_seconds"] / 60 for item in training],
        "values": values,
    }


def _change(metric: Metric, value: dict, base: dict, real_roughness: float | None) -> dict:
    if value["mean"] is None or base["mean"] is None:
        return {"difference": None, "noise": None, "improvement_pct": None, "within_noise": None}
    difference = value["mean"] - base["mean"]
    noise = None
    if value["noise"] is not None and base["noise"] is not None:
        noise = math.hypot(value["noise"], base["noise"])
    bad_cell, bad_base = metric.badness(value["mean"], real_roughness), metric.badness(base["mean"], real_roughness)
    improvement = None
    if bad_cell is not None and bad_base is not None and abs(bad_base) > max(1e-12, _badness_noise(metric, base)):
        improvement = (bad_base - bad_cell) / abs(bad_base) * 100.0
    within = None if noise is None else bool(abs(difference) <= WITHIN_NOISE_Z * noise)
    return {"difference": difference, "noise": noise, "improvement_pct": improvement, "within_noise": within}


def _badness_noise(metric: Metric, base: dict) -> float:
    """WITHIN_NOISE_Z standard errors of the baseline's badness: a baseline this close to its ideal
    (no excess jaggedness, ratio 1, ...) has no badness to take a percentage of."""
    if base["noise"] is None:
        return 0.0
    scale = 1.0 / base["mean"] if metric.better == "real" and metric.key != "edge_roughness" and base["mean"] > 0 else 1.0
    return WITHIN_NOISE_Z * base["noise"] * scale


def _mean(values) -> float | None:
    known = [value for value in values if value is not None]
    return float(np.mean(known)) if known else None


def _number(value: float | None, metric: Metric, noise: float | None = None) -> str:
    if value is None:
        return "–"
    text = f"{value:+.{metric.digits}f}" if metric.signed else f"{value:.{metric.digits}f}"
    return text if noise is None else f"{text} ± {noise:.{metric.digits}f}"


def _spread(values: list, digits: int = 0) -> str:
    """'64' when every seed has the same count, else 'low–high'."""
    known = [value for value in values if value is not None]
    if not known:
        return "–"
    low, high = f"{min(known):,.{digits}f}", f"{max(known):,.{digits}f}"
    return low if low == high else f"{low}–{high}"


def format_markdown(table: dict, display_size: int, real_dir: str) -> str:
    """The two tables (values with noise; % improvement vs the baseline) as Markdown."""
    labels = [metric.label for metric in METRICS]
    roughness = next(metric for metric in METRICS if metric.key == "edge_roughness")
    lines = [f"Every cell's samples resized (LANCZOS) to {display_size} px and measured against the real train "
             f"images of {real_dir}; 'jagg. (nearest view)' measures the samples enlarged with nearest neighbour "
             f"instead, as a small image looks in a viewer that does not smooth. Value ± standard error (source per "
             f"metric in study.json: seeds, images or bootstrap); – = not available. Real edge roughness: "
             f"{_number(table.get('edge_roughness_real'), roughness)}.",
             "", "| configuration | seeds | samples/cell | images trained | train min | " + " | ".join(labels) + " |",
             "|---" * (5 + len(labels)) + "|"]
    real = (table.get("real_val") or {}).get("values")
    if real:
        cells = [_number(real.get(metric.key), metric) for metric in METRICS]
        lines.append(f"| real val (floor) | | {real.get('n') or '–'} | | | " + " | ".join(cells) + " |")
    for row in table["configurations"]:
        cells = [_number(row["values"][m.key]["mean"], m, row["values"][m.key]["noise"]) for m in METRICS]
        lines.append(f"| {row['configuration']} | {len(row['cells'])} | {_spread(row['samples_per_cell'])} | "
                     f"{_spread(row['images_trained'])} | {_spread(row['train_minutes'], 1)} | " + " | ".join(cells) + " |")
    lines += ["", f"Change against the baseline **{table['baseline']}**, % improvement (positive = better; "
                  "≈ = within noise, not told from chance; ? = no noise estimate, add seeds or --eval-bootstrap):", "",
              "| configuration | " + " | ".join(labels) + " |", "|---" * (1 + len(labels)) + "|"]
    if not table.get("baseline_measured"):
        lines.append(f"| (baseline {table['baseline']} has no results yet) |" + " |" * len(labels))
    for row in table["configurations"]:
        if row["vs_baseline"] is None or row["configuration"] == table["baseline"]:
            continue
        cells = []
        for metric in METRICS:
            change = row["vs_baseline"][metric.key]
            if change["improvement_pct"] is None:
                cells.append("–")
                continue
            mark = " ?" if change["within_noise"] is None else " ≈" if change["within_noise"] else ""
            cells.append(f"{change['improvement_pct']:+.0f}%{mark}")
        lines.append(f"| {row['configuration']} | " + " | ".join(cells) + " |")
    paired = format_paired([{**row, "name": row["configuration"]} for row in table["configurations"]], METRICS, labels)
    if paired:
        lines += ["", "The same change paired by seed (each seed against the baseline's cell of that seed, which shares "
                      "its data order, noise draws and sampler seed): mean % improvement (95 % Student-t interval); "
                      "≈ = the interval holds 0; – = fewer than two seeds on both sides:", ""] + paired
    return "\n".join(lines)
