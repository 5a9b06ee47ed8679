"""ddpm_data.synth: counts, determinism, class-separating lesion statistic, bad input."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli import data_app
from ddpm_data.synth import EOSIN, HEMATOXYLIN, MASK_DIR, SynthConfig, SynthError, synthesize

runner = CliRunner()


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))}


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float64) / 255


def test_counts_layout_and_format(tmp_path):
    root = synthesize(SynthConfig(out=tmp_path / "data", normal=5, abnormal=3, size=32, seed=1))
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["abnormal", "normal"]
    assert len(list((root / "normal").glob("*.png"))) == 5
    assert len(list((root / "abnormal").glob("*.png"))) == 3
    assert len(list((root / MASK_DIR / "abnormal").glob("*.png"))) == 3
    image = Image.open(next((root / "abnormal").glob("*.png")))
    assert (image.mode, image.size) == ("RGB", (32, 32))
    assert not list(tmp_path.glob(".data.*")), "staging folder left behind"


def test_default_counts_match_reference_case():
    config = SynthConfig(out=Path("unused"))
    assert (config.normal, config.abnormal, config.size) == (437, 85, 128)


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    first = synthesize(SynthConfig(out=tmp_path / "a", normal=3, abnormal=3, size=48, seed=7))
    second = synthesize(SynthConfig(out=tmp_path / "b", normal=3, abnormal=3, size=48, seed=7))
    other = synthesize(SynthConfig(out=tmp_path / "c", normal=3, abnormal=3, size=48, seed=8))
    assert digests(first) == digests(second)
    assert set(digests(first).values()).isdisjoint(digests(other).values())


def test_images_do_not_depend_on_count(tmp_path):
    """Image i is the same whatever the total, so growing a dataset keeps the old files."""
    small = synthesize(SynthConfig(out=tmp_path / "small", normal=2, abnormal=2, size=32))
    large = synthesize(SynthConfig(out=tmp_path / "large", normal=4, abnormal=3, size=32))
    small_digests, large_digests = digests(small), digests(large)
    assert all(large_digests[name] == digest for name, digest in small_digests.items())


def hematoxylin(image: np.ndarray) -> np.ndarray:
    """Hematoxylin density per pixel by colour deconvolution (Ruifrok & Johnston 2001)."""
    optical_density = -np.log(np.clip(image, 1 / 255, 1)).reshape(-1, 3)
    stains = np.linalg.lstsq(np.stack([HEMATOXYLIN, EOSIN], 1), optical_density.T, rcond=None)[0]
    return stains[0].reshape(image.shape[:2])


def test_lesion_region_statistic_differs_between_classes(tmp_path):
    """Inside the lesion masks, abnormal images hold far more nuclei than normal images do there."""
    root = synthesize(SynthConfig(out=tmp_path / "data", normal=16, abnormal=16, size=64, seed=3))
    masks = [load(p) for p in sorted((root / MASK_DIR / "abnormal").glob("*.png"))]
    areas = [(mask > 0.5).mean() for mask in masks]
    assert 0.04 <= min(areas) and max(areas) <= 0.35, areas

    def ratio(image, mask):
        density = hematoxylin(image)
        return density[mask > 0.5].mean() / density[mask < 0.02].mean()

    abnormal = [ratio(load(p), m) for p, m in zip(sorted((root / "abnormal").glob("*.png")), masks)]
    normal = [ratio(load(p), m) for p, m in zip(sorted((root / "normal").glob("*.png")), masks)]
    assert np.median(abnormal) > 1.8 * np.median(normal)
    assert np.mean(np.array(abnormal) > np.array(normal)) >= 0.85


def best_threshold_accuracy(a: np.ndarray, b: np.ndarray) -> float:
    values = np.concatenate([a, b])
    best = 0.5
    for t in values:
        balanced = ((a >= t).mean() + (b < t).mean()) / 2
        best = max(best, balanced, 1 - balanced)
    return best


@pytest.mark.slow
def test_no_single_global_statistic_separates_the_classes(tmp_path):
    root = synthesize(SynthConfig(out=tmp_path / "data", normal=80, abnormal=80, size=64, seed=0, masks=False))
    images = {c: [load(p) for p in sorted((root / c).glob("*.png"))] for c in ("abnormal", "normal")}
    statistics = {
        "mean": lambda x: x.mean(),
        "std": lambda x: x.std(),
        "5th percentile": lambda x: np.percentile(x.mean(-1), 5),
        "dark fraction": lambda x: (x.mean(-1) < 0.5).mean(),
        "red mean": lambda x: x[..., 0].mean(),
    }
    for name, statistic in statistics.items():
        accuracy = best_threshold_accuracy(*(np.array([statistic(x) for x in images[c]]) for c in ("abnormal", "normal")))
        assert accuracy < 0.8, f"{name} alone separates the classes ({accuracy:.2f} balanced accuracy)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--normal", "0"], "--normal 0"),
        (["--abnormal", "-3"], "--abnormal -3"),
        (["--size", "8"], "--size 8"),
    ],
)
def test_bad_options_name_the_option_and_write_nothing(tmp_path, args, message):
    result = runner.invoke(data_app, ["synth", str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_non_empty_out_needs_overwrite_and_only_synth_output_is_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    args = ["synth", str(out), "--normal", "1", "--abnormal", "1", "--size", "16"]
    result = runner.invoke(data_app, args)
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = runner.invoke(data_app, [*args, "--overwrite"])
    assert result.exit_code == 2 and ".ddpm-synth.json" in result.output  # not synth's folder: refused
    assert (out / "precious.txt").read_text() == "keep me"
    (out / "precious.txt").unlink()
    assert runner.invoke(data_app, args).exit_code == 0  # an empty OUT is fine
    result = runner.invoke(data_app, [*args, "--normal", "2", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert len(list((out / "normal").glob("*.png"))) == 2 and (out / ".ddpm-synth.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "staging or retired folder left behind"


def test_unwritable_out_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    result = runner.invoke(data_app, ["synth", str(blocker / "out"), "--normal", "1", "--abnormal", "1"])
    assert result.exit_code == 2
    assert "choose a writable OUT" in result.output
    with pytest.raises(SynthError, match="not a folder"):
        synthesize(SynthConfig(out=blocker, normal=1, abnormal=1))


def test_cli_writes_contact_sheet(tmp_path):
    sheet = tmp_path / "sheet.png"
    result = runner.invoke(
        data_app, ["synth", str(tmp_path / "d"), "--normal", "2", "--abnormal", "2", "--size", "32", "--sheet", str(sheet)]
    )
    assert result.exit_code == 0, result.output
    assert Image.open(sheet).size[1] == 2 * (32 + 2)
