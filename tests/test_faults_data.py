"""Faults on the data side, as a careless user meets them: every command either does its job or
stops with a one-line error (exit 2) naming the path and the fix, and leaves the user's files and
earlier outputs byte-identical.

Each test builds a small project in tmp_path: `proj/data` (the source), `proj/shards/32` (a
previous build) and a file of the user's, and snapshots the whole project before the command.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import pickle
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import data_app
from ddpm_data import shardformat, shards
from ddpm_data.atomic import target_lock
from ddpm_data.manifest import load_manifest, manifest_to_json
from ddpm_data.split import split_of
from ddpm_data.synth import MARKER
from ddpm_data.verify import verify
from helpers_data import make_folder, write_image

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


# ---------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict[str, str]:
    """Everything below `root` without opening special files: sha256 of files, links, folders."""
    state = {}
    for path in sorted(root.rglob("*")):
        mode, relative = path.lstat().st_mode, path.relative_to(root).as_posix()
        if stat.S_ISLNK(mode):
            state[relative] = "-> " + os.readlink(path)
        elif stat.S_ISDIR(mode):
            state[relative] = "folder"
        elif stat.S_ISREG(mode):
            state[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[relative] = "special"
    return state


def run(*args) -> tuple[int, str]:
    """Run `ddpm-data ARGS`; (exit code, stdout + stderr)."""
    result = runner.invoke(data_app, [str(a) for a in args])
    output = result.output  # stdout and stderr, interleaved
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        output += f"\nTraceback: {result.exception!r}"
    return result.exit_code, output


def one_error(output: str) -> str:
    """The single `error:` line of `output` (and no traceback)."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


@pytest.fixture
def proj(tmp_path) -> Path:
    """proj/data (source), proj/shards/32 (a previous build), proj/notes.txt (the user's)."""
    root = tmp_path / "proj"
    make_folder(root / "data", {"normal": 6, "abnormal": 3})
    (root / "notes.txt").write_text("the user's notes")
    shards.build(shards.BuildConfig(src=root / "data", size=(32,), out=str(root / "shards" / "32"), workers=0,
                                    shard_size=4, val_fraction=0.0))
    return root


def build_args(proj: Path, out: Path | str, *extra) -> list:
    return ["build", "--src", proj / "data", "--size", "32", "--out", out, "--workers", "0", "--shard-size", "4",
            "--val-fraction", "0", *extra]


# ---------------------------------------------------------------- --overwrite replaces only its own output


@pytest.mark.parametrize("out, needle", [
    (".", "holds --src"),                       # the source inside the output: proj itself
    ("data/out", "lies inside --src"),
    ("notes.txt", "notes.txt is a file"),
    ("notes.txt/32", "notes.txt is a file"),
    ("data/normal", "lies inside --src"),
], ids=["src-inside-out", "out-inside-src", "out-is-a-file", "out-below-a-file", "out-is-a-class-folder"])
def test_build_refuses_outputs_that_hold_or_are_user_files(proj, out, needle):
    before = snapshot(proj.parent)
    code, output = run(*build_args(proj, proj / out, "--overwrite"))
    assert code == 2 and needle in one_error(output)
    assert snapshot(proj.parent) == before


def test_build_overwrite_refuses_a_folder_a_build_did_not_write(proj):
    user = proj / "results"
    (user / "figures").mkdir(parents=True)
    (user / "paper.tex").write_text("months of work")
    before = snapshot(proj.parent)
    code, output = run(*build_args(proj, user, "--overwrite"))
    assert code == 2 and "holds no manifest.json" in one_error(output)
    assert snapshot(proj.parent) == before


@pytest.mark.parametrize("intruder", ["run/config.json", "notes.txt", "train-normal-000000.tar.bak"])
def test_build_overwrite_refuses_a_shard_folder_holding_other_files(proj, intruder):
    """e.g. `ddpm-train --out shards/32/run`: the next build --overwrite must not delete the run."""
    path = proj / "shards" / "32" / intruder
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not the build's")
    before = snapshot(proj.parent)
    code, output = run(*build_args(proj, proj / "shards" / "32", "--overwrite", "--margin", "0"))
    error = one_error(output)
    assert code == 2 and intruder.split("/")[0] in error and "would delete" in error
    assert snapshot(proj.parent) == before


def test_build_overwrite_replaces_its_own_output_and_eval_cache(proj):
    folder = proj / "shards" / "32"
    (folder / "eval-classifier-0123456789abcdef-01234567.pt").write_bytes(b"cache")
    code, output = run(*build_args(proj, folder, "--overwrite", "--margin", "0"))
    assert code == 0, output
    assert load_manifest(folder).stored_size == 32 and not list(folder.glob("eval-classifier-*"))
    assert sorted(p.name for p in folder.parent.iterdir()) == ["32"]  # no lock or temp left


def test_build_refuses_a_symlinked_output(proj):
    (proj / "link").symlink_to(proj / "shards" / "32")
    before = snapshot(proj.parent)
    code, output = run(*build_args(proj, proj / "link", "--overwrite"))
    assert code == 2 and "symbolic link" in one_error(output)
    assert snapshot(proj.parent) == before


def synth_args(out: Path, *extra) -> list:
    return ["synth", out, "--normal", "2", "--abnormal", "1", "--size", "16", *extra]


def test_synth_overwrite_refuses_a_folder_without_its_marker(proj):
    before = snapshot(proj.parent)
    code, output = run(*synth_args(proj, "--overwrite"))
    assert code == 2 and MARKER in one_error(output)
    assert snapshot(proj.parent) == before


def test_synth_overwrite_refuses_its_folder_once_the_user_added_files(tmp_path):
    out = tmp_path / "data"
    assert run(*synth_args(out))[0] == 0
    (out / "normal" / "my_scan.png").write_bytes(b"real data")
    before = snapshot(tmp_path)
    code, output = run(*synth_args(out, "--overwrite", "--seed", "1"))
    assert code == 2 and "normal/my_scan.png" in one_error(output)
    assert snapshot(tmp_path) == before
    (out / "normal" / "my_scan.png").unlink()
    assert run(*synth_args(out, "--overwrite", "--seed", "1"))[0] == 0  # its own folder: replaced
    assert (out / MARKER).is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_synth_into_a_users_folder_does_not_suggest_overwrite(proj):
    code, output = run(*synth_args(proj))
    assert code == 2 and "synth did not write it" in one_error(output) and "pass --overwrite" not in output


def test_build_into_a_users_folder_does_not_suggest_overwrite(proj):
    (proj / "mine").mkdir()
    (proj / "mine" / "a.txt").write_text("the user's")
    code, output = run(*build_args(proj, proj / "mine"))
    assert code == 2 and "a build did not write it" in one_error(output) and "pass --overwrite" not in output


def test_synth_disk_full_is_one_line_and_keeps_the_old_folder(tmp_path, monkeypatch):
    out = tmp_path / "data"
    assert run(*synth_args(out))[0] == 0
    before = snapshot(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("PIL.Image.Image.save", full)
    code, output = run(*synth_args(out, "--overwrite", "--seed", "3"))
    assert code == 2 and "No space left on device" in one_error(output)
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- odd source files


def test_pipes_and_devices_in_the_source_are_skipped_unopened(proj):
    """A named pipe or a symlink to /dev/zero used to hang the build; in a subprocess to time it out."""
    os.mkfifo(proj / "data" / "normal" / "pipe.png")
    (proj / "data" / "abnormal" / "zero.jpg").symlink_to("/dev/zero")
    before = snapshot(proj / "data")
    command = [sys.executable, "-c", "from cli import data_app; data_app()",
               *map(str, build_args(proj, proj / "out", "--workers", "2"))]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the build and its workers
        process.communicate()
        raise AssertionError("the build hung on a pipe or device") from None
    assert process.returncode == 0, stderr
    assert "skipped normal/pipe.png: not a regular file (named pipe)" in stdout
    assert "skipped abnormal/zero.jpg: not a regular file (symbolic link to a character device)" in stdout
    assert snapshot(proj / "data") == before
    strict = run(*build_args(proj, proj / "strict", "--strict"))
    assert strict[0] == 2 and "normal/pipe.png: not a regular file" in strict[1]


def test_odd_images_are_skipped_and_named(proj):
    (proj / "data" / "normal" / "empty.png").write_bytes(b"")
    (proj / "data" / "normal" / "text.png").write_text("not an image")
    data = (proj / "data" / "normal" / "img_000.png").read_bytes()
    (proj / "data" / "abnormal" / "cut.png").write_bytes(data[: len(data) // 2])
    code, output = run(*build_args(proj, proj / "out"))
    assert code == 0, output
    for line in ("normal/empty.png: empty file", "normal/text.png: not an image", "abnormal/cut.png: truncated"):
        assert f"skipped {line}" in output


def _val_only_image(path: Path, val_fraction: float) -> None:
    """Write an image whose content hash puts it in val."""
    for seed in range(10_000):
        write_image(path, seed=90_000 + seed)
        if split_of(hashlib.sha256(path.read_bytes()).hexdigest(), val_fraction) == "val":
            return
    raise AssertionError("no val image found")


def test_class_without_training_images_warns_and_strict_fails(tmp_path):
    src = make_folder(tmp_path / "data", {"normal": 4})
    _val_only_image(src / "rare" / "only.png", 0.5)
    args = ["build", "--src", src, "--size", "32", "--workers", "0", "--val-fraction", "0.5"]
    code, output = run(*args, "--out", tmp_path / "a")
    assert code == 0, output
    assert "warning: class 'rare': no training images" in output and "--val-fraction" in output
    code, output = run(*args, "--out", tmp_path / "b", "--strict")
    assert code == 2 and "class 'rare': no training images" in one_error(output)
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------- memory


def test_build_memory_is_bounded_by_buffer_mb_at_a_large_size(tmp_path):
    """8 images at size 384 (stored 420 px, 0.5 MB each): the HDF5 buffer used to hold them all, twice."""
    import tracemalloc

    src = make_folder(tmp_path / "data", {"normal": 8}, size=(430, 430))
    config = shards.BuildConfig(src=src, size=(384,), out=str(tmp_path / "s"), workers=0, val_fraction=0.0,
                                buffer_mb=1)
    shards.build(dataclasses.replace(config, out=str(tmp_path / "warm-up")))  # imports and caches, before measuring
    tracemalloc.start()
    try:
        shards.build(config)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6e6, f"peak {peak / 1e6:.1f} MB"  # 4.7 MB, whatever the count; it was 9 MB for 8, 17.5 for 16
    assert verify(tmp_path / "s").ok


def test_build_refuses_an_absurd_size_before_reading_the_source(proj, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the source was read")

    monkeypatch.setattr(shards, "plan_source", never)
    before = snapshot(proj.parent)
    code, output = run("build", "--src", proj / "data", "--size", "32,100000", "--out", proj / "o" / "{size}")
    error = one_error(output)
    assert code == 2 and error.startswith("error: --size 100000: above 4096 px") and "MiB of memory" in error
    assert "batch size" not in error and snapshot(proj.parent) == before


def test_build_out_of_memory_gives_build_advice(proj, monkeypatch):
    def exhausted(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(shards, "build", exhausted)
    code, output = run(*build_args(proj, proj / "o"))
    error = one_error(output)
    assert code == 2 and "out of memory" in error and "--size" in error and "batch size" not in error


def test_hdf5_writer_buffers_bytes_not_rows(tmp_path):
    writer = shardformat.Hdf5Writer(tmp_path / "d.h5", 256, 280, 3, ["a"], ("train", "val"), buffer_bytes=1 << 20)
    assert all(block.nbytes <= 1 << 19 or len(block) == 1 for block in writer._blocks.values())
    writer.close()


# ---------------------------------------------------------------- concurrent builds


def test_second_build_into_a_locked_output_fails_naming_the_first(proj):
    out = proj / "shards" / "32"
    before = snapshot(proj.parent)
    with target_lock(out):
        code, output = run(*build_args(proj, out, "--overwrite", "--margin", "0"))
    assert code == 2 and f"another build (pid {os.getpid()})" in one_error(output)
    assert snapshot(proj.parent) == before


_SLOW_CLI = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C raises even where the caller ignores it
from ddpm_data import shards
original = shards._decode_one
def slow(settings, item):
    time.sleep(0.05)
    return original(settings, item)
shards._decode_one = slow
from cli import data_app
data_app()
"""


def _start_slow_build(args: list) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _SLOW_CLI, *map(str, args)], cwd=REPO, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _wait_for_tars(folder: Path, pattern: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(folder.glob(pattern))) < 2 and process.poll() is None:
        time.sleep(0.02)
    assert len(list(folder.glob(pattern))) >= 2, "the first build never started writing"


def test_two_concurrent_builds_the_second_fails_the_first_completes(proj):
    make_folder(proj / "data", {"normal": 30, "abnormal": 10})
    out = proj / "shards" / "new"
    first = _start_slow_build(build_args(proj, out, "--shard-size", "2"))
    try:
        _wait_for_tars(out.parent, ".new.building-*/*.tar", first)
        code, output = run(*build_args(proj, out))
        assert code == 2 and f"another build (pid {first.pid})" in one_error(output)
    finally:
        stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert verify(out).ok and load_manifest(out).num_samples("train") == 40
    assert sorted(p.name for p in out.parent.iterdir()) == ["32", "new"]


# ---------------------------------------------------------------- interrupted builds (already safe)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_interrupted_build_keeps_the_previous_output(proj, sig):
    make_folder(proj / "data", {"normal": 30, "abnormal": 10})
    out = proj / "shards" / "32"
    before = snapshot(proj)
    process = _start_slow_build(build_args(proj, out, "--overwrite", "--shard-size", "2", "--workers", "2"))
    try:
        _wait_for_tars(out.parent, ".32.building-*/*.tar", process)
        process.send_signal(sig)
    finally:
        _, stderr = process.communicate(timeout=60)
    visible = {path: digest for path, digest in snapshot(proj).items() if "/." not in f"/{path}"}
    assert visible == before
    if sig == signal.SIGINT:
        assert process.returncode == 130 and one_error(stderr).startswith("error: interrupted")
        assert sorted(p.name for p in out.parent.iterdir()) == ["32"]
    code, output = run(*build_args(proj, out, "--overwrite", "--margin", "0"))  # a stale lock does not block
    assert code == 0, output
    assert sorted(p.name for p in out.parent.iterdir()) == ["32"]


# ---------------------------------------------------------------- output that cannot be written


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("target", ["ddpm_data.shardformat._HashingFile.write", "ddpm_data.shardformat.Hdf5Writer._flush",
                                    "ddpm_data.shards.write_manifest"], ids=["tar", "hdf5", "manifest"])
def test_disk_full_is_one_line_and_keeps_the_previous_output(proj, monkeypatch, target):
    before = snapshot(proj.parent)
    monkeypatch.setattr(target, _no_space)
    code, output = run(*build_args(proj, proj / "shards" / "32", "--overwrite", "--margin", "0"))
    error = one_error(output)
    assert code == 2 and "No space left on device; free some disk space" in error and "shards/32" in error
    assert snapshot(proj.parent) == before


def test_read_only_output_is_one_line(proj, monkeypatch):
    """As root a chmod does not stop writes, so both ways a read-only folder shows are simulated."""
    before = snapshot(proj.parent)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == proj else real_access(path, mode))
    code, output = run(*build_args(proj, proj / "new" / "32"))
    assert code == 2 and f"cannot write into {proj}" in one_error(output)
    monkeypatch.setattr(os, "access", real_access)

    def denied(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))

    monkeypatch.setattr("ddpm_data.atomic.tempfile.mkdtemp", denied)
    code, output = run(*build_args(proj, proj / "new" / "32"))
    assert code == 2 and "Permission denied; choose a writable --out" in one_error(output)
    assert snapshot(proj.parent) == before  # proj/new was created for the build and removed again


@pytest.mark.parametrize("command", ["build", "synth"])
def test_a_read_only_filesystem_is_not_called_permission_denied(proj, monkeypatch, command):
    real_access, real_statvfs = os.access, os.statvfs
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == proj else real_access(path, mode))
    monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result((0,) * 8 + (os.ST_RDONLY, 255))
                        if Path(path) == proj else real_statvfs(path))
    args = build_args(proj, proj / "new" / "32") if command == "build" else synth_args(proj / "new")
    code, output = run(*args)
    assert code == 2 and "read-only filesystem" in one_error(output) and "permission denied" not in output


# ---------------------------------------------------------------- reading a shard folder


def test_stats_grid_with_a_missing_shard_names_it(proj, tmp_path):
    folder = proj / "shards" / "32"
    shard = load_manifest(folder).shards[0].path
    (folder / shard).unlink()
    code, output = run("stats", folder, "--grid", tmp_path / "grid.png")
    error = one_error(output)
    assert code == 2 and shard in error and "missing" in error and "ddpm-data verify" in error


@pytest.mark.parametrize("grid, needle", [("", "is a folder"), ("notes.txt/grid.png", "notes.txt is a file")],
                         ids=["folder", "below-a-file"])
def test_stats_grid_path_that_cannot_be_a_file(proj, grid, needle):
    before = snapshot(proj.parent)
    code, output = run("stats", proj / "shards" / "32", "--grid", proj / grid)
    assert code == 2 and needle in one_error(output)
    assert snapshot(proj.parent) == before


@pytest.mark.parametrize("field, value, needle", [
    ("counts", {"train": {"abnormal": "3", "normal": 6}, "val": {"abnormal": 0, "normal": 0}}, "must be integers"),
    ("counts", {"train": {"abnormal": None, "normal": 6}, "val": {"abnormal": 0, "normal": 0}}, "must be integers"),
    ("counts", {"train": [3, 6], "val": {}}, "field 'counts'"),
    ("mean", ["a", 0.5, 0.5], "field 'mean'"),
    ("classes", ["abnormal", "normal", 7], "field 'classes'"),
    ("shard-count", "4", "integer count"),
], ids=["count-string", "count-null", "split-list", "mean-string", "class-number", "shard-count-string"])
def test_malformed_manifest_fields_are_named(proj, field, value, needle):
    folder = proj / "shards" / "32"
    document = load_manifest(folder).to_dict()
    if field == "shard-count":
        document["shards"][0]["count"] = value
    else:
        document[field] = value
    (folder / "manifest.json").write_text(manifest_to_json(document))
    for command in ("stats", "verify"):
        code, output = run(command, folder)
        assert code in (1, 2) and "manifest.json" in output and needle in output, (command, output)
        assert "Traceback" not in output
    assert run("stats", folder)[0] == 2


@pytest.mark.parametrize("damage, hint", [("missing", "--size N"), ("malformed", "--size 32")])
def test_verify_names_the_manifest_once_and_takes_no_size_from_a_folder_name(proj, damage, hint):
    folder = proj / "v" / "03"
    folder.parent.mkdir()
    (proj / "shards" / "32").rename(folder)
    if damage == "missing":
        (folder / "manifest.json").unlink()
    else:
        document = load_manifest(folder).to_dict()
        del document["classes"]
        (folder / "manifest.json").write_text(manifest_to_json(document))
    code, output = run("verify", folder)
    line = next(line for line in output.splitlines() if "manifest.json" in line and not line.startswith("error:"))
    assert code == 1 and line.count("manifest.json") == 1 and f"run 'ddpm-data build {hint}'" in line, output


def test_verify_names_only_the_damaged_shard(proj):
    folder = proj / "shards" / "32"
    shard = load_manifest(folder).shards[0].path
    data = (folder / shard).read_bytes()
    (folder / shard).write_bytes(data[:1500])
    code, output = run("verify", folder)
    assert code == 1 and one_error(output).endswith(f"1 bad file(s): {shard}")
    blamed = {line.split(": ")[0] for line in output.splitlines() if line.startswith(str(folder))}
    assert blamed == {str(folder / shard)}


@pytest.mark.parametrize("args, needle", [
    (["preview", ".", "--mode", "bogus"], "error: --mode: 'bogus' is not one of 'auto', 'stream', 'memory'"),
    (["build", "--src"], "error: Option '--src' requires an argument"),
    (["build", "--bogus"], "error: No such option: --bogus"),
    (["bogus"], "error: No such command 'bogus'"),
])
def test_usage_errors_are_one_lowercase_line(args, needle):
    code, output = run(*args)
    assert code == 2 and one_error(output).startswith(needle), output
    assert "Error:" not in output and "Value error" not in output and "Usage:" not in output


@pytest.mark.filterwarnings("always")
def test_skip_bad_shards_warnings_are_one_line_without_source(proj):
    folder = proj / "shards" / "32"
    shard = load_manifest(folder).shards[0].path
    (folder / shard).write_bytes((folder / shard).read_bytes()[:1500])
    result = runner.invoke(data_app, ["preview", str(folder), "--mode", "stream", "--skip-bad-shards", "--n", "8"])
    warned = [line for line in result.stderr.splitlines() if shard in line]
    assert warned and all(line.startswith("warning: ") and "skipped (--skip-bad-shards)" in line for line in warned)
    assert "UserWarning" not in result.stderr and ".py:" not in result.stderr, result.stderr


# ---------------------------------------------------------------- the eval classifier cache


class _Payload:
    """A pickle that would run code when loaded unrestricted."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.fixture
def real(copy_shards):
    from ddpm_eval.images import load_real

    return load_real(copy_shards())


def _train(real, **kwargs):
    import torch

    from ddpm_eval.classifier import ClassifierConfig, load_or_train

    messages: list[str] = []
    config = ClassifierConfig(epochs=1, batch_size=16, width=4)
    model, path, trained = load_or_train(real, config, torch.device("cpu"), messages.append)
    return path, trained, messages


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other-weights", "folder"])
def test_damaged_eval_classifier_cache_is_retrained(real, damage):
    import torch

    path, trained, _ = _train(real)
    assert trained and path.is_file()
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\0" * 100)
    elif damage == "other-weights":
        torch.save({"state_dict": {"head.weight": torch.zeros(1)}}, path)
    else:
        path.unlink()
        path.mkdir()
    again, trained, messages = _train(real)
    assert trained and again == path
    if damage != "folder":
        assert any("retraining the eval classifier" in m and str(path) in m for m in messages), messages
        assert _train(real)[1] is False  # the retrained classifier was cached again
    else:
        assert any("could not cache the eval classifier" in m for m in messages), messages


def test_a_malicious_eval_cache_is_not_loaded_and_no_unsafe_load_is_suggested(real, tmp_path):
    path, _, _ = _train(real)
    path.write_bytes(pickle.dumps(_Payload()))
    _, trained, messages = _train(real)
    warning = next(m for m in messages if "retraining the eval classifier" in m)
    assert trained and "refused unread" in warning and "weights_only" not in warning and "succeed" not in warning
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("error", [RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
                                   OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))], ids=["torch-writer", "disk-full"])
def test_unwritable_eval_classifier_cache_warns_and_goes_on(real, monkeypatch, error):
    import torch

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch, "save", fail)
    before = snapshot(real.root)
    path, trained, messages = _train(real)
    assert trained and not path.exists()
    assert any("could not cache the eval classifier" in m and "going on without a cache" in m for m in messages)
    assert snapshot(real.root) == before


def test_eval_reports_a_classifier_that_was_not_cached(real, monkeypatch):
    import torch

    from ddpm_eval.evaluate import EvalConfig, evaluate
    from eval_helpers import write_samples

    folder = write_samples(Path(real.root).parent / "samples", real.train.images, real.train.labels)
    monkeypatch.setattr(torch, "save", lambda *args, **kwargs: _no_space())
    messages: list[str] = []
    config = EvalConfig(real=real.root, samples=folder, class_name="normal", classifier_epochs=1, classifier_width=4,
                        classifier_batch_size=16, swd_descriptors=256)
    result = evaluate(config, log=messages.append)
    assert result["classifier"]["cache"] == "not cached"
    assert any("could not cache" in m for m in messages)
    assert np.isfinite(result["classifier_val_accuracy"])


def test_a_failed_second_size_leaves_the_first_sizes_previous_output(proj, monkeypatch):
    """Entering the second output failed after the first was entered: the first used to be committed, empty."""
    shards.build(shards.BuildConfig(src=proj / "data", size=(40,), out=str(proj / "shards" / "40"), workers=0))
    before = snapshot(proj.parent)
    real_mkdtemp, calls = tempfile.mkdtemp, []

    def second_fails(*args, **kwargs):
        calls.append(kwargs.get("dir"))
        if len(calls) == 2:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(kwargs.get("dir")))
        return real_mkdtemp(*args, **kwargs)

    monkeypatch.setattr("ddpm_data.atomic.tempfile.mkdtemp", second_fails)
    code, output = run("build", "--src", proj / "data", "--size", "32,40", "--out", proj / "shards" / "{size}",
                       "--workers", "0", "--overwrite", "--margin", "0")
    assert code == 2 and "Permission denied" in one_error(output)
    assert snapshot(proj.parent) == before
