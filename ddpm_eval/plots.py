"""Bar and line charts drawn with PIL for the evaluation report.

matplotlib would draw nicer axes, but it is not a dependency and two simple charts do not justify one.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from PIL import Image, ImageDraw

WIDTH, HEIGHT = 640, 360
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 150, 30, 40
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


def _frame(title: str) -> tuple[Image.Image, ImageDraw.ImageDraw, tuple[int, int, int, int]]:
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    box = (MARGIN_LEFT, MARGIN_TOP, WIDTH - MARGIN_RIGHT, HEIGHT - MARGIN_BOTTOM)
    draw.rectangle(box, outline="black")
    draw.text((MARGIN_LEFT, 8), title, fill="black")
    return image, draw, box


def _legend(draw: ImageDraw.ImageDraw, names: Sequence[str], box: tuple[int, int, int, int]) -> None:
    for index, name in enumerate(names):
        top = box[1] + 6 + 16 * index
        draw.rectangle((box[2] + 10, top, box[2] + 22, top + 10), fill=COLORS[index % len(COLORS)])
        draw.text((box[2] + 28, top - 1), name[:18], fill="black")


def _y_ticks(draw: ImageDraw.ImageDraw, box, low: float, high: float, label) -> None:
    for step in range(5):
        value = low + (high - low) * step / 4
        y = box[3] - (box[3] - box[1]) * step / 4
        draw.line((box[0] - 4, y, box[0], y), fill="black")
        draw.text((4, y - 6), label(value), fill="black")


def bar_chart(categories: Sequence[str], series: Mapping[str, Sequence[float | None]], title: str) -> Image.Image:
    """Grouped bars: one group per category, one bar per series (missing values are skipped)."""
    image, draw, box = _frame(title)
    values = [v for vs in series.values() for v in vs if v is not None]
    high = max(values + [1e-12]) * 1.1
    _y_ticks(draw, box, 0.0, high, lambda v: f"{v:.3g}")
    group_width = (box[2] - box[0]) / max(len(categories), 1)
    bar_width = group_width * 0.8 / max(len(series), 1)
    for group, category in enumerate(categories):
        left = box[0] + group * group_width + group_width * 0.1
        draw.text((left, box[3] + 8), category, fill="black")
        for index, values_of in enumerate(series.values()):
            value = values_of[group]
            if value is None:
                continue
            x = left + index * bar_width
            y = box[3] - (box[3] - box[1]) * value / high
            draw.rectangle((x, y, x + bar_width - 2, box[3]), fill=COLORS[index % len(COLORS)])
    _legend(draw, list(series), box)
    return image


def line_chart(x: Sequence[float], series: Mapping[str, Sequence[float | None]], title: str, x_label: str) -> Image.Image:
    """Lines of log10(y) over x; non-positive or missing values are skipped."""
    image, draw, box = _frame(title)
    logs = {name: [math.log10(v) if v and v > 0 else None for v in ys] for name, ys in series.items()}
    finite = [v for vs in logs.values() for v in vs if v is not None]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    high = high if high > low else low + 1
    x_low, x_high = min(x), max(x)
    _y_ticks(draw, box, low, high, lambda v: f"1e{v:.1f}")
    draw.text((box[0], box[3] + 8), f"{x_low:.3g}", fill="black")
    draw.text((box[2] - 30, box[3] + 8), f"{x_high:.3g}", fill="black")
    draw.text(((box[0] + box[2]) // 2 - 40, box[3] + 20), x_label, fill="black")

    def point(xv: float, yv: float) -> tuple[float, float]:
        px = box[0] + (box[2] - box[0]) * (xv - x_low) / max(x_high - x_low, 1e-12)
        return px, box[3] - (box[3] - box[1]) * (yv - low) / (high - low)

    for index, ys in enumerate(logs.values()):
        points = [point(xv, yv) for xv, yv in zip(x, ys) if yv is not None]
        if len(points) > 1:
            draw.line(points, fill=COLORS[index % len(COLORS)], width=2)
    _legend(draw, list(logs), box)
    return image
