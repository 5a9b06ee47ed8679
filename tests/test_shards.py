"""ddpm_data.shards: build round trips, bad input, determinism, atomicity, tar == HDF5 pixels."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from ddpm_data import shards
from ddpm_data.images import Fit
from ddpm_data.manifest import load_manifest
from ddpm_data.shards import BuildConfig, BuildError, build
from ddpm_data.shardformat import decode_png, iter_shard
from ddpm_data.verify import verify
from helpers_data import bomb_png, make_folder, sha256_tree, write_image

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, **overrides) -> BuildConfig:
    options = dict(src=tmp_path / "src", size=(32,), out=str(tmp_path / "shards" / "{size}"), workers=0,
                   val_fraction=0.25, shard_size=4)
    options.update(overrides)
    return BuildConfig(**options)


def _tar_arrays(manifest) -> dict[str, dict[str, np.ndarray]]:
    """{split: {key: (C, S, S) uint8}} decoded from the tar shards."""
    arrays: dict[str, dict[str, np.ndarray]] = {"train": {}, "val": {}}
    for entry in manifest.shards:
        for key, parts in iter_shard(manifest.root / entry.path, entry.sha256):
            arrays[entry.split][key] = decode_png(parts["png"])
    return arrays


def test_round_trip_matches_the_contract(tmp_path):
    make_folder(tmp_path / "src", {"normal": 13, "abnormal": 6})
    (manifest,) = build(_config(tmp_path))
    assert manifest.root == (tmp_path / "shards" / "32").resolve()
    assert manifest.size == 32 and manifest.stored_size == 35 and manifest.channels == 3
    assert manifest.classes == ["abnormal", "normal"]
    assert sum(manifest.counts["train"].values()) + sum(manifest.counts["val"].values()) == 19
    assert manifest.source_sizes == {"40x32": 19} and manifest.skipped == [] and manifest.ignored == 0
    assert manifest.options["size"] == [32] and manifest.options["fit"] == "crop"
    for entry in manifest.shards:
        assert entry.path.startswith(f"{entry.split}-{entry.class_name}-") and entry.count <= 4
        label = manifest.classes.index(entry.class_name)
        with tarfile.open(manifest.root / entry.path) as tar:
            names = tar.getnames()
            assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in tar.getmembers())
        assert len(names) == 3 * entry.count and all(name.count(".") == 1 for name in names)
        for key, parts in iter_shard(manifest.root / entry.path):
            assert key.startswith(entry.class_name + "-") and len(key.split("-")[-1]) == 16
            assert parts["cls"] == str(label).encode()
            sidecar = json.loads(parts["json"])
            assert sidecar["class"] == entry.class_name and sidecar["label"] == label
            assert (sidecar["width"], sidecar["height"]) == (40, 32)
            assert (tmp_path / "src" / sidecar["source"]).is_file()
            assert Image.open(io.BytesIO(parts["png"])).size == (35, 35)
    per_class = {(e.split, e.class_name): 0 for e in manifest.shards}
    for entry in manifest.shards:
        per_class[entry.split, entry.class_name] += entry.count
    assert all(manifest.counts[split][name] == n for (split, name), n in per_class.items())


def test_tar_and_hdf5_hold_identical_pixels(tmp_path):
    make_folder(tmp_path / "src", {"normal": 9, "abnormal": 5})
    (manifest,) = build(_config(tmp_path, workers=2))
    arrays = _tar_arrays(manifest)
    with h5py.File(manifest.hdf5_path) as h5:
        assert h5.attrs["stored_size"] == 35 and json.loads(h5.attrs["classes"]) == manifest.classes
        for split in ("train", "val"):
            keys = list(h5[f"{split}/keys"].asstr()[:])
            labels = h5[f"{split}/labels"][:]
            images = h5[f"{split}/images"][:]
            assert images.dtype == np.uint8 and images.shape == (len(keys), 3, 35, 35)
            assert labels.dtype == np.int64
            assert list(zip(labels.tolist(), keys)) == sorted(zip(labels.tolist(), keys))  # (label, key) order
            assert set(keys) == set(arrays[split])
            for key, label, pixels in zip(keys, labels, images):
                np.testing.assert_array_equal(pixels, arrays[split][key])
                assert key.startswith(manifest.classes[label] + "-")


def test_mean_and_std_match_the_train_pixels(tmp_path):
    make_folder(tmp_path / "src", {"normal": 6, "abnormal": 3})
    (manifest,) = build(_config(tmp_path))
    with h5py.File(manifest.hdf5_path) as h5:
        train = h5["train/images"][:].astype(np.float64) / 255
    np.testing.assert_allclose(manifest.mean, train.mean(axis=(0, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(manifest.std, train.std(axis=(0, 2, 3)), atol=1e-6)


def test_multi_size_one_pass_and_options(tmp_path):
    make_folder(tmp_path / "src", {"normal": 5, "abnormal": 3}, size=(64, 48))
    decoded = []
    original = shards._decode_one
    config = _config(tmp_path, size=(16, 40), margin=0, fit=Fit.PAD, channels=1)
    try:
        shards._decode_one = lambda settings, item: decoded.append(item) or original(settings, item)
        small, large = build(config)
    finally:
        shards._decode_one = original
    assert len(decoded) == 8  # every image decoded once for both sizes
    assert (small.stored_size, large.stored_size) == (16, 40) and small.channels == large.channels == 1
    assert small.counts == large.counts
    with h5py.File(large.hdf5_path) as h5:
        images = h5["train/images"][:]
    assert images.shape[1:] == (1, 40, 40)
    assert images[:, 0, 0, :].max() == 0  # pad: 64x48 sources get black rows on top
    assert verify(small.root).ok and verify(large.root).ok  # grey (L) shards verify too
    with pytest.raises(BuildError, match="placeholder"):
        _config(tmp_path, size=(16, 40), out=str(tmp_path / "fixed"))


def test_every_bad_input_kind_is_skipped_with_reason(tmp_path):
    src = make_folder(tmp_path / "src", {"normal": 6, "abnormal": 3})
    good = (src / "normal" / "img_000.png").read_bytes()
    (src / "normal" / "zero.png").write_bytes(b"")
    (src / "normal" / "truncated.png").write_bytes(good[: len(good) // 2])
    corrupt = bytearray(good)
    corrupt[200:260] = bytes(60)
    (src / "normal" / "corrupt.png").write_bytes(bytes(corrupt))
    (src / "normal" / "fake.jpg").write_text("not an image at all")
    (src / "abnormal" / "bomb.png").write_bytes(bomb_png())
    (src / "normal" / "notes.txt").write_text("ignored")
    write_image(src / "normal" / ".hidden.png", seed=7)
    (manifest,) = build(_config(tmp_path))
    reasons = {entry["path"]: entry["reason"] for entry in manifest.skipped}
    assert reasons["normal/zero.png"] == "empty file (0 bytes)"
    assert reasons["normal/truncated.png"].startswith("truncated")
    assert reasons["normal/corrupt.png"].startswith(("corrupt", "truncated"))
    assert reasons["normal/fake.jpg"].startswith("not an image")
    assert reasons["abnormal/bomb.png"].startswith("decompression bomb")
    assert len(reasons) == 5 and manifest.ignored == 2
    assert manifest.num_samples("train") + manifest.num_samples("val") == 9
    with pytest.raises(BuildError, match=r"--strict: 5 file\(s\)") as raised:
        build(_config(tmp_path, out=str(tmp_path / "strict"), strict=True))
    assert "abnormal/bomb.png" in str(raised.value)
    assert not (tmp_path / "strict").exists()


def test_class_with_only_bad_files_is_an_error(tmp_path):
    src = make_folder(tmp_path / "src", {"normal": 3})
    (src / "broken").mkdir()
    (src / "broken" / "a.png").write_text("nope")
    with pytest.raises(BuildError, match="class 'broken': no usable images"):
        build(_config(tmp_path))
    assert not (tmp_path / "shards").exists() or not any((tmp_path / "shards").iterdir())


def test_build_is_byte_deterministic(tmp_path):
    make_folder(tmp_path / "src", {"normal": 7, "abnormal": 4})
    (first,) = build(_config(tmp_path, workers=2))
    before = sha256_tree(first.root)
    time.sleep(1.1)  # a timestamp anywhere would now differ
    (second,) = build(_config(tmp_path, workers=0, overwrite=True))
    assert sha256_tree(second.root) == before and len(before) == 1 + 1 + len(first.shards)
    (third,) = build(_config(tmp_path, workers=2, overwrite=True))
    assert sha256_tree(third.root) == before


def test_existing_output_needs_overwrite_and_source_is_untouched(tmp_path):
    src = make_folder(tmp_path / "src", {"normal": 4, "abnormal": 2})
    source_before = sha256_tree(src)
    build(_config(tmp_path))
    with pytest.raises(BuildError, match="exists; pass --overwrite"):
        build(_config(tmp_path))
    build(_config(tmp_path, overwrite=True, val_fraction=0.0))
    manifest = load_manifest(tmp_path / "shards" / "32")
    assert manifest.num_samples("val") == 0 and all(e.split == "train" for e in manifest.shards)
    assert sha256_tree(src) == source_before
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["32"]  # no temp folders left
    with pytest.raises(BuildError, match="inside --src"):
        build(_config(tmp_path, out=str(src / "out")))


def test_interrupt_removes_temp_and_keeps_previous_output(tmp_path, monkeypatch):
    make_folder(tmp_path / "src", {"normal": 6, "abnormal": 3})
    (manifest,) = build(_config(tmp_path))
    before = sha256_tree(manifest.root)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shards._SizeWriter, "add", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build(_config(tmp_path, overwrite=True, margin=0))
    assert sha256_tree(manifest.root) == before
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["32"]


_SLOW_BUILD = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C raises even where the caller ignores it
from pathlib import Path
from ddpm_data import shards
original = shards._decode_one
def slow(settings, item):
    time.sleep(0.05)
    return original(settings, item)
shards._decode_one = slow
shards.build(shards.BuildConfig(src=Path(sys.argv[1]), size=(32,), out=sys.argv[2], workers=int(sys.argv[3]),
                                shard_size=2, overwrite=True, margin=0))
"""


@pytest.mark.parametrize("sig, workers", [(signal.SIGKILL, 0), (signal.SIGINT, 2)], ids=["kill-9", "ctrl-c-2-workers"])
def test_killed_build_leaves_previous_output_intact(tmp_path, sig, workers):
    make_folder(tmp_path / "src", {"normal": 30, "abnormal": 10})
    out = tmp_path / "shards" / "32"
    build(_config(tmp_path))
    before = sha256_tree(out)
    process = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD, str(tmp_path / "src"), str(out), str(workers)],
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    temp_tars = []
    while time.monotonic() < deadline and len(temp_tars) < 2:
        temp_tars = list((tmp_path / "shards").glob(".32.building-*/*.tar"))
        time.sleep(0.02)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=30)
    assert len(temp_tars) >= 2, "the build never started writing"
    assert process.returncode != 0
    assert sha256_tree(out) == before  # old output untouched, nothing half-written in place
    assert [p.name for p in (tmp_path / "shards").iterdir() if not p.name.startswith(".")] == ["32"]
    if sig == signal.SIGINT:  # Ctrl-C: the build cleans up after itself
        assert b"KeyboardInterrupt" in stderr
        assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["32"]
    build(_config(tmp_path, overwrite=True, margin=0))  # the next build removes any stale temp folder
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["32"]
    assert load_manifest(out).stored_size == 32


def test_config_validation_names_the_flag():
    for overrides, flag in [({"size": ()}, "--size"), ({"channels": 2}, "--channels"),
                            ({"val_fraction": 1.0}, "--val-fraction"), ({"shard_size": 0}, "--shard-size"),
                            ({"margin": -1}, "--margin"), ({"workers": -1}, "--workers"),
                            ({"size": (96, 96), "out": "s/{size}"}, "--size"), ({"fit": "zoom"}, "--fit")]:
        with pytest.raises(BuildError, match=flag):
            BuildConfig(**overrides)


def test_shard_size_rotates_shards(tmp_path):
    make_folder(tmp_path / "src", {"normal": 11})
    (manifest,) = build(_config(tmp_path, val_fraction=0.0, shard_size=5))
    assert [(e.path, e.count) for e in manifest.shards] == [
        ("train-normal-000000.tar", 5), ("train-normal-000001.tar", 5), ("train-normal-000002.tar", 1)]


def test_copying_output_elsewhere_keeps_it_valid(tmp_path):
    make_folder(tmp_path / "src", {"normal": 3, "abnormal": 2})
    (manifest,) = build(_config(tmp_path))
    moved = tmp_path / "moved"
    shutil.copytree(manifest.root, moved)
    assert load_manifest(moved).shard_paths("train")[0].parent == moved.resolve()


def test_webdataset_reads_the_shards(tmp_path):
    """The tars are plain WebDataset: keys with a dotted class name survive, fields decode."""
    webdataset = pytest.importorskip("webdataset")
    make_folder(tmp_path / "src", {"normal": 3, "v1.2": 2})
    (manifest,) = build(_config(tmp_path, val_fraction=0.0))
    dataset = webdataset.WebDataset([str(p) for p in manifest.shard_paths("train")], shardshuffle=False,
                                    empty_check=False).decode("pil")
    samples = list(dataset)
    assert len(samples) == 5
    for sample in samples:
        label = int(sample["cls"])
        assert sample["json"]["label"] == label and manifest.classes[label] == sample["json"]["class"]
        assert sample["png"].size == (35, 35) and sample["__key__"].count(".") == 0
    assert sorted({s["__key__"].split("-")[0] for s in samples}) == ["normal", "v1_2"]


def test_an_empty_out_folder_is_built_into_without_overwrite(tmp_path):
    make_folder(tmp_path / "src", {"normal": 4, "abnormal": 2})
    (tmp_path / "shards" / "32").mkdir(parents=True)  # mkdir out && ddpm-data build --out out
    (manifest,) = build(_config(tmp_path))
    assert manifest.num_samples("train") + manifest.num_samples("val") == 6
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["32"]


_DISK_FULL_BUILD = "from cli import data_app; data_app()"


def _tmpfs_build(disk: Path, src: Path) -> subprocess.CompletedProcess | None:
    """The build CLI run on a 512 KiB tmpfs mounted in a private mount namespace (unshare -Urm:
    root or not, nothing outside sees it); None where this machine allows no such mount."""
    command = (f"mount -t tmpfs -o size=512k tmpfs {disk} && cd {disk} && exec {sys.executable} -c "
               f"'{_DISK_FULL_BUILD}' build --src {src} --size 64 --out 'out/{{size}}' --workers 0")
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode:
        return None
    return subprocess.run(["unshare", "-Urm", "sh", "-c", command], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_full_disk_during_the_build_is_one_error_line_not_a_crash(tmp_path, monkeypatch):
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for i in range(40):  # noise PNGs: ~1.8 MB of shards at size 64, more than the 512 KiB disk
        path = src / ("normal" if i % 4 else "abnormal") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(path)
    disk = tmp_path / "disk"
    disk.mkdir()
    done = _tmpfs_build(disk, src)
    if done is not None:  # a real full disk: h5py used to crash the interpreter at exit (exit 139)
        assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
        assert "Traceback" not in done.stderr and "h5py" not in done.stderr, done.stderr[-3000:]
        assert done.stderr.rstrip().splitlines()[-1].startswith("error: out/64: No space left on device; free some "
                                                                 "disk space or choose another --out"), done.stderr[-3000:]
        return
    real_write = shards.ShardWriter.add  # no mount here: the same failure, injected into the tar writer

    def full(self, *args, **kwargs):
        if self.count >= 2:
            raise OSError(28, "No space left on device", self.name)
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(shards.ShardWriter, "add", full)
    with pytest.raises(BuildError, match="No space left on device; free some disk space"):
        build(_config(tmp_path, out=str(disk / "out" / "{size}")))
    assert list(disk.iterdir()) == []


def test_killed_url_builds_leave_no_staging_copy_behind(tmp_path, monkeypatch):
    import fcntl
    import tempfile

    from ddpm_data.atomic import LOCK_NAME, STAGING_PREFIX, staging_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale, running = tmp_path / f"{STAGING_PREFIX}killed", tmp_path / f"{STAGING_PREFIX}running"
    for folder in (stale, running):
        (folder / "96").mkdir(parents=True)
        (folder / LOCK_NAME).write_text("")
    holder = open(running / LOCK_NAME, "a")  # another build is uploading from it right now
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with staging_folder() as staging:
            assert staging.parent == tmp_path and not stale.exists() and running.exists()
        assert not staging.exists()
    finally:
        holder.close()
