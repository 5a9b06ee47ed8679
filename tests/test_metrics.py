"""The metrics log and the loss-curve chart: records round-trip, the PNG is drawn from records
alone, an optional sample-quality series goes on a second axis, and matplotlib stays out of
pyplot's global state."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from ddpm_model.metrics import MetricsLog, _smooth, loss_figure, plot_loss_curve

REPO = Path(__file__).resolve().parents[1]


def fake_records(steps: int = 200, quality_every: int = 0) -> list[dict]:
    """Training records every 10 steps, validation every 50, `quality_swd` every `quality_every`."""
    records = []
    for step in range(10, steps + 1, 10):
        wobble = 0.01 * math.sin(step)
        records.append({"step": step, "images": 16 * step, "loss": 0.05 + math.exp(-step / 40) + wobble, "lr": 1e-3})
        if step % 50 == 0:
            records.append({"step": step, "images": 16 * step, "val_loss": 0.06 + math.exp(-step / 40),
                            "val_loss_ema": 0.055 + math.exp(-step / 35)})
        if quality_every and step % quality_every == 0:
            records.append({"step": step, "images": 16 * step, "quality_swd": 2.0 + 30 * math.exp(-step / 80)})
    return records


def test_log_round_trips_and_truncates(tmp_path):
    log = MetricsLog(tmp_path / "run" / "metrics.jsonl")
    for record in fake_records(60):
        log.append(record)
    with open(log.path, "a") as handle:
        handle.write('{"step": 70, "lo')  # a line cut short by a kill
    assert log.read() == fake_records(60)
    log.truncate_after(30)
    assert max(r["step"] for r in log.read()) == 30


def test_png_is_written_at_the_requested_size(tmp_path):
    path = plot_loss_curve(fake_records(), tmp_path / "plots" / "loss.png")
    assert path == tmp_path / "plots" / "loss.png"
    with Image.open(path) as image:
        assert image.size == (640, 360)
    assert 10_000 < path.stat().st_size < 500_000
    assert not list(path.parent.glob(".*tmp"))
    with Image.open(plot_loss_curve(fake_records(), tmp_path / "big.png", width=1200, height=500)) as image:
        assert image.size == (1200, 500)


def test_nothing_to_plot_returns_none(tmp_path):
    assert plot_loss_curve([], tmp_path / "loss.png") is None
    assert plot_loss_curve([{"step": 5, "lr": 1e-3}, {"step": 6, "loss": float("nan")}], tmp_path / "loss.png") is None
    assert not (tmp_path / "loss.png").exists()


def test_loss_axis_is_log_with_raw_and_smoothed_train_loss_and_val_markers():
    figure = loss_figure(fake_records())
    (axis,) = figure.axes
    assert axis.get_yscale() == "log" and axis.get_xlabel() == "training step"
    labels = [line.get_label() for line in axis.get_lines()]
    assert labels[:2] == ["train loss (raw)", "train loss (smoothed)"]
    assert labels[2].startswith("val loss (best") and labels[3].startswith("EMA val loss (best")
    assert all(line.get_linestyle() == "None" for line in axis.get_lines()[2:])  # markers only


def test_a_flat_loss_keeps_a_linear_axis_and_few_points_are_not_smoothed():
    records = [{"step": s, "loss": 0.1 + 0.001 * s} for s in range(1, 6)]
    (axis,) = loss_figure(records).axes
    assert axis.get_yscale() == "linear"
    assert [line.get_label() for line in axis.get_lines()] == ["train loss"]


def test_quality_swd_goes_on_a_second_axis():
    figure = loss_figure(fake_records(quality_every=40))
    axis, second = figure.axes
    assert "sample quality" in axis.get_title()
    (line,) = second.get_lines()
    assert list(line.get_xdata()) == [40.0, 80.0, 120.0, 160.0, 200.0]
    assert "SWD" in second.get_ylabel()
    assert "sample SWD (lower is better)" in [text.get_text() for text in axis.get_legend().get_texts()]
    assert len(loss_figure(fake_records()).axes) == 1


def test_quality_alone_is_still_drawn(tmp_path):
    records = [{"step": 100, "quality_swd": 12.0}, {"step": 200, "quality_swd": 9.0}]
    assert plot_loss_curve(records, tmp_path / "loss.png").is_file()


def test_smoothing_follows_a_trend_without_lag_and_calms_noise():
    line = [0.5 * i for i in range(40)]
    assert _smooth(line, 9) == line  # a centred window is exact on a straight line, ends included
    noisy = [1.0 + (0.2 if i % 2 else -0.2) for i in range(40)]
    assert max(abs(v - 1.0) for v in _smooth(noisy, 9)[4:-4]) < 0.03
    assert _smooth([3.0, 1.0], 1) == [3.0, 1.0]


def test_matplotlib_is_imported_only_when_drawing_and_pyplot_never(tmp_path):
    code = (
        "import sys\n"
        "from ddpm_model.metrics import plot_loss_curve\n"
        "assert 'matplotlib' not in sys.modules\n"
        f"plot_loss_curve([{{'step': 1, 'loss': 1.0}}, {{'step': 2, 'loss': 0.5}}], {str(tmp_path / 'l.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
