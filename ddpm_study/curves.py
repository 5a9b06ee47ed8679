"""The measures along training (--measure-at): one table and one chart of each metric against images seen.

Each stage of each configuration is the mean over its seeds, with the standard error over the seeds
(table.py's rule), so a curve carries the same noise as the study's main table at its budget.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ddpm_study.paired import format_paired
from ddpm_study.table import METRICS, compare, seed_mean

TRAIN_LOSS_LINES = 4  # metrics lines averaged for the train loss at a stage (a line is a mean over --log-every steps)
LOSSES = (("train_loss", "train loss"), ("val_loss", "val loss"))  # the run's own, from its metrics.jsonl

CURVE_METRICS = ("jaggedness", "jaggedness_nearest", "checkerboard", "swd", "swd_finest", "frechet_classifier_distance",
                 "class_accuracy", "nn_ratio")
PANELS = ("jaggedness", "jaggedness_nearest", "swd", "checkerboard", "class_accuracy", "nn_ratio", "train_loss", "val_loss")


def losses_at(metrics_path: Path, images: int) -> dict[str, float | None]:
    """A run's train loss (mean of its last TRAIN_LOSS_LINES metrics lines up to `images` seen) and
    validation loss of the training weights (its last line up to `images`) from its metrics.jsonl."""
    try:
        lines = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return {"train_loss": None, "val_loss": None}
    seen = [line for line in lines if line.get("images", math.inf) <= images]
    train = [line["loss"] for line in seen if "loss" in line][-TRAIN_LOSS_LINES:]
    val = [line["val_loss"] for line in seen if "val_loss" in line]
    return {"train_loss": float(np.mean(train)) if train else None, "val_loss": val[-1] if val else None}


def curve_rows(documents_by_stage: dict[int, list[dict]]) -> dict[str, list[dict]]:
    """{configuration: [{images, values: {metric: {mean, noise, per_seed}}}] in stage order}; a
    document's `losses` (losses_at) become the train and val loss values."""
    curves: dict[str, list[dict]] = {}
    for images, documents in sorted(documents_by_stage.items()):
        for row in compare(documents, None)["configurations"]:
            group = [document for document in documents if document["configuration"] == row["configuration"]]
            values = {**row["values"], **{key: _spread([(d.get("losses") or {}).get(key) for d in group])
                                          for key, _ in LOSSES}}
            curves.setdefault(row["configuration"], []).append({"images": images, "seeds": len(row["cells"]),
                                                                "values": values, "paired": row.get("paired")})
    return curves


def _spread(per_seed: list) -> dict:
    mean, noise = seed_mean(per_seed)
    return {"mean": mean, "noise": noise, "per_seed": per_seed}


def format_curves(curves: dict[str, list[dict]]) -> str:
    """Markdown: one row per configuration and stage."""
    metrics = [(metric.key, metric.label, metric.digits, metric.signed) for metric in METRICS if metric.key in CURVE_METRICS]
    metrics += [(key, label, 4, False) for key, label in LOSSES]
    lines = ["| configuration | images seen | seeds | " + " | ".join(label for _, label, _, _ in metrics) + " |",
             "|---" * (3 + len(metrics)) + "|"]
    for name, points in curves.items():
        for point in points:
            cells = []
            for key, _, digits, signed in metrics:
                value = point["values"].get(key) or {"mean": None}
                if value["mean"] is None:
                    cells.append("–")
                    continue
                text = f"{value['mean']:+.{digits}f}" if signed else f"{value['mean']:.{digits}f}"
                cells.append(text + (f" ± {value['noise']:.{digits}f}" if value.get("noise") is not None else ""))
            lines.append(f"| {name} | {point['images']:,} | {point['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_curves_paired(curves: dict[str, list[dict]]) -> str:
    """Markdown: each configuration's change against the first, paired by seed, at every stage ('' if none has
    two seeds on both sides)."""
    metrics = [metric for metric in METRICS if metric.key in CURVE_METRICS]
    rows = [{"name": f"{name}, {point['images']:,} images", "paired": point.get("paired")}
            for name, points in curves.items() for point in points]
    return "\n".join(format_paired(rows, metrics, [metric.label for metric in metrics]))


def curves_figure(curves: dict[str, list[dict]], path: Path, real: dict | None = None) -> Path | None:
    """A chart per metric of PANELS against images seen (log scale), a line per configuration, ± the standard
    error; the real val images' value as a dashed line. None without matplotlib or points."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    if not curves:
        return None
    labels = {metric.key: metric.label for metric in METRICS} | dict(LOSSES)
    figure = Figure(figsize=(15, 6.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 4).ravel()
    stages = sorted({point["images"] for points in curves.values() for point in points})
    for axis, key in zip(axes, PANELS):
        for name, points in curves.items():
            known = [p for p in points if (p["values"].get(key) or {}).get("mean") is not None]
            if not known:
                continue
            x = [p["images"] for p in known]
            y = [p["values"][key]["mean"] for p in known]
            error = [p["values"][key]["noise"] or 0.0 for p in known]
            axis.errorbar(x, y, yerr=error, marker="o", markersize=3, capsize=2, label=name)
        if real and real.get(key) is not None:
            axis.axhline(real[key], color="grey", linestyle="--", linewidth=1, label="real val")
        axis.set_xscale("log")
        axis.minorticks_off()  # the log axis' own 2x10^3, 3x10^3 ... labels overlap; label the stages instead
        axis.set_xticks(stages, [_short_count(images) for images in stages])
        axis.set_title(labels[key], fontsize=10)
        axis.set_xlabel("images seen", fontsize=8)
        axis.tick_params(labelsize=8)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    return path


def _short_count(images: int) -> str:
    """4000 -> '4k', 1500 -> '1.5k', 2000000 -> '2M', 800 -> '800': an axis label."""
    for scale, suffix in ((1_000_000, "M"), (1_000, "k")):
        if images >= scale:
            return f"{images / scale:g}{suffix}"
    return str(images)
