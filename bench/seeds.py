"""Several seeds of bench/quality.py side by side: each arm's figures as mean ± standard error over
its seeds, and its excess SWD over the floor against a reference arm's.

    python bench/seeds.py runs/ablation                      # every ARM-sSEED.json in the folder
    python bench/seeds.py runs/ablation --reference default  # ratios against the arm 'default'

Input: a folder of files ARM-sSEED.json, each the last line of one `bench/quality.py --seed SEED`
run (its JSON). An arm is one setting (e.g. `default`, `shifted` for `--ours-args
"--interpolation shifted-linear"`); a file's sides become arms of their own: `ARM` for ours,
`ARM:diffusers` and `ARM:monai` for the tuned twins, `ARM:example` for diffusers' example recipe,
`ARM:SAMPLER` for each `--samplers` entry (e.g. `default:ddim:50`). Per arm and metric: the mean
over the seeds and its standard error (std / sqrt(seeds)); `excess` is SWD minus the floor (the
real val images' SWD of that seed); `ratio` is the reference arm's mean excess over this arm's
(> 1: this arm is closer to the data), with its standard error from the per-seed ratios, over the
seeds both arms have. A difference is told from chance only when it exceeds two standard errors.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Sequence

FIGURES = ("swd", "excess", "frechet_classifier_distance", "class_accuracy", "spectrum_hf_ratio", "nn_ratio")
LABELS = {"swd": "SWD", "excess": "SWD - floor", "frechet_classifier_distance": "Fréchet",
          "class_accuracy": "class acc.", "spectrum_hf_ratio": "spectrum", "nn_ratio": "NN ratio"}
TWIN_SIDES = {"baseline_tuned": "diffusers", "baseline_monai": "monai", "baseline": "example"}
NAME = re.compile(r"^(?P<arm>.+)-s(?P<seed>\d+)\.json$")


def sides(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The figures of every side one bench/quality.py result holds: '' for ours, then twins and samplers."""
    found = {"": result["ours"]}
    for key, name in TWIN_SIDES.items():
        if result.get(key):
            found[name] = {**result[key], "swd_floor": result["ours"]["swd_floor"]}
    for row in result.get("samplers") or []:
        found[f"{row['sampler']}:{row['steps']}"] = {**row, "swd_floor": result["ours"]["swd_floor"]}
    return found


def collect(folder: Path) -> dict[str, dict[int, dict[str, float]]]:
    """{arm: {seed: {figure: value}}} from every ARM-sSEED.json in `folder`."""
    arms: dict[str, dict[int, dict[str, float]]] = {}
    for path in sorted(folder.glob("*.json")):
        match = NAME.match(path.name)
        if not match:
            continue
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise SystemExit(f"{path}: not a bench/quality.py result ({error}); rerun that seed or remove the file")
        for side, figures in sides(result).items():
            arm = match["arm"] + (f":{side}" if side else "")
            values = {key: figures.get(key) for key in FIGURES if key != "excess"}
            if figures.get("swd") is not None and figures.get("swd_floor") is not None:
                values["excess"] = figures["swd"] - figures["swd_floor"]
            arms.setdefault(arm, {})[int(match["seed"])] = values
    if not arms:
        raise SystemExit(f"{folder}: no ARM-sSEED.json files (the last line of bench/quality.py --seed SEED)")
    return arms


def mean_se(values: Sequence[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    variance = sum((value - mean) ** 2 for value in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def summarize(arms: dict[str, dict[int, dict[str, float]]], reference: str | None) -> list[dict[str, Any]]:
    """One row per arm: seeds, each figure's (mean, se), and the excess ratio against `reference`."""
    rows = []
    for arm, seeds in arms.items():
        row: dict[str, Any] = {"arm": arm, "seeds": sorted(seeds)}
        for key in FIGURES:
            values = [figures[key] for figures in seeds.values() if figures.get(key) is not None]
            row[key] = mean_se(values) if values else None
        if reference is not None and reference in arms and arm != reference:
            shared = sorted(set(seeds) & set(arms[reference]))
            ratios = [arms[reference][seed]["excess"] / seeds[seed]["excess"] for seed in shared
                      if seeds[seed].get("excess") and arms[reference][seed].get("excess") is not None]
            row["ratio"] = mean_se(ratios) if ratios else None
            row["ratio_seeds"] = shared
        rows.append(row)
    return rows


def fmt(pair: tuple[float, float | None] | None, digits: int = 3) -> str:
    if pair is None:
        return "–"
    mean, se = pair
    return f"{mean:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def markdown(rows: list[dict[str, Any]], reference: str | None) -> str:
    head = ["arm", "seeds"] + [LABELS[key] for key in FIGURES] + ([f"excess ratio vs {reference}"] if reference else [])
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for row in rows:
        cells = [row["arm"], ",".join(map(str, row["seeds"]))]
        cells += [fmt(row[key], 2 if key in ("frechet_classifier_distance", "class_accuracy", "spectrum_hf_ratio", "nn_ratio")
                      else 3) for key in FIGURES]
        if reference:
            cells.append(fmt(row.get("ratio"), 2) if row["arm"] != reference else "1")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder of ARM-sSEED.json files (bench/quality.py's last lines)")
    parser.add_argument("--reference", default=None, help="the arm the excess SWD ratios are taken against")
    args = parser.parse_args(argv)
    arms = collect(args.folder)
    if args.reference is not None and args.reference not in arms:
        parser.error(f"--reference {args.reference!r}: no such arm; arms: {', '.join(arms)}")
    rows = summarize(arms, args.reference)
    print(markdown(rows, args.reference))
    print(json.dumps({"reference": args.reference, "rows": rows}))


if __name__ == "__main__":
    sys.exit(main())
