"""ddpm_data.stats: the summary agrees with the manifest; the contact sheet has a row per class."""
from __future__ import annotations

import pytest
from PIL import Image

from ddpm_data.grid import LABEL_WIDTH, PAD
from ddpm_data.manifest import ManifestError
from ddpm_data.shards import BuildConfig, build
from ddpm_data.stats import collect_stats, format_stats, write_grid
from helpers_data import make_folder


@pytest.fixture
def built(tmp_path):
    src = make_folder(tmp_path / "src", {"normal": 8, "abnormal": 4})
    (src / "normal" / "empty.png").write_bytes(b"")
    (src / "normal" / "readme.txt").write_text("x")
    (manifest,) = build(BuildConfig(src=src, size=(24,), out=str(tmp_path / "s"), workers=0, shard_size=3))
    return manifest


def test_collect_stats_mirrors_the_manifest(built):
    stats = collect_stats(built.root)
    assert stats["counts"] == built.counts and stats["classes"] == ["abnormal", "normal"]
    assert stats["totals"]["train"] + stats["totals"]["val"] == 12
    assert [s["path"] for s in stats["shards"]] == [s.path for s in built.shards]
    assert all(s["bytes"] == (built.root / s["path"]).stat().st_size for s in stats["shards"])
    assert stats["skipped"] == [{"path": "normal/empty.png", "reason": "empty file (0 bytes)"}]
    assert stats["ignored"] == 1 and stats["source_sizes"] == {"40x32": 12}
    assert stats["mean"] == built.mean and len(stats["std"]) == 3


def test_format_stats_is_readable(built):
    text = format_stats(collect_stats(built.root))
    for expected in ["size 24 (stored 26 px)", "abnormal", "normal", "train-normal-000000.tar", "data.h5",
                     "R: ", "B: ", "40x32", "skipped: 1", "normal/empty.png: empty file (0 bytes)",
                     "ignored (hidden or non-image files): 1"]:
        assert expected in text, expected


def test_grid_has_one_row_per_class(built, tmp_path):
    path = write_grid(built.root, tmp_path / "grid" / "sheet.png", per_class=3)
    sheet = Image.open(path)
    tile = built.stored_size
    assert sheet.size == (LABEL_WIDTH + 3 * (tile + PAD), 2 * (tile + PAD))


def test_missing_folder_is_a_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match="ddpm-data build"):
        collect_stats(tmp_path / "nope")
