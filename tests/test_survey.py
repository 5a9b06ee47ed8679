"""A build of medical images as they come: DICOM (windowed, unwindowed, MONOCHROME1, multi-frame,
compressed, extension-less) beside 12-bit PNGs; the stored pixels against the viewer rendering
computed here from the standard's formulas; channels chosen from the sources; no header text in
any output; the near-black warning; the percentile rule."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli import data_app
from ddpm_data.images import stored_size_for
from ddpm_data.intensity import pooled_percentiles, summarise
from ddpm_data.shardformat import decode_png, iter_shard
from ddpm_data.shards import BuildConfig, build
from ddpm_data.stats import collect_stats, format_stats
from helpers_data import write_image
from helpers_dicom import PATIENT, smooth_image, viewer_window, write_dicom

SIDE, SIZE = 48, 32
CT = dict(intercept=-1024.0, slope=1, window=(40.0, 400.0))


def _png16(path: Path, values: np.ndarray) -> Path:
    Image.fromarray(values.astype(np.uint16)).save(path)
    return path


def _medical_folder(root: Path) -> dict[str, np.ndarray]:
    """The source folder; returns each file's viewer rendering in [0, 1], by relative path."""
    (root / "normal").mkdir(parents=True)
    (root / "abnormal").mkdir()
    expected = {}
    for seed in range(3):
        stored = smooth_image(SIDE, SIDE, 900, 1300, seed)  # -124..276 HU around a 40/400 window
        write_dicom(root / "normal" / f"ct{seed}.dcm", stored, **CT)
        expected[f"normal/ct{seed}.dcm"] = viewer_window(stored - 1024.0, 40.0, 400.0)
    stored = smooth_image(SIDE, SIDE, 200, 3800, 7)
    write_dicom(root / "normal" / "cr-mono1.dcm", stored, photometric="MONOCHROME1")
    expected["normal/cr-mono1.dcm"] = 1.0 - stored / 4095
    frames = np.stack([smooth_image(SIDE, SIDE, 300, 4000, seed) for seed in (8, 9)])
    write_dicom(root / "normal" / "cine.dcm", frames)
    expected["normal/cine.dcm"] = frames[0] / 4095
    stored = smooth_image(SIDE, SIDE, 900, 1300, 10)
    write_dicom(root / "normal" / "rle.dcm", stored, syntax="1.2.840.10008.1.2.5", **CT)
    expected["normal/rle.dcm"] = viewer_window(stored - 1024.0, 40.0, 400.0)
    stored = smooth_image(SIDE, SIDE, 100, 3900, 11)
    write_dicom(root / "normal" / "1.2.840.99.17", stored)  # DICOM named by its UID: no image extension
    expected["normal/1.2.840.99.17"] = stored / 4095
    for seed in range(4):
        values = smooth_image(SIDE, SIDE, 150, 4000, 20 + seed)  # 12-bit data in 16-bit PNGs
        _png16(root / "abnormal" / f"xr{seed}.png", values)
        expected[f"abnormal/xr{seed}.png"] = values / 4095
    (root / "abnormal" / "notes.txt").write_text("not an image")
    return expected


def _stored_images(folder: Path) -> dict[str, np.ndarray]:
    images = {}
    for shard in sorted(folder.glob("*.tar")):
        for _, members in iter_shard(shard):
            images[json.loads(members["json"])["source"]] = decode_png(members["png"])
    return images


def _thumbnail(unit: np.ndarray, side: int) -> np.ndarray:
    image = Image.fromarray((unit * 255).astype(np.float32), "F").resize((side, side), Image.Resampling.LANCZOS)
    return np.clip(np.round(np.asarray(image)), 0, 255)


@pytest.fixture
def medical(tmp_path):
    src = tmp_path / "src"
    expected = _medical_folder(src)
    result = CliRunner().invoke(data_app, ["build", "--src", str(src), "--size", str(SIZE), "--out", str(tmp_path / "out"),
                                           "--workers", "0", "--val-fraction", "0"])
    assert result.exit_code == 0, result.output
    return tmp_path / "out", expected, result.output


def test_medical_folder_builds_as_a_viewer_shows_it(medical):
    out, expected, _ = medical
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"] == [] and manifest["ignored"] == 1
    assert manifest["channels"] == 1 and manifest["intensity"]["channels"] == "auto: every source image is grey"
    assert manifest["intensity"]["high_bit_range"] == [0, 4095]
    assert manifest["intensity"]["near_black"] == [] and manifest["intensity"]["saturated"] == []
    stored = _stored_images(out)
    assert sorted(stored) == sorted(expected)
    side = stored_size_for(SIZE, 12)
    for relpath, unit in expected.items():
        difference = np.abs(stored[relpath][0].astype(float) - _thumbnail(unit, side))
        assert difference.max() <= 2, (relpath, difference.max())
        assert stored[relpath].max() > 64, relpath  # none near-black
    normal = manifest["intensity"]["classes"]["normal"]
    assert (normal["dicom"], normal["windowed"], normal["rescaled"], normal["inverted"]) == (7, 4, 3, 1)
    assert manifest["intensity"]["classes"]["abnormal"]["high-bit"] == 4


def test_no_header_text_reaches_any_output(medical):
    out, _, output = medical
    secrets = [value.encode() for value in PATIENT.values()] + [value.replace("^", " ").encode() for value in PATIENT.values()]
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not [s for s in secrets if s in data], path
    assert not [s for s in secrets if s.decode() in output]
    text = format_stats(collect_stats(out))
    assert not [s for s in secrets if s.decode() in text]


def test_stats_shows_the_rule_and_what_it_did_per_class(medical):
    out, _, _ = medical
    text = format_stats(collect_stats(out))
    assert "intensity: auto (16-bit PNG/TIFF from 0..4095" in text
    assert "channels: auto: every source image is grey" in text
    assert "L: " in text and "near-black: 0" in text
    normal = [line for line in text.splitlines() if line.strip().startswith("normal ")][-1]  # the intensity table
    assert normal.split()[1:7] == ["0", "0", "7", "4", "3", "1"]


def test_a_window_that_blackens_the_images_is_named(tmp_path):
    src = tmp_path / "src"
    for offset, name in enumerate(("a", "b")):
        (src / name).mkdir(parents=True)
        for seed in range(2):
            _png16(src / name / f"{seed}.png", smooth_image(SIDE, SIDE, 0, 4000, 2 * offset + seed))
    lines = []
    config = BuildConfig(src=src, size=(SIZE,), out=str(tmp_path / "out"), workers=0, val_fraction=0.0,
                         intensity="window", window=(0.0, 65535.0))
    (manifest,) = build(config, log=lines.append)
    assert manifest.intensity["near_black"] == ["a/0.png", "a/1.png", "b/0.png", "b/1.png"]
    warning = next(line for line in lines if "near-black" in line)
    assert "4 image(s)" in warning and "a/0.png" in warning and "--intensity window" in warning


def test_colour_sources_keep_three_channels_and_grey_rgb_gets_a_hint(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    write_image(src / "a" / "colour.png", 0)
    (manifest,) = build(BuildConfig(src=src, size=(SIZE,), out=str(tmp_path / "c"), workers=0, val_fraction=0.0))
    assert manifest.channels == 3 and manifest.intensity["channels"] == "auto: 1 of 1 source images are colour"
    (src / "a" / "colour.png").unlink()
    grey = smooth_image(SIDE, SIDE, 0, 255).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(src / "a" / "grey-rgb.png")
    lines = []
    (manifest,) = build(BuildConfig(src=src, size=(SIZE,), out=str(tmp_path / "g"), workers=0, val_fraction=0.0),
                        log=lines.append)
    assert manifest.channels == 3 and any("--channels 1" in line for line in lines)
    (manifest,) = build(BuildConfig(src=src, size=(SIZE,), out=str(tmp_path / "one"), workers=0, val_fraction=0.0,
                                    channels=1))
    assert manifest.channels == 1 and manifest.intensity["channels"] == "--channels 1"


def test_percentile_rule_uses_the_pooled_dataset_percentiles(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    dark, bright = smooth_image(SIDE, SIDE, 100, 1000, 1), smooth_image(SIDE, SIDE, 2000, 3000, 2)
    _png16(src / "a" / "dark.png", dark)
    _png16(src / "a" / "bright.png", bright)
    (manifest,) = build(BuildConfig(src=src, size=(SIZE,), out=str(tmp_path / "out"), workers=0, val_fraction=0.0,
                                    intensity="percentile", percentiles=(1.0, 99.0)))
    pooled = np.percentile(np.concatenate([dark.ravel(), bright.ravel()]), [1.0, 99.0])
    np.testing.assert_allclose(manifest.intensity["window"], pooled, rtol=0.01)
    stored = _stored_images(manifest.root)
    assert stored["a/dark.png"].mean() < 100 < stored["a/bright.png"].mean()  # relative brightness kept


def test_pooled_percentiles_match_the_pooled_values():
    rng = np.random.default_rng(0)
    images = [rng.normal(loc, 50, size) for loc, size in ((100, 4000), (900, 1000), (400, 2500))]
    summaries = [(summarise(values), values.size) for values in images]
    expected = np.percentile(np.concatenate(images), [0.5, 50, 99.5])
    spread = expected[2] - expected[0]
    np.testing.assert_allclose(pooled_percentiles(summaries, (0.5, 50)), expected[:2], atol=0.005 * spread)


@pytest.mark.parametrize("args, message", [
    (["--intensity", "window"], "--intensity window: needs --window LOW,HIGH"),
    (["--window", "0,4095"], "--window 0.0,4095.0: used only with --intensity window"),
    (["--intensity", "window", "--window", "4095,0"], "LOW < HIGH"),
    (["--intensity", "window", "--window", "abc"], "--window 'abc': expected two comma-separated numbers"),
    (["--percentiles", "99,1"], "--percentiles 99.0,1.0: need 0 <= LOW < HIGH <= 100"),
    (["--channels", "2"], "--channels: must be auto, 1 or 3, got 2"),
])
def test_bad_intensity_options_name_the_flag_and_the_fix(tmp_path, args, message):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    write_image(src / "a" / "x.png", 0)
    result = CliRunner().invoke(data_app, ["build", "--src", str(src), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code != 0 and message in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_negative_window_bounds_are_read_as_values(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    write_dicom(src / "a" / "ct.dcm", smooth_image(SIDE, SIDE, 900, 1300), **CT)
    result = CliRunner().invoke(data_app, ["build", "--src", str(src), "--size", str(SIZE), "--out", str(tmp_path / "o"),
                                           "--workers", "0", "--val-fraction", "0", "--intensity", "window",
                                           "--window", "-160,240"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["intensity"]["dicom_window"] == [-160.0, 240.0]
