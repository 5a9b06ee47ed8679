"""The measures along training (--measure-at): one table and one chart of each metric against images seen.

Each stage of each configuration is the mean over its seeds, with the standard error over the seeds
(table.py's rule), so a curve carries the same noise as the study's main table at its budget.
"""
from __future__ import annotations

from pathlib import Path

from ddpm_study.table import METRICS, compare

CURVE_METRICS = ("jaggedness", "jaggedness_nearest", "checkerboard", "swd", "swd_finest", "frechet_classifier_distance",
                 "class_accuracy", "nn_ratio")
PANELS = ("jaggedness", "jaggedness_nearest", "swd", "checkerboard", "class_accuracy", "nn_ratio")


def curve_rows(documents_by_stage: dict[int, list[dict]]) -> dict[str, list[dict]]:
    """{configuration: [{images, values: {metric: {mean, noise, per_seed}}}] in stage order}."""
    curves: dict[str, list[dict]] = {}
    for images, documents in sorted(documents_by_stage.items()):
        for row in compare(documents, None)["configurations"]:
            curves.setdefault(row["configuration"], []).append({"images": images, "seeds": len(row["cells"]),
                                                                "values": row["values"]})
    return curves


def format_curves(curves: dict[str, list[dict]]) -> str:
    """Markdown: one row per configuration and stage."""
    metrics = [metric for metric in METRICS if metric.key in CURVE_METRICS]
    lines = ["| configuration | images seen | seeds | " + " | ".join(metric.label for metric in metrics) + " |",
             "|---" * (3 + len(metrics)) + "|"]
    for name, points in curves.items():
        for point in points:
            cells = []
            for metric in metrics:
                value = point["values"][metric.key]
                if value["mean"] is None:
                    cells.append("–")
                    continue
                text = f"{value['mean']:+.{metric.digits}f}" if metric.signed else f"{value['mean']:.{metric.digits}f}"
                cells.append(text + (f" ± {value['noise']:.{metric.digits}f}" if value["noise"] is not None else ""))
            lines.append(f"| {name} | {point['images']:,} | {point['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    labels = {metric.key: metric.label for metric in METRICS}
    figure = Figure(figsize=(12, 6.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 3).ravel()
    for axis, key in zip(axes, PANELS):
        for name, points in curves.items():
            known = [p for p in points if p["values"][key]["mean"] is not None]
            if not known:
                continue
            x = [p["images"] for p in known]
            y = [p["values"][key]["mean"] for p in known]
            error = [p["values"][key]["noise"] or 0.0 for p in known]
            axis.errorbar(x, y, yerr=error, marker="o", markersize=3, capsize=2, label=name)
        if real and real.get(key) is not None:
            axis.axhline(real[key], color="grey", linestyle="--", linewidth=1, label="real val")
        axis.set_xscale("log")
        axis.set_title(labels[key], fontsize=10)
        axis.set_xlabel("images seen", fontsize=8)
        axis.tick_params(labelsize=8)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    return path
