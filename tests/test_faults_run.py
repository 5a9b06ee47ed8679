"""A careless user against `ddpm-train`, `ddpm-sample` and the one error path of the four apps.

Every refused or failed command must exit with its status (2 bad input, 1 diverged, 130/143 a
signal), print one `error: ...` line naming the file or flag and the fix, never a traceback, and
leave what was there before byte-identical. Runs are 16 px, the tiny preset, a few CPU steps.
"""
from __future__ import annotations

import errno
import fcntl
import importlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import cli
from conftest import build_shards, write_noise_folder
from ddpm_model import checkpoint as ckpt

FAST = ["--preset", "tiny", "--model-channels", "16", "--num-timesteps", "100", "--batch-size", "4",
        "--warmup-steps", "2", "--lr", "1e-3", "--sample-steps", "2", "--samples-per-class", "1",
        "--log-every", "1", "--val-every", "3", "--checkpoint-every", "3", "--sample-every", "0",
        "--no-progress", "--device", "cpu"]
CLASSES = {"abnormal": 10, "normal": 14}
BIN = Path(sys.executable).parent


# -- helpers --------------------------------------------------------------------------------------

def make_shards(root: Path, counts: dict[str, int] = CLASSES, overwrite: bool = False) -> Path:
    """Shards of seeded noise images at `root/shards/16`, built (again, with `overwrite`) from `counts`."""
    src = root / "src"
    shutil.rmtree(src, ignore_errors=True)
    write_noise_folder(src, counts)
    out = root / "shards" / "16"
    if overwrite:
        shutil.rmtree(out)
    return build_shards(src, out)


def invoke(app, *args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(app, *args: str | Path):
    result = invoke(app, *args)
    assert result.exit_code == 0, result.output
    return result


def refused(result, code: int, *needles: str) -> str:
    """The command failed as designed: `code`, one error line holding `needles`, no traceback."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not an uncaught error
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes), to prove a command changed nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def train_run(shards: Path, run: Path, steps: int = 3, *extra: str | Path):
    return ok(cli.train_app, "--shards", shards, "--out", run, "--max-steps", str(steps), *FAST, *extra)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory) -> Path:
    """A finished 6-step run: step-00000003.pt, step-00000006.pt, best.pt. Copy it before damaging it."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train_run(shards, run, 6)
    return run


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


# -- the run is tied to its data ------------------------------------------------------------------

@pytest.mark.parametrize("counts, needles", [
    ({"lesion": 10, "normal": 14}, ["added lesion", "removed abnormal", "rebuild the shards"]),
    ({**CLASSES, "other": 6}, ["added other", "cannot continue on these shards"]),
], ids=["class-renamed", "class-added"])
def test_resume_refuses_shards_whose_classes_changed(tmp_path, counts, needles):
    data = make_shards(tmp_path)
    run = tmp_path / "run"
    train_run(data, run)
    make_shards(tmp_path, counts, overwrite=True)  # the class folders changed and were rebuilt in place
    before = snapshot(run)
    for extra in ([], ["--allow-new-data"]):  # the flag takes new images, never other classes
        refused(invoke(cli.train_app, "--out", run, "--resume", "--max-steps", "4", *extra), 2, *needles)
    assert snapshot(run) == before


def test_new_images_of_the_same_classes_need_allow_new_data(tmp_path):
    data = make_shards(tmp_path)
    run = tmp_path / "run"
    train_run(data, run)
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)  # the same shards in another folder are the same data
    ok(cli.train_app, "--out", run, "--resume", "--shards", moved, "--max-steps", "4", "--no-progress")
    make_shards(tmp_path, {"abnormal": 12, "normal": 18}, overwrite=True)
    before = snapshot(run)
    refused(invoke(cli.train_app, "--out", run, "--resume", "--shards", data, "--max-steps", "5"), 2,
            "is not the data", "train", "--allow-new-data")
    assert snapshot(run) == before
    result = ok(cli.train_app, "--out", run, "--resume", "--shards", data, "--max-steps", "5", "--allow-new-data",
                "--no-progress")
    assert "continuing on new data" in result.output and "finished at step 5" in result.output
    record = json.loads((run / "config.json").read_text())["data"]
    assert record["counts"]["train"] == json.loads((data / "manifest.json").read_text())["counts"]["train"]
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(run))["data"]["id"] == record["id"]


def test_resume_from_another_working_directory_after_a_relative_shards(shards, tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    shutil.copytree(shards, tmp_path / "a" / "shards16")
    monkeypatch.chdir(tmp_path / "a")
    ok(cli.train_app, "--shards", "shards16", "--out", "runs/x", "--max-steps", "3", *FAST)
    saved = json.loads((tmp_path / "a" / "runs" / "x" / "config.json").read_text())["run"]
    assert Path(saved["shards"]).is_absolute() and Path(saved["out"]).is_absolute()
    monkeypatch.chdir(tmp_path)
    result = ok(cli.train_app, "--out", "a/runs/x", "--resume", "--max-steps", "4", "--no-progress")
    assert "finished at step 4" in result.output


# -- one trainer per run folder -------------------------------------------------------------------

def test_a_locked_run_folder_refuses_a_second_trainer(run_copy, shards):
    with open(run_copy / ".lock", "w") as handle:  # what a running trainer holds
        handle.write("pid 4242 on elsewhere since 2026-01-01 00:00:00\n")
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = snapshot(run_copy)
        for args in (["--resume"], ["--shards", shards, "--overwrite", *FAST]):
            refused(invoke(cli.train_app, "--out", run_copy, "--max-steps", "9", *args), 2,
                    "in use by pid 4242 on elsewhere", "choose another --out")
        assert snapshot(run_copy) == before
    ok(cli.train_app, "--out", run_copy, "--resume", "--max-steps", "7", "--no-progress")  # released: free


@pytest.mark.slow
def test_two_trainers_on_one_folder_then_ctrl_c_exits_130(shards, tmp_path):
    run = tmp_path / "run"
    command = [str(BIN / "ddpm-train"), "--shards", str(shards), "--out", str(run), "--max-steps", "100000",
               *FAST, "--checkpoint-every", "100000", "--val-every", "100000"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").is_file() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        config = (run / "config.json").read_bytes()
        second = invoke(cli.train_app, "--shards", shards, "--out", run, "--max-steps", "3", *FAST)
        refused(second, 2, f"in use by pid {first.pid} on ")
        refused(invoke(cli.train_app, "--out", run, "--resume"), 2, f"in use by pid {first.pid}")
        assert (run / "config.json").read_bytes() == config
        first.send_signal(signal.SIGINT)
        output, _ = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 130, output
    assert "stopped by signal; resume with --resume" in output and "Traceback" not in output
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))
    assert state["step"] >= 1 and json.loads((run / "summary.json").read_text())["stop_signal"] == "SIGINT"


# -- a failed start leaves nothing, or only what a retry accepts ----------------------------------

def test_a_start_that_fails_on_the_data_creates_no_run_folder(shards, tmp_path):
    broken = tmp_path / "shards16"
    shutil.copytree(shards, broken)
    (broken / "data.h5").unlink()
    run = tmp_path / "runs" / "x"
    refused(invoke(cli.train_app, "--shards", broken, "--out", run, "--mode", "memory", "--max-steps", "2", *FAST), 2,
            "data.h5")
    assert not run.exists()
    run.mkdir(parents=True)
    (run / ".lock").write_text("pid 1 on lost-race\n")  # all a trainer that lost the race to the lock leaves
    train_run(shards, run, 2)  # the retry, with fixed data, needs no --overwrite


def test_a_run_folder_inside_the_shard_folder_or_around_it_is_refused_up_front(shards, tmp_path):
    copy = tmp_path / "shards16"
    shutil.copytree(shards, copy)
    before = snapshot(copy)
    refused(invoke(cli.train_app, "--shards", copy, "--out", copy / "run", "--max-steps", "2", *FAST), 2,
            f"--out {copy / 'run'}: lies inside the shard folder {copy}")
    refused(invoke(cli.train_app, "--shards", copy, "--out", tmp_path, "--max-steps", "2", *FAST), 2,
            f"--out {tmp_path}: holds the shard folder {copy}")
    assert snapshot(copy) == before


def test_a_start_that_fails_before_its_first_checkpoint_is_removed(shards, tmp_path, monkeypatch):
    def no_space(state, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(ckpt, "save_checkpoint", no_space)
    run = tmp_path / "runs" / "x"
    refused(invoke(cli.train_app, "--shards", shards, "--out", run, "--max-steps", "3", *FAST), 2,
            "checkpoints/best.pt: no space left on the device; free some space")
    assert not run.exists() and (tmp_path / "runs").is_dir()


def fail_start(run: Path) -> None:
    """Leave what a start killed before its first checkpoint left: config.json and a few metrics."""
    shutil.rmtree(run / "checkpoints")
    (run / "summary.json").unlink()


def test_a_folder_left_by_an_old_failed_start_is_accepted_by_retry_and_resume(shards, tmp_path):
    run = tmp_path / "run"
    train_run(shards, run, 2)
    fail_start(run)
    ok(cli.train_app, "--out", run, "--resume", "--max-steps", "2", "--no-progress")
    assert ckpt.latest_checkpoint(run).name == "step-00000002.pt"
    fail_start(run)
    train_run(shards, run, 2)
    assert ckpt.latest_checkpoint(run).name == "step-00000002.pt"
    shutil.rmtree(run / "checkpoints")  # a run that trained (summary.json) keeps its record
    before = snapshot(run)
    refused(invoke(cli.train_app, "--shards", shards, "--out", run, "--max-steps", "2", *FAST), 2, "--overwrite")
    refused(invoke(cli.train_app, "--out", run, "--resume"), 2, "no checkpoint to resume from")
    assert snapshot(run) == before


# -- damaged checkpoints --------------------------------------------------------------------------

def test_resume_falls_back_over_a_truncated_latest_checkpoint(run_copy):
    latest = ckpt.step_path(run_copy, 6)
    latest.write_bytes(latest.read_bytes()[:1000])
    result = ok(cli.train_app, "--out", run_copy, "--resume", "--max-steps", "7", "--no-progress")
    assert "skipped" in result.output and "step-00000006.pt: not a readable checkpoint" in result.output
    assert "resumed from" in result.output and "step-00000003.pt at step 3" in result.output
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(run_copy))["step"] == 7


def test_resume_refuses_another_img_size(run_copy):
    before = snapshot(run_copy)
    refused(invoke(cli.train_app, "--out", run_copy, "--resume", "--img-size", "48", "--max-steps", "7"), 2,
            "--img-size 48 (the run has 16)")
    assert snapshot(run_copy) == before
    ok(cli.train_app, "--out", run_copy, "--resume", "--img-size", "16", "--max-steps", "7", "--no-progress")


def test_resume_refuses_to_change_the_quality_scores_rule(run_copy):
    before = snapshot(run_copy)
    refused(invoke(cli.train_app, "--out", run_copy, "--resume", "--no-quality-classifier", "--max-steps", "7"), 2,
            "--no-quality-classifier (the run has --quality-classifier)")
    assert snapshot(run_copy) == before


def test_resume_warns_about_a_damaged_best_checkpoint_and_writes_it_again(run_copy):
    best = run_copy / "checkpoints" / "best.pt"
    best.write_bytes(b"damaged")
    result = ok(cli.train_app, "--out", run_copy, "--resume", "--max-steps", "7", "--no-progress")
    assert "best.pt: not a readable checkpoint" in result.output and "writes it again" in result.output
    assert ckpt.load_checkpoint(best)["step"] == 7  # the final validation replaced it, though no better than the old
    assert "ddpm-sample refuses it, sample" not in result.output  # nothing damaged at the end


def test_finishing_with_a_damaged_best_checkpoint_warns(run_copy):
    best = run_copy / "checkpoints" / "best-quality.pt"
    best.write_bytes(b"damaged")
    result = ok(cli.train_app, "--out", run_copy, "--resume", "--max-steps", "7", "--quality-every", "0",
                "--no-progress")
    assert result.output.rstrip().count("best-quality.pt: not a readable checkpoint") == 2  # resuming and finishing
    assert "ddpm-sample refuses it" in result.output


def test_no_usable_checkpoint_is_one_line_naming_each_file(run_copy):
    for path in ckpt.candidates(run_copy):
        path.write_bytes(b"")
    before = snapshot(run_copy)
    refused(invoke(cli.train_app, "--out", run_copy, "--resume", "--max-steps", "9"), 2,
            "no usable checkpoint", "step-00000006.pt", "step-00000003.pt", "best.pt", "--overwrite")
    assert snapshot(run_copy) == before


def test_sample_accepts_a_run_folder_with_only_best_pt_or_a_damaged_latest(run_copy, tmp_path):
    ckpt.step_path(run_copy, 6).write_bytes(b"truncated")
    result = ok(cli.sample_app, "--checkpoint", run_copy, "--n", "1", "--steps", "2", "--out", tmp_path / "a",
                "--device", "cpu")
    assert "skipped" in result.stderr and (tmp_path / "a" / "normal" / "0000.png").is_file()
    for path in ckpt.step_checkpoints(run_copy):
        path.unlink()
    ok(cli.sample_app, "--checkpoint", run_copy, "--n", "1", "--steps", "2", "--out", tmp_path / "b", "--device", "cpu")
    assert (tmp_path / "b" / "abnormal" / "0000.png").is_file()


# -- every other way a command used to end in a traceback -----------------------------------------

@pytest.mark.parametrize("path, value, needle", [
    ("model.unet", 5, None),
    ("model", None, None),
    ("run.model.overrides.model_channels", "x", "run.model"),
    ("classes", 3, "'classes' must be a list"),
    ("run.train.keep", -1, "--keep"),
    ("run.reader.mode", "disk", "run.reader.mode"),
])
def test_malformed_config_json_values(run_copy, path, value, needle):
    document = json.loads((run_copy / "config.json").read_text())
    node = document
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    (run_copy / "config.json").write_text(json.dumps(document))
    before = snapshot(run_copy)
    result = invoke(cli.train_app, "--out", run_copy, "--resume", "--max-steps", "7", "--no-progress",
                    "--model-channels", "16")
    if needle is None:  # a part only --resume's comparison reads: a wrong value there is harmless
        assert result.exit_code == 0, result.output
        return
    refused(result, 2, "config.json", needle)
    assert snapshot(run_copy) == before


def test_unparseable_config_json(run_copy):
    (run_copy / "config.json").write_text('{"run": ')
    refused(invoke(cli.train_app, "--out", run_copy, "--resume"), 2, "config.json: unreadable", "another --out")


@pytest.mark.parametrize("device", ["foo", "cuda:99" if torch.cuda.is_available() else "cuda"])
def test_bad_device_is_one_line(shards, tmp_path, device):
    for app, args in ((cli.train_app, ["--shards", shards, "--out", tmp_path / "run", "--max-steps", "1"]),
                      (cli.sample_app, ["--checkpoint", tmp_path, "--out", tmp_path / "s"])):
        refused(invoke(app, *args, "--device", device), 2, f"--device: {device!r}")
    assert not (tmp_path / "run").exists()


def test_a_path_through_a_file_is_one_line(shards, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    refused(invoke(cli.train_app, "--shards", shards, "--out", tmp_path / "file" / "run", "--max-steps", "1", *FAST),
            2, "file/run: a part of the path is not a folder; check the path")


ERRORS = {
    "ENOSPC": (OSError(errno.ENOSPC, "No space left on device", "/x/out.png"), "/x/out.png: no space left"),
    "EROFS": (OSError(errno.EROFS, "Read-only file system", "/x/out"), "/x/out: read-only filesystem; write to"),
    "EACCES": (PermissionError(errno.EACCES, "Permission denied", "/x/out"), "/x/out: permission denied; check"),
    "EISDIR": (IsADirectoryError(errno.EISDIR, "Is a directory", "/x/out.png"), "/x/out.png: is a folder; give a file"),
    "ENOSPC-no-name": (OSError(errno.ENOSPC, "No space left on device"), "error: no space left on the device"),
    "pickle": (pickle.UnpicklingError("Weights only load failed"), "not a readable torch file (Weights only"),
    "zip": (RuntimeError("PytorchStreamReader failed reading zip archive"), "not a readable torch file (Pytorch"),
    "badzip": (zipfile.BadZipFile("File is not a zip file"), "not a readable torch file"),
    "json": (json.JSONDecodeError("Expecting value", "{", 1), "malformed JSON (Expecting value"),
    "oom": (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out of memory (CUDA out of"),
    "value": (ValueError("--flag: bad; use another"), "error: --flag: bad; use another"),
}
COMMANDS = {  # app, arguments, the module and function the command hands its work to
    "ddpm-data stats": (cli.data_app, ["stats", "."], ("ddpm_data.stats", "collect_stats")),
    "ddpm-train": (cli.train_app, ["--shards", "."], ("ddpm_model.run", "run_training")),
    "ddpm-sample": (cli.sample_app, ["--checkpoint", ".", "--out", "."], ("ddpm_model.sample", "sample_to_folder")),
    "ddpm-eval": (cli.eval_app, ["--real", ".", "--samples", "."], ("ddpm_eval.evaluate", "evaluate")),
}


def replace(monkeypatch, target: tuple[str, str], function) -> None:
    module, name = target
    monkeypatch.setattr(importlib.import_module(module), name, function)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("error", ERRORS)
def test_every_command_turns_user_errors_into_one_line(monkeypatch, command, error):
    app, args, target = COMMANDS[command]
    exception, needle = ERRORS[error]

    def raise_it(*args, **kwargs):
        raise exception

    replace(monkeypatch, target, raise_it)
    refused(invoke(app, *args), 2, needle.removeprefix("error: "))


@pytest.mark.parametrize("command", COMMANDS)
def test_ctrl_c_exits_130_saying_what_was_kept(monkeypatch, command):
    app, args, target = COMMANDS[command]

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    replace(monkeypatch, target, interrupt)
    line = refused(invoke(app, *args), 130, "interrupted; ")
    assert "kept" in line or "keep" in line or "complete" in line


def test_a_bug_keeps_its_traceback(monkeypatch):
    def bug(*args, **kwargs):
        raise AttributeError("'NoneType' object has no attribute 'shape'")

    monkeypatch.setattr("ddpm_model.run.run_training", bug)
    result = invoke(cli.train_app, "--shards", ".")
    assert isinstance(result.exception, AttributeError)  # not dressed up as a user error


def test_a_diverged_run_exits_1(monkeypatch):
    from ddpm_model.train import TrainingDiverged

    def diverge(*args, **kwargs):
        raise TrainingDiverged("loss or gradient became nan at step 5; stopped without saving")

    monkeypatch.setattr("ddpm_model.run.run_training", diverge)
    refused(invoke(cli.train_app, "--shards", "."), 1, "became nan at step 5")


@pytest.mark.parametrize("app, args", [
    (cli.train_app, ["--lr", "nan"]), (cli.train_app, ["--lr", "inf"]), (cli.train_app, ["--grad-clip", "nan"]),
    (cli.train_app, ["--ema-decay", "-inf"]), (cli.train_app, ["--hflip", "nan"]),
    (cli.sample_app, ["--checkpoint", ".", "--out", ".", "--guidance", "inf"]),
    (cli.eval_app, ["--real", ".", "--samples", ".", "--blur-sigma", "nan"]),
    (cli.data_app, ["build", "--val-fraction", "nan"]),
])
def test_non_finite_float_options_are_refused_naming_the_flag(tmp_path, app, args):
    flag, value = args[-2:]
    refused(invoke(app, *args), 2, f"{flag}: {value} is not a finite number")


@pytest.mark.parametrize("app, args, needle", [
    (cli.train_app, ["--shards", ".", "--weight-decay", "-1"], "--weight-decay: -1.0 must be >= 0"),
    (cli.train_app, ["--shards", ".", "--sample-eta", "-0.5"], "--sample-eta: -0.5 must be >= 0"),
    (cli.train_app, ["--shards", ".", "--sample-guidance", "-2"], "--sample-guidance: -2.0 must be >= 0"),
    (cli.sample_app, ["--checkpoint", ".", "--out", ".", "--eta", "-1"], "--eta: -1.0 must be >= 0"),
])
def test_negative_float_options_are_refused_naming_the_flag(app, args, needle):
    refused(invoke(app, *args), 2, needle)


def test_sample_interrupted_keeps_the_previous_images(trained, tmp_path, monkeypatch):
    out = tmp_path / "samples"
    ok(cli.sample_app, "--checkpoint", trained, "--n", "2", "--steps", "2", "--out", out, "--device", "cpu")
    before = snapshot(out)
    import ddpm_model.sample as sample

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample, "generate", interrupt)
    refused(invoke(cli.sample_app, "--checkpoint", trained, "--n", "2", "--steps", "2", "--out", out, "--overwrite",
                   "--device", "cpu"), 130, "interrupted; ")
    assert snapshot(out) == before


# -- regressions: what already behaved well -------------------------------------------------------

class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"format_version": 1, "step": 1, "model_config": {}, "classes": [], "model": Payload()}, "evil.pt")
    refused(invoke(cli.sample_app, "--checkpoint", "evil.pt", "--out", "s"), 2, "evil.pt: not a readable checkpoint")
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "s").exists()


def test_a_raw_pickle_checkpoint_is_refused_in_one_line_without_torchs_warning(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("raw.pt").write_bytes(pickle.dumps({"format_version": 1, "step": 1}, protocol=4))
    result = invoke(cli.sample_app, "--checkpoint", "raw.pt", "--out", "s")
    refused(result, 2, "raw.pt: not a readable checkpoint", "refused unread")
    assert "UserWarning" not in result.stderr and "warning" not in result.stderr.lower()
    assert "weights_only" not in result.stderr


KILLED_WRITER = textwrap.dedent("""
    import sys, time, torch
    from pathlib import Path
    from ddpm_model import checkpoint as ckpt
    from ddpm_model.runfolder import RunLock

    run = Path(sys.argv[1])
    def slow_save(obj, handle):
        handle.write(b"PK" + bytes(4096))
        handle.flush()
        (run / "writing").touch()
        time.sleep(120)
    torch.save = slow_save
    with RunLock(run):
        ckpt.save_checkpoint({"step": 9}, ckpt.step_path(run, 9))
""")


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_is_harmless(run_copy, tmp_path):
    latest = ckpt.step_path(run_copy, 6).read_bytes()
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(run_copy)], env=_env())
    try:
        deadline = time.monotonic() + 120
        while not (run_copy / "writing").exists() and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (run_copy / "writing").exists()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
    (run_copy / "writing").unlink()
    assert ckpt.step_path(run_copy, 6).read_bytes() == latest and not ckpt.step_path(run_copy, 9).exists()
    result = ok(cli.train_app, "--out", run_copy, "--resume", "--max-steps", "7", "--no-progress")  # lock released
    assert "step-00000006.pt at step 6" in result.output
    ok(cli.sample_app, "--checkpoint", run_copy, "--n", "1", "--steps", "2", "--out", tmp_path / "s", "--device", "cpu")
