"""`ddpm-train` and `ddpm-sample` end to end on real shards (16 px, tiny model, a few steps):
dry run, a run folder, stop-and-resume equality, SIGTERM, 2-process gloo DDP, sampling, errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import cli
from ddpm_data.shards import BuildConfig, build
from ddpm_data.synth import SynthConfig, synthesize
from ddpm_model import checkpoint as ckpt

# A ~0.3M-parameter model and a 100-step schedule keep every step well under a second.
FAST = ["--preset", "tiny", "--model-channels", "16", "--num-timesteps", "100", "--batch-size", "4",
        "--warmup-steps", "2", "--lr", "1e-3", "--sample-steps", "2", "--samples-per-class", "2",
        "--log-every", "2", "--val-every", "3", "--checkpoint-every", "3", "--sample-every", "0",
        "--no-progress", "--device", "cpu"]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    synthesize(SynthConfig(out=root / "src", normal=14, abnormal=8, size=32, seed=0))
    build(BuildConfig(src=root / "src", size=(16,), out=str(root / "shards" / "{size}"), workers=0))
    return root / "shards" / "16"


def invoke(app, *args: str | Path):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


def train_ok(*args: str | Path):
    result = invoke(cli.train_app, *args)
    assert result.exit_code == 0, result.output
    return result


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))
    return {**state["model"], **{f"ema.{k}": v for k, v in state["ema"]["module"].items()}}


def test_dry_run_prints_the_resolved_config_and_writes_nothing(shards, tmp_path):
    result = train_ok("--shards", shards, "--out", tmp_path / "run", "--dry-run", "--data-normalization",
                      "--channel-multipliers", "1,2", "--use-attention", "0,1", "--model-channels", "32",
                      "--num-res-blocks", "2", "--upsample", "bilinear")
    document = json.loads(result.output[: result.output.rindex("}") + 1])
    unet = document["model"]["unet"]
    assert unet["channel_multipliers"] == [1, 2] and unet["use_attention"] == [False, True]
    assert unet["image_size"] == 16 and document["classes"] == ["abnormal", "normal"]
    assert unet["aug_dim"] == 9  # conditioned on the augmentation parameters
    diffusion = document["model"]["diffusion"]
    assert {k: diffusion[k] for k in ("num_timesteps", "beta_schedule", "prediction", "class_dropout")} == {
        "num_timesteps": 1000, "beta_schedule": "cosine", "prediction": "v", "class_dropout": 0.1}
    # data normalisation: the manifest's train statistics in [-1, 1] units
    manifest = json.loads((shards / "manifest.json").read_text())
    assert diffusion["data_mean"] == pytest.approx([2 * m - 1 for m in manifest["mean"]], abs=1e-6)
    assert diffusion["data_std"] == pytest.approx([2 * s for s in manifest["std"]], abs=1e-6)
    # only the options given are recorded, as overrides of the preset
    assert document["run"]["model"] == {"preset": None, "aug_conditioning": True, "data_normalization": True,
                                        "overrides": {"channel_multipliers": [1, 2], "use_attention": [False, True],
                                                      "model_channels": 32, "num_res_blocks": 2, "upsample": "bilinear"}}
    assert f"parameters: {document['parameters']:,}" in result.output
    assert not (tmp_path / "run").exists()


def test_zero_init_flag_reaches_the_unet_config(shards, tmp_path):
    def unet(*flags: str) -> dict:
        result = train_ok("--shards", shards, "--out", tmp_path / "run", "--dry-run", *flags)
        return json.loads(result.output[: result.output.rindex("}") + 1])["model"]["unet"]
    assert unet()["zero_init"] is True
    assert unet("--no-zero-init")["zero_init"] is False


def test_noise_distribution_flags_reach_the_diffusion_config(shards, tmp_path):
    result = train_ok("--shards", shards, "--out", tmp_path / "run", "--dry-run", "--noise-distribution", "lognormal",
                      "--lognormal-mean", "-1.0", "--lognormal-std", "1.5")
    document = json.loads(result.output[: result.output.rindex("}") + 1])
    diffusion = document["model"]["diffusion"]
    assert (diffusion["noise_distribution"], diffusion["lognormal_mean"], diffusion["lognormal_std"]) == (
        "lognormal", -1.0, 1.5)
    assert document["run"]["model"]["overrides"] == {"noise_distribution": "lognormal", "lognormal_mean": -1.0,
                                                     "lognormal_std": 1.5}
    result = invoke(cli.train_app, "--shards", shards, "--out", tmp_path / "bad", "--noise-distribution",
                    "lognormal", "--lognormal-std", "0")
    assert result.exit_code == 2 and "lognormal_std 0.0: finite, std > 0" in result.output
    assert not (tmp_path / "bad").exists()


def test_short_run_writes_the_run_folder_and_resumes_exactly(shards, tmp_path):
    straight = tmp_path / "straight"
    result = train_ok("--shards", shards, "--out", straight, "--max-steps", "6", *FAST)
    assert "finished at step 6" in result.output
    for name in ("config.json", "metrics.jsonl", "loss.png", "summary.json", "checkpoints/best.pt",
                 "checkpoints/step-00000006.pt", "samples/step-00000006.png"):
        assert (straight / name).is_file(), name
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "images", "loss", "lr", "img_per_s", "data_wait"} <= set(records[0])
    assert [r["step"] for r in records if "val_loss" in r] == [3, 6]

    split = tmp_path / "split"
    train_ok("--shards", shards, "--out", split, "--max-steps", "3", *FAST)
    result = train_ok("--out", split, "--resume", "--max-steps", "6", "--no-progress")
    assert "resumed from" in result.output and "finished at step 6" in result.output
    expected, got = final_weights(straight), final_weights(split)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    steps = [json.loads(line)["step"] for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # records after the checkpoint were dropped, not duplicated
    saved = json.loads((split / "config.json").read_text())["run"]["train"]
    assert saved["max_steps"] == 6  # the next --resume continues with the extended duration


def test_resume_takes_new_training_options_but_not_new_data_or_model(shards, tmp_path):
    run = tmp_path / "run"
    train_ok("--shards", shards, "--out", run, "--max-steps", "2", *FAST)
    result = invoke(cli.train_app, "--out", run, "--resume", "--batch-size", "8")
    assert result.exit_code == 2 and "--batch-size 8 (the run has 4)" in result.output
    result = invoke(cli.train_app, "--out", run, "--resume", "--model-channels", "32", "--balance", "balanced",
                    "--degrees", "5")
    assert result.exit_code == 2
    for message in ("--model-channels 32 (the run has 16)", "--balance balanced (the run has sqrt)",
                    "--degrees 5.0 (the run has 10.0)"):
        assert message in result.output
    result = train_ok("--out", run, "--resume", "--max-steps", "3", "--lr", "5e-4", "--no-progress")
    assert "resumed from" in result.output
    saved = json.loads((run / "config.json").read_text())["run"]["train"]
    assert saved["lr"] == 5e-4 and saved["max_steps"] == 3 and saved["batch_size"] == 4


def test_existing_run_folder_needs_resume_or_overwrite(shards, tmp_path):
    run = tmp_path / "run"
    train_ok("--shards", shards, "--out", run, "--max-steps", "1", *FAST)
    result = invoke(cli.train_app, "--shards", shards, "--out", run, "--max-steps", "1", *FAST)
    assert result.exit_code == 2 and "exists; pass --resume to continue it or --overwrite" in result.output
    train_ok("--shards", shards, "--out", run, "--max-steps", "1", "--overwrite", *FAST)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    result = invoke(cli.train_app, "--shards", shards, "--out", tmp_path / "notes", "--overwrite", *FAST)
    assert result.exit_code == 2 and "not a run folder" in result.output
    assert (tmp_path / "notes" / "keep.txt").is_file()


@pytest.mark.parametrize("args, message", [
    (["--shards", "{missing}"], "manifest.json: folder missing; run 'ddpm-data build"),
    (["--out", "{tmp}/nothing", "--resume"], "config.json: missing; --out is not a run folder"),
    ([], "--shards: required"),
    (["--shards", "{shards}", "--preset", "huge"], "preset: 'huge' unknown; valid: 40, 96, 128, 256, tiny"),
    (["--shards", "{shards}", "--channel-multipliers", "1,2,x"], "--channel-multipliers '1,2,x': expected comma-separated integers"),
    (["--shards", "{shards}", "--channel-multipliers", "1,2", "--use-attention", "0,0,1"], "use_attention: 3 flags"),
    (["--shards", "{shards}", "--precision", "fp8"], "'fp8' is not one of 'auto'"),
    (["--shards", "{shards}", "--mode", "disk"], "'disk' is not one of 'auto', 'stream', 'memory'"),
    (["--shards", "{shards}", "--balance", "even"], "--balance 'even': unknown"),
    (["--shards", "{shards}", "--batch-size", "0"], "--batch-size"),
])
def test_bad_training_input_is_one_clear_line(shards, tmp_path, args, message):
    filled = [a.format(missing=tmp_path / "none", tmp=tmp_path, shards=shards) for a in args]
    result = invoke(cli.train_app, *filled, "--dry-run")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_sample_from_a_run_folder_and_its_errors(shards, tmp_path):
    run = tmp_path / "run"
    train_ok("--shards", shards, "--out", run, "--max-steps", "2", *FAST)
    out = tmp_path / "samples"
    result = invoke(cli.sample_app, "--checkpoint", run, "--class", "abnormal", "--n", "3", "--steps", "2",
                    "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "abnormal").iterdir()) == ["0000.png", "0001.png", "0002.png"]
    assert (out / "abnormal-grid.png").is_file()

    result = invoke(cli.sample_app, "--checkpoint", run, "--class", "tumour", "--out", out)
    assert result.exit_code == 2 and "valid: abnormal, normal" in result.output
    result = invoke(cli.sample_app, "--checkpoint", run, "--sampler", "euler", "--out", out)
    assert result.exit_code == 2 and "error: --sampler: 'euler' is not one of 'ddpm', 'ddim'" in result.output
    broken = tmp_path / "broken.pt"
    broken.write_bytes(ckpt.latest_checkpoint(run).read_bytes()[:500])
    result = invoke(cli.sample_app, "--checkpoint", broken, "--out", out)
    assert result.exit_code == 2 and "not a readable checkpoint" in result.output
    torch.save({"format_version": 2}, tmp_path / "v2.pt")
    result = invoke(cli.sample_app, "--checkpoint", tmp_path / "v2.pt", "--out", out)
    assert result.exit_code == 2 and "format version 2 is incompatible" in result.output


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_143(shards, tmp_path):
    run = tmp_path / "run"
    command = [str(BIN / "ddpm-train"), "--shards", str(shards), "--out", str(run), "--max-steps", "10000",
               *FAST, "--checkpoint-every", "10000", "--val-every", "10000"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "stopped by signal; resume with --resume" in output and "Traceback" not in output
    latest = ckpt.latest_checkpoint(run)
    state = ckpt.load_checkpoint(latest)
    assert state["step"] >= 2 and latest.name == f"step-{state['step']:08d}.pt"
    assert not list((run / "checkpoints").glob(".*.tmp"))


@pytest.mark.slow
def test_two_process_gloo_run(shards, tmp_path):
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--no-python", str(BIN / "ddpm-train"), "--shards", str(shards), "--out", str(run),
               "--max-steps", "4", *FAST]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("finished at step 4") == 1  # rank 0 reports, rank 1 stays quiet
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))
    assert state["world_size"] == 2 and state["images_seen"] == 4 * 4 * 2
    assert [r["rank"] for r in state["reader"]] == [0, 1]
    assert [r["delivered"] for r in state["reader"]] == [4, 4]  # each rank read its own batches
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("extra", [[], ["--compile"], ["--precision", "fp16"]], ids=["bf16", "compile", "fp16"])
def test_cuda_run_with_autocast_channels_last(shards, tmp_path, extra):
    run = tmp_path / "cuda"
    args = [a if a != "cpu" else "cuda" for a in FAST]
    result = train_ok("--shards", shards, "--out", run, "--max-steps", "4", *args, *extra)
    assert "finished at step 4" in result.output
    config = json.loads((run / "config.json").read_text())
    assert config["device"].startswith("cuda")
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))  # CUDA tensors load on the CPU
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    result = invoke(cli.sample_app, "--checkpoint", run, "--n", "2", "--steps", "2", "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output


def test_rerunning_the_original_command_with_resume_continues_the_run(shards, tmp_path):
    run = tmp_path / "run"
    original = ["--shards", shards, "--out", run, "--balance", "sqrt", "--degrees", "5", *FAST]
    train_ok(*original, "--max-steps", "2")
    result = train_ok(*original, "--max-steps", "3", "--resume")
    assert "resumed from" in result.output and "finished at step 3" in result.output
    saved = json.loads((run / "config.json").read_text())
    assert saved["run"]["train"]["max_steps"] == 3 and saved["run"]["reader"]["balance"]["mode"] == "sqrt"


def test_img_size_picks_or_checks_the_shard_folder(shards, tmp_path, monkeypatch):
    result = invoke(cli.train_app, "--shards", shards, "--img-size", "32", "--dry-run", *FAST)
    assert result.exit_code == 2 and "holds 16 px shards; pass --shards shards/32" in result.output
    monkeypatch.chdir(tmp_path)
    result = invoke(cli.train_app, "--img-size", "96", "--dry-run", *FAST)
    assert result.exit_code == 2 and "shards/96/manifest.json missing; build it first with 'ddpm-data build" in result.output
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "16").symlink_to(shards)
    result = invoke(cli.train_app, "--img-size", "16", "--dry-run", *FAST)
    assert result.exit_code == 0, result.output


def test_dry_run_reports_step_memory_and_the_presets_batch_size(shards, tmp_path):
    def dry(*extra: str) -> tuple[dict, str]:
        result = train_ok("--shards", shards, "--out", tmp_path / "run", "--dry-run", "--preset", "tiny", *extra)
        return json.loads(result.output[: result.output.rindex("}") + 1]), result.output.splitlines()[-1]

    document, memory = dry()
    assert document["run"]["train"]["batch_size"] == 16  # tiny's recommended batch, not a global default
    assert memory.startswith("one training step at batch 16 (fp32): ~") and "estimated" in memory
    document, memory = dry("--batch-size", "3", "--gradient-checkpointing")
    assert document["run"]["train"]["batch_size"] == 3 and "gradient checkpointing" in memory


def test_a_run_scores_its_samples_and_keeps_the_best_quality_checkpoint(tmp_path):
    synthesize(SynthConfig(out=tmp_path / "src", normal=10, abnormal=8, size=32, seed=1))
    (manifest,) = build(BuildConfig(src=tmp_path / "src", size=(16,), out=str(tmp_path / "shards"), workers=0,
                                    val_fraction=0.5))
    assert min(manifest.counts["val"].values()) >= 2  # the score needs two val images per class
    run = tmp_path / "run"
    train_ok("--shards", tmp_path / "shards", "--out", run, "--max-steps", "4", "--quality-every", "2",
             "--quality-samples", "2", *FAST)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scores = [r for r in records if "quality_swd" in r]
    assert [r["step"] for r in scores] == [2, 4]
    assert all(set(r["quality_accuracy_classes"]) == {"abnormal", "normal"} for r in scores)
    assert (run / "checkpoints" / "best-quality.pt").is_file()
    cached = list((tmp_path / "shards").glob("eval-classifier-*.pt"))  # ddpm-eval's classifier, trained once
    assert len(cached) == 1
    train_ok("--shards", tmp_path / "shards", "--out", tmp_path / "plain", "--max-steps", "2", "--quality-every", "2",
             "--quality-samples", "2", "--no-quality-classifier", *FAST)
    plain = [json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert [r["quality_score"] == r["quality_swd_worst"] and "quality_accuracy_classes" not in r
            for r in plain if "quality_swd" in r] == [True]
    from ddpm_eval.classifier import ClassifierConfig, cache_path
    from ddpm_eval.evaluate import EvalConfig
    from ddpm_eval.images import load_real

    shared = EvalConfig(real=tmp_path / "shards", samples=tmp_path / "samples").classifier_config()  # ddpm-eval's defaults
    assert shared == ClassifierConfig() and cached == [cache_path(load_real(tmp_path / "shards"), shared)]


def test_an_end_score_off_the_schedule_is_taken_only_when_cheap_and_the_classifier_only_when_scored(tmp_path):
    synthesize(SynthConfig(out=tmp_path / "src", normal=10, abnormal=8, size=32, seed=1))
    build(BuildConfig(src=tmp_path / "src", size=(16,), out=str(tmp_path / "shards"), workers=0, val_fraction=0.5))
    costly = invoke(cli.train_app, "--shards", tmp_path / "shards", "--out", tmp_path / "costly", "--max-steps", "3",
                    "--quality-every", "1000", "--quality-samples", "2", *FAST, "--sample-steps", "20")
    assert costly.exit_code == 0, costly.output
    # 2 classes x 2 images x 20 steps x 2 (guidance) = 160 evaluations against 3 steps x batch x 3
    assert "no quality score at the end (step 3)" in costly.output and "--quality-every 3" in costly.output
    records = [json.loads(line) for line in (tmp_path / "costly" / "metrics.jsonl").read_text().splitlines()]
    assert not any("quality_swd" in record for record in records)
    assert not list((tmp_path / "shards").glob("eval-classifier-*.pt"))  # never scored: never fitted
    cheap = invoke(cli.train_app, "--shards", tmp_path / "shards", "--out", tmp_path / "cheap", "--max-steps", "3",
                   "--quality-every", "1000", "--quality-samples", "2", *FAST, "--sample-steps", "1",
                   "--sample-guidance", "1", "--batch-size", "8")
    assert cheap.exit_code == 0, cheap.output  # 4 evaluations against 3 x 8 x 3 = 72: 6 %
    records = [json.loads(line) for line in (tmp_path / "cheap" / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records if "quality_swd" in record] == [3]
    assert list((tmp_path / "shards").glob("eval-classifier-*.pt"))


def test_grids_and_scores_draw_with_the_sample_sampler(tmp_path, monkeypatch):
    from ddpm_model.diffusion import DDPM

    synthesize(SynthConfig(out=tmp_path / "src", normal=10, abnormal=8, size=32, seed=1))
    build(BuildConfig(src=tmp_path / "src", size=(16,), out=str(tmp_path / "shards"), workers=0, val_fraction=0.5))
    drawn = []
    original = DDPM.sample

    def spy(self, labels, sampler="ddim", steps=50, **options):
        drawn.append((sampler, steps))
        return original(self, labels, sampler=sampler, steps=steps, **options)

    monkeypatch.setattr(DDPM, "sample", spy)
    train_ok("--shards", tmp_path / "shards", "--out", tmp_path / "run", "--max-steps", "2", "--quality-every", "2",
             "--quality-samples", "2", "--no-quality-classifier", *FAST, "--sample-steps", "3")
    assert drawn == [("dpmpp-2m", 3)]  # the score; the grid reuses its samples
    failed = invoke(cli.train_app, "--shards", tmp_path / "shards", "--out", tmp_path / "eta", "--max-steps", "2",
                    "--sample-eta", "1", *FAST)
    assert failed.exit_code == 2 and "--sample-sampler ddim" in failed.output
