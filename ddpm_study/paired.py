"""The change against the baseline paired by seed, with a Student-t interval.

Cells of one seed share their data order, their noise draws and the sampler's seed (common random
numbers), so much of the spread between seeds is shared by every configuration: a seed that draws
more staircase does so in each arm. Comparing each configuration with the baseline seed by seed
removes that shared part. For each seed s that both have:

    d_s = badness(baseline_s) - badness(cell_s)          (positive = the cell is better)

(badness as in table.py: the value, 1 - accuracy, or the distance from the real value). Over n
seeds the mean difference d̄ has the standard error sd(d) / sqrt(n), and its 95 % interval is

    d̄ ± t(0.975, n - 1) · sd(d) / sqrt(n)

with Student's t quantile for n - 1 degrees of freedom (12.71 for two seeds: one degree of freedom
gives a wide interval, honestly). Both are reported as % of the baseline's mean badness, like the
unpaired change. A change is clear when the interval excludes 0, else within noise (≈).
"""
from __future__ import annotations

import math

import numpy as np

from ddpm_study.cells import Cell

# Student's t 0.975 quantile for 1..30 degrees of freedom (standard tables, 4 significant digits)
T975 = (12.71, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z975 = 1.959964  # the normal quantile, the limit of t for many degrees of freedom


def t975(dof: int) -> float:
    """Student's t 0.975 quantile: the table up to 30 degrees of freedom, then the first Cornish-Fisher
    term z + (z^3 + z) / (4 dof) (within 0.001 of the exact value beyond 30)."""
    if dof < 1:
        raise ValueError(f"t975: needs at least 1 degree of freedom, got {dof}")
    if dof <= len(T975):
        return T975[dof - 1]
    return Z975 + (Z975 ** 3 + Z975) / (4 * dof)


def seed_of(document: dict) -> str:
    """The seed of a cell's metric document (measure.py), from its cell name."""
    return Cell.seed_in(document["cell"], document["configuration"])


def paired_change(metric, cells: list[dict], base_cells: list[dict], real_roughness: float | None) -> dict | None:
    """The paired improvement of `cells` over `base_cells` in `metric` (a table.Metric); None with fewer
    than two seeds known on both sides or no baseline badness to take a percentage of."""
    base_by_seed = {seed_of(document): document for document in base_cells}
    pairs = []
    for document in cells:
        base = base_by_seed.get(seed_of(document))
        if base is None:
            continue
        bad_cell = metric.badness(document["metrics"].get(metric.key), real_roughness)
        bad_base = metric.badness(base["metrics"].get(metric.key), real_roughness)
        if bad_cell is not None and bad_base is not None:
            pairs.append((bad_base, bad_cell))
    if len(pairs) < 2:
        return None
    differences = np.array([bad_base - bad_cell for bad_base, bad_cell in pairs])
    scale = abs(float(np.mean([bad_base for bad_base, _ in pairs])))
    if scale <= 1e-12:
        return None
    mean = float(differences.mean())
    half = t975(len(pairs) - 1) * float(differences.std(ddof=1)) / math.sqrt(len(pairs))
    low, high = mean - half, mean + half
    return {"seeds": len(pairs), "difference": mean, "low": low, "high": high,
            "improvement_pct": mean / scale * 100.0, "interval_pct": [low / scale * 100.0, high / scale * 100.0],
            "clear": bool(low > 0 or high < 0)}


def format_paired(rows: list[dict], metrics, labels: list[str]) -> list[str]:
    """Markdown rows '| name | +6% (-1 to +13) ≈ | ...' of rows that carry a `paired` dict; [] if none does."""
    lines = []
    for row in rows:
        paired = row.get("paired") or {}
        if not any(paired.values()):
            continue
        cells = []
        for metric in metrics:
            change = paired.get(metric.key)
            if change is None:
                cells.append("–")
                continue
            low, high = change["interval_pct"]
            cells.append(f"{change['improvement_pct']:+.0f}% ({low:+.0f} to {high:+.0f})" + ("" if change["clear"] else " ≈"))
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    if not lines:
        return []
    return ["| configuration | " + " | ".join(labels) + " |", "|---" * (1 + len(labels)) + "|"] + lines
