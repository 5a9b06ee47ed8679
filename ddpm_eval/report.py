"""`--report DIR`: a Markdown page with the numbers, sample grids beside real images, SWD bars and spectra.

Writes DIR/index.md, DIR/results.json and the PNGs it links: grid-<class>.png (samples above
real train images and the blurred reference), swd-levels.png, spectrum.png and, when near-copies
were flagged, copies.png (each flagged sample above its nearest training image).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ddpm_data.grid import save_grid
from ddpm_eval.images import ImageSet
from ddpm_eval.plots import bar_chart, line_chart
from ddpm_eval.summary import UTILITY_ARMS, format_markdown, format_utility_markdown

GRID_COLUMNS = 8
SET_NAMES = {"samples": "samples", "val_vs_train": "val (floor)", "blurred_vs_train": "blurred (ceiling)"}


def _spread(image_set: ImageSet, label: int, count: int = GRID_COLUMNS) -> list[np.ndarray]:
    """Up to `count` images of class `label`, evenly spaced through the set (deterministic)."""
    indices = np.flatnonzero(image_set.labels == label)
    chosen = indices[np.linspace(0, len(indices) - 1, min(count, len(indices))).round().astype(int)] if len(indices) else []
    return [image_set.images[i] for i in chosen]


def write_report(result: dict, classes: tuple[str, ...], samples: ImageSet, train: ImageSet, blurred: ImageSet, out_dir: Path) -> Path:
    """Write the report for `result` (from `evaluate`; `classes` = the shards' names by label) into `out_dir`.

    Returns the path of index.md.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result, indent=2, sort_keys=True), encoding="utf-8")
    sections = ["# Sample quality report", "", format_markdown(result), ""]
    sections += [f"Eval classifier val accuracy: {result['classifier_val_accuracy']:.3f}. {result['frechet_note']}.", ""]
    sections += [f"- warning: {message}" for message in result["warnings"]] + [""]

    sections += ["## Samples beside real images", ""]
    for name in result["classes"]:
        label = classes.index(name)
        rows = {"samples": _spread(samples, label), "real train": _spread(train, label), "blurred val": _spread(blurred, label)}
        path = save_grid({k: v for k, v in rows.items() if v}, out_dir / f"grid-{name}.png", tile=max(64, samples.images.shape[-1]))
        sections += [f"### {name}", "", f"![{name}: samples, real train, blurred val]({path.name})", ""]

    levels = [f"{size} px" for size in result["swd_level_sizes"]]
    series = {"samples": result["swd_levels"]} | {SET_NAMES[key]: result["reference"][key]["swd_levels"]
                                                   for key in ("val_vs_train", "blurred_vs_train")}
    bar_chart(levels, series, "SWD per pyramid level vs real train (lower is closer)",
              x_label="pyramid level (side length, finest left)",
              y_label="SWD of normalised 7x7 patches").save(out_dir / "swd-levels.png")
    sections += ["## SWD per pyramid level", "", "The finest level (left) is where jaggy edges show.", "",
                 "![SWD per level](swd-levels.png)", ""]

    spectra = result["spectra"]
    lines = {"real train": spectra["real_train"]} | {SET_NAMES[key]: spectra[key] for key in SET_NAMES}
    line_chart(spectra["frequency"], lines, "Radial power spectrum of luminance", "spatial frequency (cycles / pixel)",
               y_label="power (pixel values in [-1, 1], squared)", reference="real train").save(out_dir / "spectrum.png")
    sections += ["## Power spectrum", "", "Above the real curve at high frequency: noise or aliasing; below it: blur. "
                 "A staircase made from a small image can sit on either side: read the jaggedness row for it.", "",
                 "![spectrum](spectrum.png)", ""]

    sections += ["## Near-copies of training images", ""]
    if result["flagged_copies"]:
        sample_index = {name: i for i, name in enumerate(samples.names)}
        train_index = {name: i for i, name in enumerate(train.names)}
        shown = result["flagged_copies"][:GRID_COLUMNS]
        save_grid({"sample": [samples.images[sample_index[c["sample"]]] for c in shown],
                   "nearest train": [train.images[train_index[c["train_key"]]] for c in shown]},
                  out_dir / "copies.png", tile=max(64, samples.images.shape[-1]))
        sections += ["![copies](copies.png)", "", "| sample | training image | distance | 2nd nearest | mirrored |",
                     "|---|---|---|---|---|"]
        sections += [f"| {c['sample']} | {c['train_key']} | {c['distance']:.4f} | {c['second_distance']:.4f} | {c['flipped']} |"
                     for c in result["flagged_copies"]]
    else:
        sections.append("None flagged.")
    if result.get("utility"):
        sections += ["", *_utility_section(result["utility"], out_dir)]
    index = out_dir / "index.md"
    index.write_text("\n".join(sections) + "\n", encoding="utf-8")
    return index


def _utility_section(utility: dict, out_dir: Path) -> list[str]:
    """The arms' table, verdict and utility.png: each arm's mean with its 95 % interval per metric."""
    metrics = {"balanced_accuracy": "balanced accuracy", "rare_recall": f"{utility['rare_class']} recall",
               "rare_auroc": f"{utility['rare_class']} AUROC"}
    arms = [(name, utility["arms"][key]) for key, name in UTILITY_ARMS if utility["arms"][key] is not None]
    series = {name: [arm[metric]["mean"] for metric in metrics] for name, arm in arms}
    errors = {name: [None if arm[metric]["high"] is None else arm[metric]["high"] - arm[metric]["mean"] for metric in metrics]
              for name, arm in arms}
    bar_chart(list(metrics.values()), series, "Classifiers tested on held-out real images (95% intervals)",
              y_label="score (1 = perfect)", errors=errors).save(out_dir / "utility.png")
    return ["## Do the samples help a classifier?", "", format_utility_markdown(utility), "", "![utility](utility.png)", ""]
