"""ddpm_data.manifest: round trip, shard paths, and errors that name the file and the fix."""
from __future__ import annotations

import json

import pytest

from ddpm_data.manifest import FORMAT_VERSION, ManifestError, load_manifest, manifest_to_json, write_manifest


def _document() -> dict:
    return {
        "format_version": FORMAT_VERSION, "tool_version": "0.1.0", "size": 96, "stored_size": 105, "channels": 3,
        "classes": ["abnormal", "normal"],
        "counts": {"train": {"abnormal": 3, "normal": 5}, "val": {"abnormal": 1, "normal": 0}},
        "shards": [
            {"path": "train-abnormal-000000.tar", "split": "train", "class": "abnormal", "count": 3, "sha256": "a"},
            {"path": "train-normal-000000.tar", "split": "train", "class": "normal", "count": 4, "sha256": "b"},
            {"path": "train-normal-000001.tar", "split": "train", "class": "normal", "count": 1, "sha256": "c"},
            {"path": "val-abnormal-000000.tar", "split": "val", "class": "abnormal", "count": 1, "sha256": "d"},
        ],
        "hdf5": {"path": "data.h5", "sha256": "e"},
        "skipped": [{"path": "normal/x.png", "reason": "empty file (0 bytes)"}],
        "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2], "source_sizes": {"40x32": 9}, "ignored": 2,
        "options": {"size": [96]},
    }


def test_round_trip(tmp_path):
    folder = tmp_path / "96"
    folder.mkdir()
    write_manifest(folder, _document())
    manifest = load_manifest(folder)
    assert manifest.root == folder.resolve()
    assert manifest.to_dict() == _document()
    assert manifest.classes == ["abnormal", "normal"] and manifest.label("normal") == 1
    assert manifest.num_samples("train") == 8 and manifest.num_samples("val") == 1
    assert manifest.hdf5_path == folder.resolve() / "data.h5"
    text = (folder / "manifest.json").read_text(encoding="utf-8")
    assert text == manifest_to_json(_document()) and text.startswith('{\n  "channels"')  # sorted, indent 2


def test_shard_paths_are_absolute_and_filtered(tmp_path):
    write_manifest(tmp_path, _document())
    manifest = load_manifest(tmp_path)
    assert manifest.shard_paths("train", "normal") == [
        tmp_path.resolve() / "train-normal-000000.tar", tmp_path.resolve() / "train-normal-000001.tar"]
    assert len(manifest.shard_paths("train")) == 3 and len(manifest.shard_paths("val", "normal")) == 0
    with pytest.raises(ValueError, match="valid: train, val"):
        manifest.shard_paths("test")
    with pytest.raises(ValueError, match="valid: abnormal, normal"):
        manifest.shard_paths("train", "cats")


def test_missing_manifest_names_path_and_build_command(tmp_path):
    folder = tmp_path / "shards" / "96"
    with pytest.raises(ManifestError, match=r"shards/96/manifest.json: folder missing; run 'ddpm-data build --size 96'"):
        load_manifest(folder)
    folder.mkdir(parents=True)
    with pytest.raises(ManifestError, match=r"manifest.json: missing; run 'ddpm-data build --size 96' first"):
        load_manifest(folder)
    assert issubclass(ManifestError, ValueError)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("classes"), "field 'classes' missing"),
    (lambda d: d.update(size="96"), "field 'size' must be"),
    (lambda d: d.update(format_version=99), "format_version 99 is not supported"),
    (lambda d: d.update(channels=2), "'channels' must be 1 or 3"),
    (lambda d: d.update(stored_size=90), "size <= stored_size"),
    (lambda d: d["shards"][0].pop("sha256"), "lacks path/split/class/count/sha256"),
    (lambda d: d["shards"][0].update(split="test"), "unknown split or class"),
    (lambda d: d["counts"]["train"].update(normal="5"), r"counts\['train'\] must be integers >= 0"),
    (lambda d: d["counts"]["val"].update(abnormal=-1), r"counts\['val'\] must be integers >= 0"),
    (lambda d: d["counts"].update(val=[1, 0]), "field 'counts' must hold"),
    (lambda d: d["counts"]["train"].update(cats=1), "field 'counts' must hold"),
    (lambda d: d["shards"][0].update(count=2.5), "integer count >= 0"),
    (lambda d: d["classes"].append(3), "field 'classes' must list distinct class names"),
    (lambda d: d.update(mean=[0.5, "x", 0.3]), "field 'mean' must be a list of numbers"),
    (lambda d: d.update(ignored=True), "field 'ignored' must be an integer"),
    (lambda d: d.update(skipped=["normal/x.png"]), "field 'skipped' must be a list"),
])
def test_invalid_manifest_is_rejected(tmp_path, change, message):
    document = _document()
    change(document)
    (tmp_path / "manifest.json").write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(ManifestError, match=message) as raised:
        load_manifest(tmp_path)
    assert "manifest.json" in str(raised.value) and "ddpm-data build --size" in str(raised.value)


def test_not_json(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ManifestError, match="unreadable"):
        load_manifest(tmp_path)
