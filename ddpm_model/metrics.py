"""Run metrics: a JSON-lines log, the loss-curve PNG, and the console progress display.

``metrics.jsonl`` holds one JSON object per line. Training records carry ``step``, ``images``
(images seen, all ranks), ``epoch``, ``loss`` (mean over the log interval), ``lr``,
``img_per_s``, ``data_wait`` (fraction of wall time spent waiting for batches) and
``grad_norm``; validation records carry ``step``, ``images``, ``val_loss`` and ``val_loss_ema``.

The curve is drawn with PIL because matplotlib is not a dependency and a two-series line plot
does not justify one.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from PIL import Image, ImageDraw


class MetricsLog:
    """Append-only JSON-lines file; `truncate_after(step)` drops records a resumed run will redo."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill; the step it describes is redone on resume
        return records

    def truncate_after(self, step: int) -> None:
        kept = [record for record in self.read() if record.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept), encoding="utf-8")


def _series(records: Iterable[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    return [
        (float(r["step"]), float(r[key]))
        for r in records
        if r.get(key) is not None and math.isfinite(float(r[key])) and float(r[key]) > 0
    ]


def plot_loss_curve(records: list[dict[str, Any]], path: str | Path, width: int = 640, height: int = 360) -> Path | None:
    """Draw train loss (blue) and validation loss (orange, EMA weights if logged) on a log axis.

    Returns the PNG path, or None when there is nothing to plot yet.
    """
    train = _series(records, "loss")
    val = _series(records, "val_loss_ema") or _series(records, "val_loss")
    points = train + val
    if not points:
        return None
    left, right, top, bottom = 64, 16, 24, 40
    x_min, x_max = min(p[0] for p in points), max(p[0] for p in points)
    y_min, y_max = (math.log10(v) for v in (min(p[1] for p in points), max(p[1] for p in points)))
    x_span, y_span = max(x_max - x_min, 1.0), max(y_max - y_min, 1e-3)

    def to_pixel(step: float, value: float) -> tuple[float, float]:
        x = left + (step - x_min) / x_span * (width - left - right)
        y = top + (y_max - math.log10(value)) / y_span * (height - top - bottom)
        return x, y

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((left, top, width - right, height - bottom), outline="black")
    for fraction in (0.0, 0.5, 1.0):
        value = 10 ** (y_max - fraction * y_span)
        y = top + fraction * (height - top - bottom)
        draw.text((4, y - 6), f"{value:.3g}", fill="black")
        step = x_min + fraction * x_span
        draw.text((left + fraction * (width - left - right) - 16, height - bottom + 6), f"{step:.0f}", fill="black")
    draw.text((width // 2 - 12, height - 16), "step", fill="black")
    blue, orange = (31, 119, 180), (255, 127, 14)
    for series, colour, name, offset, dots in ((train, blue, "train loss", 0, False), (val, orange, "val loss", 110, True)):
        pixels = [to_pixel(*p) for p in series]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        if dots or len(pixels) == 1:
            for x, y in pixels:
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        draw.text((left + 8 + offset, 6), name, fill=colour)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    image.save(temp, format="PNG")
    temp.replace(path)
    return path


class ProgressDisplay:
    """A rich progress bar (loss, images/s, ETA) on a terminal; one plain line per log otherwise."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool, live: bool | None = None):
        self.enabled = enabled
        self.total_steps = total_steps
        self.live = sys.stderr.isatty() if live is None else live
        self._progress = None
        self._task = None
        self._start = time.perf_counter()
        self._start_step = start_step
        if enabled and self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  {task.fields[speed]} img/s"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, loss="-", speed="-")
            self._progress.start()

    def update(self, step: int, record: dict[str, Any] | None = None) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            fields = {}
            if record is not None:
                fields = {"loss": f"{record['loss']:.4f}", "speed": f"{record['img_per_s']:.1f}"}
            self._progress.update(self._task, completed=step, **fields)
        elif record is not None:
            elapsed = time.perf_counter() - self._start
            done = max(step - self._start_step, 1)
            eta = elapsed / done * (self.total_steps - step)
            print(
                f"step {step}/{self.total_steps}  loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
                f"{record['img_per_s']:.1f} img/s  data-wait {record['data_wait']:.0%}  ETA {eta:.0f}s",
                flush=True,
            )

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(text, highlight=False)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
