"""ddpm_study.curves: the run's losses at a stage, and the rows of the curves."""
from __future__ import annotations

import json

import pytest

from ddpm_study.curves import _short_count, curve_rows, curves_figure, format_curves, losses_at


def test_losses_at_reads_the_last_lines_up_to_the_stage(tmp_path):
    lines = [{"step": s, "images": 16 * s, "loss": 1.0 / s} for s in (50, 100, 150, 200, 250, 300)]
    lines += [{"step": 250, "images": 4000, "val_loss": 0.5}, {"step": 300, "images": 4800, "val_loss": 0.4}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    losses = losses_at(path, 4000)
    assert losses["train_loss"] == pytest.approx((1 / 100 + 1 / 150 + 1 / 200 + 1 / 250) / 4)
    assert losses["val_loss"] == 0.5
    assert losses_at(tmp_path / "missing.jsonl", 4000) == {"train_loss": None, "val_loss": None}


def test_curve_rows_average_the_seeds_per_stage():
    def document(seed, images, jaggedness, loss):
        return {"cell": f"40px-s{seed}", "configuration": "40px", "metrics": {"jaggedness": jaggedness},
                "training": {"images_seen": images}, "losses": {"train_loss": loss, "val_loss": None}}

    rows = curve_rows({8000: [document(0, 8000, 3.0, 0.2), document(1, 8000, 4.0, 0.4)],
                       4000: [document(0, 4000, 2.0, 0.3)]})
    points = rows["40px"]
    assert [point["images"] for point in points] == [4000, 8000]
    assert points[1]["values"]["jaggedness"]["mean"] == pytest.approx(3.5)
    assert points[1]["values"]["train_loss"]["mean"] == pytest.approx(0.3)
    assert points[1]["values"]["train_loss"]["noise"] == pytest.approx(0.1)
    table = format_curves(rows)
    assert "| 40px | 8,000 | 2 | +3.5 ± 0.5 |" in table and "0.3000 ± 0.1000" in table


def test_the_figure_labels_its_stages_plainly(tmp_path):
    assert [_short_count(n) for n in (800, 1500, 4000, 40000, 2_000_000)] == ["800", "1.5k", "4k", "40k", "2M"]
    pytest.importorskip("matplotlib")
    point = {"images": 4000, "seeds": 1, "values": {"jaggedness": {"mean": 3.0, "noise": None}}}
    later = {**point, "images": 40000}
    path = curves_figure({"40px": [point, later]}, tmp_path / "curves.png", real={"jaggedness": -1.0})
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

