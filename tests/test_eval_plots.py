"""Report charts: PIL images of the fixed size, drawn with missing values and empty input."""
from __future__ import annotations

import math

from ddpm_eval.plots import HEIGHT, WIDTH, bar_chart, line_chart


def test_bar_chart_skips_missing_values():
    image = bar_chart(["32 px", "16 px"], {"samples": [0.4, 0.2], "blurred": [1.2, None]}, "SWD per level",
                      x_label="pyramid level", y_label="SWD")
    assert image.mode == "RGB" and image.size == (WIDTH, HEIGHT)
    assert len(image.getcolors(maxcolors=1 << 16) or []) != 1  # something was drawn


def test_line_chart_leaves_gaps_for_missing_or_non_positive_values():
    x = [i / 32 for i in range(1, 17)]
    series = {"real": [1 / f for f in x], "samples": [None, 0.0, -1.0, math.nan] + [2 / f for f in x[4:]]}
    image = line_chart(x, series, "Spectrum", "cycles / pixel", y_label="power", reference="real")
    assert image.size == (WIDTH, HEIGHT)


def test_empty_inputs_still_give_an_image():
    assert bar_chart([], {}, "empty").size == (WIDTH, HEIGHT)
    assert line_chart([0.1, 0.2], {"none": [None, None]}, "empty", "x").size == (WIDTH, HEIGHT)
