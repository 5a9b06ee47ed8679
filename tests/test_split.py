"""ddpm_data.split: stable, stratified, content-hash split; duplicates; conflicts; layout errors."""
from __future__ import annotations

import hashlib
import shutil

import pytest

from ddpm_data.split import SourceError, plan_source, sample_key, split_of
from helpers_data import make_folder, write_image


def _hash(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def test_split_fraction_is_close_to_the_request_per_class():
    for fraction in (0.1, 0.25):
        share = sum(split_of(_hash(i), fraction) == "val" for i in range(4000)) / 4000
        assert abs(share - fraction) < 0.02
    assert all(split_of(_hash(i), 0.0) == "train" for i in range(200))


def test_keys_have_no_dots_and_follow_the_contract():
    digest = _hash(3)
    assert sample_key("normal", digest) == f"normal-{digest[:16]}"
    assert "." not in sample_key("v1.2", digest)


def test_plan_orders_by_label_then_key_and_stratifies(tmp_path):
    src = make_folder(tmp_path / "src", {"normal": 40, "abnormal": 30})
    plan = plan_source(src, 0.25)
    assert plan.classes == ["abnormal", "normal"]
    assert [(i.label, i.key) for i in plan.items] == sorted((i.label, i.key) for i in plan.items)
    for label, name in enumerate(plan.classes):
        items = [i for i in plan.items if i.class_name == name]
        assert all(i.label == label and i.key.startswith(name + "-") for i in items)
        assert {i.split for i in items} == {"train", "val"}  # both splits per class at 25 %
    assert all(i.relpath == i.path.relative_to(src.resolve()).as_posix() for i in plan.items)


def test_adding_images_never_moves_existing_ones(tmp_path):
    src = make_folder(tmp_path / "src", {"normal": 30, "abnormal": 10})
    before = {i.key: i.split for i in plan_source(src, 0.3).items}
    for i in range(25):
        write_image(src / "normal" / "new" / f"n{i}.png", seed=50_000 + i)
    after = {i.key: i.split for i in plan_source(src, 0.3).items}
    assert len(after) == len(before) + 25
    assert all(after[key] == split for key, split in before.items())


def test_duplicates_stored_once_and_cross_class_copies_excluded(tmp_path):
    src = make_folder(tmp_path / "src", {"normal": 6, "abnormal": 4})
    shutil.copy(src / "normal" / "img_000.png", src / "normal" / "copy_of_0.png")
    shutil.copy(src / "normal" / "img_001.png", src / "abnormal" / "misfiled.png")
    plan = plan_source(src, 0.5)
    skipped = dict(plan.skipped)
    assert skipped["normal/img_000.png"].startswith("exact duplicate of normal/copy_of_0.png")
    assert "same image filed under classes abnormal, normal" in skipped["abnormal/misfiled.png"]
    assert "same image filed under classes" in skipped["normal/img_001.png"]
    stored = {i.relpath for i in plan.items}
    assert "normal/copy_of_0.png" in stored and "normal/img_000.png" not in stored
    assert "normal/img_001.png" not in stored and "abnormal/misfiled.png" not in stored
    assert len(plan.items) == 6 + 4 - 1  # 12 files: one duplicate, two conflicting copies


def test_hidden_and_non_image_files_are_ignored_and_counted(tmp_path):
    src = make_folder(tmp_path / "src", {"normal": 3, "abnormal": 2})
    (src / "README.txt").write_text("about")
    (src / "normal" / "notes.txt").write_text("x")
    (src / "normal" / ".DS_Store").write_bytes(b"\x00")
    write_image(src / ".masks" / "normal" / "m.png", seed=1)
    write_image(src / "normal" / ".hidden" / "h.png", seed=2)
    (src / ".cache").mkdir()
    plan = plan_source(src, 0.1)
    assert len(plan.items) == 5 and plan.ignored == 5 and plan.skipped == []


def test_empty_files_are_skipped_with_reason(tmp_path):
    src = make_folder(tmp_path / "src", {"normal": 2, "abnormal": 2})
    (src / "normal" / "zero.jpg").write_bytes(b"")
    plan = plan_source(src, 0.1)
    assert plan.skipped == [("normal/zero.jpg", "empty file (0 bytes)")]


@pytest.mark.parametrize("setup, problem", [
    (lambda src: None, "folder does not exist"),
    (lambda src: src.mkdir(), "no class folders found"),
    (lambda src: (src / "normal").mkdir(parents=True), "class folder 'normal' holds no image files"),
])
def test_layout_errors_show_expected_layout(tmp_path, setup, problem):
    src = tmp_path / "data"
    setup(src)
    with pytest.raises(SourceError) as raised:
        plan_source(src, 0.1)
    message = str(raised.value)
    assert problem in message and "expected layout" in message and "ddpm-data synth data" in message


def test_source_folder_is_not_modified(tmp_path):
    src = make_folder(tmp_path / "src")
    before = sorted((p, p.stat().st_mtime_ns) for p in src.rglob("*"))
    plan_source(src, 0.1)
    assert sorted((p, p.stat().st_mtime_ns) for p in src.rglob("*")) == before


def test_pipes_devices_and_broken_links_are_skipped_without_opening(tmp_path, monkeypatch):
    import os

    src = make_folder(tmp_path / "src", {"normal": 2})
    os.mkfifo(src / "normal" / "pipe.png")
    (src / "normal" / "zero.png").symlink_to("/dev/zero")
    (src / "normal" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *args: opened.append(str(path)) or real_open(path, *args))
    plan = plan_source(src, 0.0)
    assert dict(plan.skipped) == {
        "normal/gone.png": "unreadable: broken symbolic link",
        "normal/pipe.png": "not a regular file (named pipe); skipped without opening it",
        "normal/zero.png": "not a regular file (symbolic link to a character device); skipped without opening it",
    }
    assert len(plan.items) == 2 and sorted(os.path.basename(path) for path in opened) == ["img_000.png", "img_001.png"]
