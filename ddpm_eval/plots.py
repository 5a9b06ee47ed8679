"""Bar and line charts for the evaluation report, drawn with matplotlib and returned as PIL images.

Each chart is a `matplotlib.figure.Figure` on its own Agg canvas, so nothing touches pyplot's
global state or the process-wide backend; matplotlib is imported inside the functions so that
`ddpm-eval --help` does not pay for it.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from PIL import Image

WIDTH, HEIGHT = 640, 360
DPI = 100


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _to_image(figure) -> Image.Image:
    figure.canvas.draw()
    return Image.frombuffer("RGBA", figure.canvas.get_width_height(), figure.canvas.buffer_rgba()).convert("RGB")


def bar_chart(categories: Sequence[str], series: Mapping[str, Sequence[float | None]], title: str,
              *, x_label: str = "", y_label: str = "",
              errors: Mapping[str, Sequence[float | None]] | None = None) -> Image.Image:
    """Grouped bars: one group per category, one bar per series (missing values are skipped); `errors`
    gives a series' error bar half-widths (e.g. a 95 % interval's), None for none."""
    figure = _figure()
    axis = figure.add_subplot()
    width = 0.8 / max(len(series), 1)
    for index, (name, values) in enumerate(series.items()):
        half = (errors or {}).get(name) or [None] * len(values)
        bars = [(group + (index - (len(series) - 1) / 2) * width, value, error)
                for group, (value, error) in enumerate(zip(values, half)) if value is not None]
        axis.bar([x for x, _, _ in bars], [value for _, value, _ in bars], width=width * 0.95, label=name, color=f"C{index}")
        whiskers = [(x, value, error) for x, value, error in bars if error is not None]
        if whiskers:
            axis.errorbar([x for x, _, _ in whiskers], [v for _, v, _ in whiskers], yerr=[e for _, _, e in whiskers],
                          fmt="none", ecolor="black", capsize=3, linewidth=1)
    axis.set_xticks(range(len(categories)), list(categories))
    axis.set(title=title, xlabel=x_label, ylabel=y_label)
    axis.grid(True, axis="y", alpha=0.3)
    axis.set_axisbelow(True)
    if series:
        axis.legend(loc="best", fontsize="small")
    return _to_image(figure)


def line_chart(x: Sequence[float], series: Mapping[str, Sequence[float | None]], title: str, x_label: str,
               *, y_label: str = "", reference: str | None = None) -> Image.Image:
    """Lines over x on a log y-axis; non-positive or missing values leave a gap.

    The series named `reference` is drawn black and dashed, the others take colours in order.
    """
    figure = _figure()
    axis = figure.add_subplot()
    drawn, colour = False, 0
    for name, values in series.items():
        ys = [value if value is not None and value > 0 and math.isfinite(value) else math.nan for value in values]
        if name == reference:
            style = {"color": "black", "linestyle": "--", "linewidth": 1.5, "zorder": 3}
        else:
            style, colour = {"color": f"C{colour}", "linewidth": 1.8}, colour + 1
        if any(not math.isnan(value) for value in ys):
            axis.plot(list(x), ys, label=name, **style)
            drawn = True
    if drawn:
        axis.set_yscale("log")
        axis.legend(loc="best", fontsize="small")
    axis.set(title=title, xlabel=x_label, ylabel=y_label)
    axis.grid(True, which="major", alpha=0.3)
    return _to_image(figure)
