"""Checkpoint files: atomic round trip with weights_only, retention, and the error messages."""
from __future__ import annotations

import pytest
import torch

from ddpm_model import checkpoint as ckpt


def state(step: int) -> dict:
    return {"step": step, "model_config": {"image_size": 16}, "classes": ["a", "b"],
            "model": {"w": torch.full((2, 2), float(step))}, "rng": [{"torch": torch.get_rng_state()}],
            "reader": [{"position": step, "order": [3, 1, 2]}], "best_val_loss": float("inf")}


def test_round_trip_is_weights_only_loadable(tmp_path):
    path = ckpt.save_checkpoint(state(5), ckpt.step_path(tmp_path, 5))
    assert path.name == "step-00000005.pt"
    raw = torch.load(path, weights_only=True)  # no arbitrary pickles
    assert raw["format_version"] == ckpt.FORMAT_VERSION
    loaded = ckpt.load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], torch.full((2, 2), 5.0))
    assert loaded["reader"] == [{"position": 5, "order": [3, 1, 2]}]
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))  # the temp file was renamed


def test_atomic_write_keeps_the_old_file_when_saving_fails(tmp_path):
    path = ckpt.save_checkpoint(state(1), tmp_path / "c.pt")
    with pytest.raises(Exception):
        ckpt.save_checkpoint({**state(2), "bad": lambda: None}, path)  # not picklable
    assert ckpt.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind


def test_keep_last_k_and_latest(tmp_path):
    for step in (2, 4, 6, 8):
        ckpt.save_checkpoint(state(step), ckpt.step_path(tmp_path, step))
    ckpt.save_checkpoint(state(4), ckpt.checkpoint_dir(tmp_path) / ckpt.BEST_NAME)
    removed = ckpt.prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in removed] == ["step-00000002.pt", "step-00000004.pt"]
    assert [p.name for p in ckpt.step_checkpoints(tmp_path)] == ["step-00000006.pt", "step-00000008.pt"]
    assert (ckpt.checkpoint_dir(tmp_path) / "best.pt").is_file()
    assert ckpt.resolve_checkpoint(tmp_path) == ckpt.step_path(tmp_path, 8)
    assert ckpt.latest_checkpoint(tmp_path / "nothing") is None


def test_corrupt_file_is_a_clear_error(tmp_path):
    path = ckpt.save_checkpoint(state(1), tmp_path / "c.pt")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ckpt.CheckpointError, match=r"c\.pt: not a readable checkpoint \(corrupt"):
        ckpt.load_checkpoint(path)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ckpt.CheckpointError, match="not a readable checkpoint"):
        ckpt.load_checkpoint(tmp_path / "text.pt")


class Payload:
    """Any class: weights_only loading must refuse to build it."""


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"format_version": 1, "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ckpt.CheckpointError, match="not a readable checkpoint"):
        ckpt.load_checkpoint(tmp_path / "evil.pt")


def test_other_version_and_foreign_files_are_named(tmp_path):
    torch.save({"format_version": 99, "step": 1}, tmp_path / "future.pt")
    with pytest.raises(ckpt.CheckpointError, match="format version 99 is incompatible.*reads version 1"):
        ckpt.load_checkpoint(tmp_path / "future.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ckpt.CheckpointError, match="no 'format_version'"):
        ckpt.load_checkpoint(tmp_path / "foreign.pt")
    torch.save({"format_version": 1, "step": 1}, tmp_path / "partial.pt")
    with pytest.raises(ckpt.CheckpointError, match="missing model_config, classes, model"):
        ckpt.load_checkpoint(tmp_path / "partial.pt")


def test_missing_paths_and_empty_run_folders(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint file or run folder"):
        ckpt.resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(ckpt.CheckpointError, match=r"has no checkpoints \(none in .*checkpoints\); give a ddpm-train run folder"):
        ckpt.resolve_checkpoint(tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint file"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")
