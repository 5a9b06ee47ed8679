"""STUDY/report/: study.md (the tables and the picture), study.json (every number) and samples.png.

The report is built from every cell of the grid that has metrics at the display size, whichever
task measured it. Each task of a job array rewrites it (atomically) when it finishes, and the
last task's report covers every cell. Cells without metrics yet are listed as pending.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from ddpm_study.cells import Cell, find_configuration
from ddpm_study.config import StudyConfig
from ddpm_study.measure import display_dir, metrics_path
from ddpm_study.files import CELLS_DIR, read_json, write_json
from ddpm_study.table import compare, format_markdown

REPORT_DIR = "report"
FIGURE_IMAGES = 4  # sample tiles per row, spread over the classes


def collect(config: StudyConfig, cells: list[Cell], stage: int | None = None) -> tuple[list[dict], list[Cell]]:
    """(metric documents in grid order, cells without current metrics) at the budget or at `stage` images."""
    documents, pending = [], []
    for cell in cells:
        document = read_json(metrics_path(config, cell, stage))
        (documents.append(document) if document.get("metrics") else pending.append(cell))
    return documents, pending


def write_report(config: StudyConfig, cells: list[Cell], failures: dict[str, str],
                 log: Callable[[str], None] | None = None) -> Path:
    """Write the report over all `cells`; returns the path of study.md."""
    log = log or (lambda line: None)
    out = config.root / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    documents, pending = collect(config, cells)
    baseline = find_configuration(cells, config.baseline) if config.baseline else None
    table = compare(documents, baseline)
    real_dir = config.shard_dir(config.display)
    sections = [f"# Study: {config.root.name}", "", _settings(config), "", "## Comparison at the display size", "",
                format_markdown(table, config.display, str(real_dir)) if documents else "No cell has results yet.", ""]
    if documents:
        figure = _figure(config, cells, documents, out / "samples.png", log)
        if figure is not None:
            sections += [f"## Samples at {config.display} px", "",
                         f"Each row: {FIGURE_IMAGES} samples of one configuration (first seed), resized to {config.display} px, "
                         "then crops of the strongest edges of the first two, enlarged (nearest neighbour) so that "
                         "single pixels show; the last crop is the first sample's window as a plain viewer shows the "
                         "small image enlarged (nearest neighbour from its trained size).", "", f"![samples]({figure.name})", ""]
    curves = {stage: collect(config, cells, stage)[0] for stage in config.budget.measure_at}
    rows = _all_curves(config, curves, documents)  # each run's metrics.jsonl read once
    if config.budget.measure_at:
        sections += _curves_section(config, curves, rows, documents, out)
    sections += ["## Status", ""]
    sections += [f"- pending (no results yet): {', '.join(cell.name for cell in pending)}" if pending else "- every cell measured"]
    sections += [f"- failed {name}: {error}" for name, error in failures.items()]
    warnings = sorted({warning for document in documents for warning in document.get("warnings", [])})
    sections += [f"- ddpm-eval warning: {warning}" for warning in warnings]
    write_json(out / "study.json", {"display_size": config.display, "real": str(real_dir), "settings": _jsonable(config),
                                    "table": table, "pending": [cell.name for cell in pending], "failures": failures,
                                    "curves": rows})
    path = out / "study.md"
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("\n".join(sections) + "\n", encoding="utf-8")
    temporary.replace(path)
    staged = "".join(f", {len(docs)} at {stage:,} images" for stage, docs in curves.items())
    log(f"study: report {path} ({len(documents)} of {len(cells)} cells measured{staged})")
    return path


def _all_curves(config: StudyConfig, curves: dict[int, list[dict]], final: list[dict]) -> dict:
    from ddpm_study.curves import curve_rows, losses_at

    if not config.budget.measure_at:
        return {}
    stages = {**curves, config.budget.images: final}
    for documents in stages.values():
        for document in documents:
            seen = (document.get("training") or {}).get("images_seen")
            if seen is not None:
                document["losses"] = losses_at(config.root / CELLS_DIR / document["cell"] / "metrics.jsonl", seen)
    return curve_rows(stages)


def _curves_section(config: StudyConfig, curves: dict[int, list[dict]], rows: dict, final: list[dict],
                    out: Path) -> list[str]:
    """The metrics at every --measure-at stage and at the budget: a table and curves.png."""
    from ddpm_study.curves import curves_figure, format_curves, format_curves_paired

    measured = {stage: len(documents) for stage, documents in curves.items()}
    section = ["## Along training", "",
               f"Every cell measured on its way at {', '.join(f'{n:,}' for n in config.budget.measure_at)} images seen "
               f"and at the budget ({config.budget.images:,}); value ± standard error over the seeds. 'checkerboard' "
               "is measured at each cell's own size (1 = like real). Cells measured per stage: "
               + ", ".join(f"{stage:,}: {count}" for stage, count in measured.items()) + f", budget: {len(final)}.", "",
               format_curves(rows) if rows else "No stage has results yet.", ""]
    paired = format_curves_paired(rows)
    if paired:
        section += ["Each configuration against the first at each stage, paired by seed (table above: mean % "
                    "improvement, 95 % Student-t interval, ≈ = the interval holds 0):", "", paired, ""]
    documents = final or next((docs for docs in curves.values() if docs), [])
    real = dict((documents[0].get("real_val") or {}) if documents else {})
    real["checkerboard"] = 1.0  # the real train images against themselves, by definition
    figure = curves_figure(rows, out / "curves.png", real)
    if figure is not None:
        section += [f"![measures against images seen]({figure.name})", ""]
    return section


def _settings(config: StudyConfig) -> str:
    grid = config.grid
    budget = (f"{config.budget.images:,} images seen per cell" if config.budget.images is not None
              else f"{config.budget.minutes:g} min of training per cell")
    if config.budget.measure_at:
        budget += f", measured on the way at {', '.join(f'{n:,}' for n in config.budget.measure_at)}"
    widths = ", ".join("preset's" if width is None else str(width) for width in grid.model_channels)
    return (f"Grid: sizes {', '.join(map(str, grid.sizes))} px; up-sampling {', '.join(grid.upsample)}; augmentation "
            f"{', '.join(grid.augment)}; preset {', '.join(grid.preset)}; width {widths}; seeds "
            f"{', '.join(map(str, grid.seeds))}. Budget: {budget}. Samples: {config.sample.n} per class, "
            f"{config.sample.steps} DDIM steps, eta {config.sample.eta:g}, guidance {config.sample.guidance:g}.")


def _figure(config: StudyConfig, cells: list[Cell], documents: list[dict], path: Path, log) -> Path | None:
    from ddpm_study.figure import samples_figure
    from ddpm_study.measure import DisplayReference

    by_name = {cell.name: cell for cell in cells}
    rows, shown = [], set()
    for document in documents:
        if document["configuration"] in shown:
            continue
        shown.add(document["configuration"])
        cell = by_name[document["cell"]]
        folder, nearest = display_dir(config, cell), display_dir(config, cell, nearest=True)
        files = _spread_over_classes([sorted(d.glob("*.png")) for d in sorted(folder.iterdir()) if d.is_dir()])
        plain = nearest / files[0].parent.name / files[0].name if files else None
        rows.append((document["configuration"], [_read_rgb(f) for f in files],
                     _read_rgb(plain) if plain is not None and plain.is_file() else None))
    try:
        val = DisplayReference.of(config.shard_dir(config.display)).real.val
    except (OSError, ValueError) as error:
        log(f"study: no real row in the picture ({error})")
    else:
        picks = _spread_over_classes([list(np.flatnonzero(val.labels == label)) for label in np.unique(val.labels)])
        images = [val.images[index].transpose(1, 2, 0) for index in picks]
        rows.append(("real val", images, images[0] if images else None))
    return samples_figure(rows, path, f"samples at {config.display} px, and enlarged crops of their strongest edges")


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _spread_over_classes(per_class: list[list]) -> list:
    """Up to FIGURE_IMAGES items taken round-robin from the classes' lists."""
    picked = []
    for index in range(FIGURE_IMAGES):
        for items in per_class:
            if index < len(items) and len(picked) < FIGURE_IMAGES:
                picked.append(items[index])
    return picked


def _jsonable(config: StudyConfig) -> dict:
    def convert(value):
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [convert(item) for item in value]
        if isinstance(value, dict):
            return {key: convert(item) for key, item in value.items()}
        return value

    return convert(dataclasses.asdict(config))
