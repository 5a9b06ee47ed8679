"""The evaluation result as a plain-text table (terminal) or Markdown table (report).

Each row shows the samples beside the two references, and which direction is better.
"""
from __future__ import annotations

# (key, label, which direction is better)
ROWS = (
    ("swd", "SWD, mean over pyramid levels", "lower; val floor is the best reachable"),
    ("spectrum_hf_ratio", "spectrum high-frequency ratio", "closer to 1; >1 noise or aliasing, <1 blur; blind to staircases"),
    ("spectrum_distance", "spectrum log distance (decades)", "lower"),
    ("jaggedness", "jaggedness (staircase edges, points)", "0 = like real; >0 staircase edges; <0 blur or noise"),
    ("checkerboard", "checkerboard (stride-2 spectral peaks)", "1 = like real; >1 periodic up-sampling artefacts"),
    ("edge_roughness", "edge roughness (degrees)", "close to real train; wobble of edge directions, not staircases"),
    ("edge_orientation_distance", "edge orientation distance", "lower; edge directions unlike real"),
    ("class_accuracy", "class accuracy (eval classifier)", "higher; trust it only if val accuracy is high"),
    ("frechet_classifier_distance", "Frechet dist., classifier features", "lower; NOT Inception FID"),
    ("copy_fraction", "near-copies of training images", "lower; 0 is healthy"),
    ("nn_ratio", "nearest-train distance / val's", "about 1; well below 1 = memorising"),
)
PER_CLASS = ("swd", "spectrum_hf_ratio", "jaggedness", "edge_roughness", "class_accuracy", "frechet_classifier_distance", "copies")


def _number(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def _value(metrics: dict, key: str) -> str:
    """A metric as printed; jaggedness with its standard error (percentage points, signed)."""
    if key == "jaggedness" and metrics.get("jaggedness") is not None:
        error = metrics.get("jaggedness_se")
        return f"{metrics['jaggedness']:+.1f}" + (f" ± {error:.1f}" if error is not None else "")
    return _number(metrics[key])


def _rows(result: dict) -> list[list[str]]:
    floor, ceiling = result["reference"]["val_vs_train"], result["reference"]["blurred_vs_train"]
    rows = []
    for key, label, better in ROWS:
        rows.append([label, _value(result, key), _value(floor, key), _value(ceiling, key), better])
        if key == "swd":
            for index, size in enumerate(result["swd_level_sizes"]):
                name = f"  SWD level {size} px" + (" (finest: edges)" if index == 0 else "")
                rows.append([name, _number(result["swd_levels"][index]), _number(floor["swd_levels"][index]),
                             _number(ceiling["swd_levels"][index]), "lower"])
        if key == "edge_roughness":
            rows[-1][4] = (f"close to real train ({_number(result['edge_roughness_real'])}); "
                           "wobble of edge directions, not staircases")
    return rows


def _counts(result: dict) -> str:
    counts = result["counts"]
    per = ", ".join(f"{name} {counts['samples'][name]}" for name in result["classes"])
    return (f"{result['n']} samples ({per}) vs the real train split ({sum(counts['train'].values())} images); "
            f"copies flagged: {result['copies']}")


def format_text(result: dict) -> str:
    """Aligned plain-text summary for the terminal."""
    header = ["metric", "samples", "val (floor)", "blurred (ceiling)", "better"]
    rows = [header] + _rows(result)
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [_counts(result)]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4] for row in rows]
    lines.append("")
    lines.append("per class: " + "  ".join(PER_CLASS))
    for name, metrics in result["per_class"].items():
        lines.append(f"  {name}: " + "  ".join(_value(metrics, key) for key in PER_CLASS))
    lines.append(f"eval classifier val accuracy {_number(result['classifier_val_accuracy'])} ({result['classifier']['cache']})")
    lines.append(f"note: {result['frechet_note']}")
    lines += [f"warning: {message}" for message in result["warnings"]]
    if result.get("utility"):
        lines += ["", *_utility_text(result["utility"])]
    return "\n".join(lines)


UTILITY_ARMS = (("real_only", "real only"), ("real_plus_synthetic", "real + synthetic"), ("synthetic_only", "synthetic only"))


def _estimate(value: dict | None, interval: bool = False) -> str:
    """'mean ± se', with '[low, high]' when `interval`; signed for differences."""
    if value is None or value["mean"] is None:
        return "n/a"
    sign = "+" if interval else ""
    text = f"{value['mean']:{sign}.3f} ± " + ("n/a" if value["se"] is None else f"{value['se']:.3f}")
    if interval and value["low"] is not None:
        text += f" [{value['low']:+.3f}, {value['high']:+.3f}]"
    return text


def _utility_rows(utility: dict) -> list[list[str]]:
    """Header and one row per arm and for the paired difference: metric 'mean ± se' cells."""
    rare = utility["rare_class"]
    rows = [["arm", "balanced accuracy", f"{rare} recall", f"{rare} AUROC"]]
    metrics = ("balanced_accuracy", "rare_recall", "rare_auroc")
    for key, name in UTILITY_ARMS:
        arm = utility["arms"][key]
        rows.append([name] + [_estimate(None if arm is None else arm[metric]) for metric in metrics])
    rows.append(["difference (real + synthetic - real only)"]
                + [_estimate(utility["difference"][metric], interval=True) for metric in metrics])
    return rows


def _utility_notes(utility: dict) -> list[str]:
    added = ", ".join(f"{name} {count:.0f}" for name, count in utility["synthetic_added"].items())
    return [f"samples added per fold: {added}; mean ± standard error over {utility['folds']} folds x "
            f"{len(utility['seeds'])} seeds, [{utility['interval']}]", utility["line"]]


def _utility_text(utility: dict) -> list[str]:
    rows = _utility_rows(utility)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["does adding the samples help a classifier? (each arm tested on held-out real images)"]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return lines + _utility_notes(utility) + [f"warning: {message}" for message in utility["warnings"]]


def format_utility_markdown(utility: dict) -> str:
    """The utility table and verdict as Markdown."""
    rows = _utility_rows(utility)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    notes, line = _utility_notes(utility)
    return "\n".join(lines + ["", notes, "", f"**{line}**", ""] + [f"- warning: {message}" for message in utility["warnings"]])


def format_markdown(result: dict) -> str:
    """The same numbers as Markdown tables."""
    header = ["metric", "samples", "val (floor)", "blurred (ceiling)", "better"]
    lines = [_counts(result), "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.strip() for cell in row) + " |" for row in _rows(result)]
    lines += ["", "| class | " + " | ".join(PER_CLASS) + " |", "|" + "---|" * (len(PER_CLASS) + 1)]
    for name, metrics in result["per_class"].items():
        lines.append(f"| {name} | " + " | ".join(_value(metrics, key) for key in PER_CLASS) + " |")
    return "\n".join(lines)
