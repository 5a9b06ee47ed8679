"""Run metrics: a JSON-lines log, the loss-curve PNG, and the console progress display.

``metrics.jsonl`` holds one JSON object per line. Training records carry ``step``, ``images``
(images seen, all ranks), ``epoch``, ``loss`` (mean over the log interval), ``lr``,
``img_per_s``, ``data_wait`` (fraction of wall time spent waiting for batches) and
``grad_norm``; validation records carry ``step``, ``images``, ``val_loss`` and ``val_loss_ema``.
A record may also carry ``quality_swd``, a sample-quality score at that step (mean over classes
of the SWD of samples against real images, lower is better), with ``quality_swd_worst`` and
``quality_swd_classes``; the loss curve draws ``quality_swd`` on a second axis when present.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from ddpm_data.redact import scrub


class MetricsLog:
    """Append-only JSON-lines file; `truncate_after(step)` drops records a resumed run will redo."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(scrub(record), sort_keys=True) + "\n")

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
    """(step, value) of every record holding a finite, positive `key`."""
    return [
        (float(r["step"]), float(r[key]))
        for r in records
        if r.get(key) is not None and math.isfinite(float(r[key])) and float(r[key]) > 0
    ]


SMOOTHING_WINDOW = 0.05  # width of the train-loss moving average, as a fraction of the logged points
SMOOTHING_MIN_POINTS = 10  # below this the raw train loss is drawn alone
LOG_SCALE_MIN_RATIO = 5.0  # max/min of a series from which its axis is logarithmic
MINOR_LABELS_MAX_RATIO = 100.0  # up to this max/min a log axis also labels 2x and 5x ticks
DPI = 100


def _smooth(values: list[float], window: int) -> list[float]:
    """Centred moving average over `window` points, narrowed symmetrically at both ends so the
    curve neither lags a falling loss (as a trailing average would) nor bends at the ends."""
    half = window // 2
    smoothed = []
    for index in range(len(values)):
        reach = min(half, index, len(values) - 1 - index)
        smoothed.append(sum(values[index - reach : index + reach + 1]) / (2 * reach + 1))
    return smoothed


def _scale_y(axis, values: list[float]) -> None:
    """Log y scale when `values` span a factor of LOG_SCALE_MIN_RATIO or more, ticks as plain numbers."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ratio = max(values) / min(values)
    if ratio < LOG_SCALE_MIN_RATIO:
        return
    axis.set_yscale("log")
    axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    if ratio > MINOR_LABELS_MAX_RATIO:
        axis.yaxis.set_minor_formatter(NullFormatter())
        return

    def label_2_and_5(value: float, _) -> str:
        mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
        return f"{value:g}" if mantissa in (2, 5) else ""

    axis.yaxis.set_minor_formatter(FuncFormatter(label_2_and_5))


def _draw_losses(axis, train: list[tuple[float, float]], val: list[tuple[float, float]],
                 val_ema: list[tuple[float, float]]) -> None:
    if train:
        steps, values = zip(*train)
        if len(train) >= SMOOTHING_MIN_POINTS:
            axis.plot(steps, values, color="C0", linewidth=0.8, alpha=0.35, label="train loss (raw)")
            smoothed = _smooth(list(values), round(SMOOTHING_WINDOW * len(values)))
            axis.plot(steps, smoothed, color="C0", linewidth=2, label="train loss (smoothed)")
        else:
            axis.plot(steps, values, color="C0", linewidth=1.5, marker=".", label="train loss")
    for series, colour, marker, name in ((val, "C1", "o", "val loss"), (val_ema, "C2", "D", "EMA val loss")):
        if series:
            best_step, best = min(series, key=lambda point: point[1])
            axis.plot(*zip(*series), linestyle="none", marker=marker, markersize=5, color=colour,
                      label=f"{name} (best {best:.4g} @ {best_step:.0f})")
    if train or val or val_ema:
        _scale_y(axis, [value for _, value in train + val + val_ema])
    axis.set_xlabel("training step")
    axis.set_ylabel("loss (MSE of the ε or v prediction)")
    axis.grid(True, which="major", alpha=0.3)


def loss_figure(records: list[dict[str, Any]], width: int = 640, height: int = 360):
    """The training curves of `records` (metrics.jsonl) as a `width` x `height` px matplotlib Figure.

    Train loss raw and smoothed, validation loss and EMA validation loss as markers; the loss axis
    is logarithmic when the loss spans a factor of LOG_SCALE_MIN_RATIO or more. `quality_swd`, when
    logged, goes on a second y-axis. None when there is nothing to plot yet. The figure has its own
    Agg canvas: pyplot and the process-wide backend are left alone.
    """
    train, val = _series(records, "loss"), _series(records, "val_loss")
    val_ema, quality = _series(records, "val_loss_ema"), _series(records, "quality_swd")
    if not (train or val or val_ema or quality):
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    _draw_losses(axis, train, val, val_ema)
    handles, labels = axis.get_legend_handles_labels()
    if quality:
        second = axis.twinx()
        second.plot(*zip(*quality), color="C4", marker="s", markersize=4, linewidth=1, linestyle="--",
                    label="sample SWD (lower is better)")
        _scale_y(second, [value for _, value in quality])
        second.set_ylabel("sample SWD vs real images", color="C4")
        second.tick_params(axis="y", colors="C4")
        more_handles, more_labels = second.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    axis.set_title("Training loss" + (" and sample quality" if quality else ""))
    axis.legend(handles, labels, loc="best", fontsize="small", framealpha=0.85)
    return figure


def plot_loss_curve(records: list[dict[str, Any]], path: str | Path, width: int = 640, height: int = 360) -> Path | None:
    """Write `loss_figure(records, width, height)` as a PNG to `path` (atomically: a reader never sees
    half a file). Returns the PNG path, or None when there is nothing to plot yet."""
    figure = loss_figure(records, width, height)
    if figure is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    figure.savefig(temp, format="png")
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
