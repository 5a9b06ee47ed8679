"""Shard sets at a URL, against real servers on 127.0.0.1: a plain HTTP server of a built folder,
moto's S3 server, and `pipe:` commands. The same bytes read remotely give the same batches as
locally; a missing, unreadable or cut-off file is one error naming its URL, or skipped."""
from __future__ import annotations

import re

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import cli
from ddpm_data import remote
from ddpm_data.manifest import ManifestError, load_manifest
from ddpm_data.remote import RemoteError, as_location, is_url, join, name_of
from ddpm_data.shardformat import FormatError
from ddpm_data.stream import OnError, ReaderConfig, ShardError, load_split, open_reader
from ddpm_data.verify import verify
from ddpm_model import checkpoint as ckpt
from helpers_remote import http_server, moto_s3, python_http_server

BAD = "train-abnormal-000001.tar"
FAST = ["--preset", "tiny", "--model-channels", "8", "--channel-multipliers", "1,2", "--use-attention", "0,0",
        "--num-timesteps", "100", "--batch-size", "8", "--warmup-steps", "2", "--lr", "1e-3", "--sample-steps", "1",
        "--samples-per-class", "1", "--log-every", "1", "--val-every", "100", "--val-images", "4",
        "--checkpoint-every", "1", "--sample-every", "0", "--no-progress", "--device", "cpu", "--mode", "stream"]


def batches(location, batches: int = 6, **options) -> list[tuple[torch.Tensor, torch.Tensor]]:
    reader = open_reader(location, ReaderConfig(batch_size=8, balance="balanced", seed=4, **options))
    try:
        return [next(reader) for _ in range(batches)]
    finally:
        reader.close()


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def train(*args) -> str:
    result = CliRunner().invoke(cli.train_app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(run))["model"]


# ---------------------------------------------------------------- locations


def test_locations_urls_and_pipe_templates(tmp_path):
    assert is_url("s3://b/x") and is_url("pipe:cat x") and is_url("file:///tmp/x")
    assert not is_url("shards/96") and not is_url(tmp_path)
    assert as_location("shards/96") == Path("shards/96") and as_location("s3://b/96/") == "s3://b/96"
    assert join("https://h/s/96", "manifest.json") == "https://h/s/96/manifest.json"
    assert join("pipe:curl -sf https://h/96", "a.tar") == "pipe:curl -sf https://h/96/a.tar"
    assert join("pipe:aws s3 cp s3://b/96/{} -", "a.tar") == "pipe:aws s3 cp s3://b/96/a.tar -"
    assert name_of("s3://b/shards/96") == "96" and name_of("pipe:aws s3 cp s3://b/96/{} -") == "96"
    with pytest.raises(ValueError, match=r"--shards https://\*\*\*@h/96: the URL holds credentials .* through the environment"):
        as_location("https://user:secret@h/96")


SECRET = "s3cr3t"
WITH_CREDENTIALS = [f"https://reader:{SECRET}@127.0.0.1:9/shards/16", f"https://{SECRET}@127.0.0.1:9/shards/16",
                    f"https://127.0.0.1:9/shards/16?X-Amz-Signature={SECRET}",
                    f"pipe:curl -sf https://127.0.0.1:9/shards/16/{{}}?token={SECRET}"]


def test_redact_hides_user_password_and_query_values_of_every_url_in_a_text():
    text = f"s3://b/x and https://u:{SECRET}@h:9/a?sig={SECRET}&v=1, then pipe:curl https://{SECRET}@h/{{}}"
    assert remote.redact(text) == "s3://b/x and https://***@h:9/a?sig=***&v=***, then pipe:curl https://***@h/{}"
    assert remote.redact("s3://bucket/shards/96") == "s3://bucket/shards/96"
    for error in (RemoteError(WITH_CREDENTIALS[0] + "/a.tar", f"download failed (GET {WITH_CREDENTIALS[2]})"),
                  FormatError(WITH_CREDENTIALS[1] + "/a.tar", "missing")):
        assert SECRET not in str(error) and SECRET not in error.path and SECRET not in error.reason


@pytest.mark.parametrize("url", WITH_CREDENTIALS)
def test_a_url_with_credentials_is_refused_in_one_line_that_does_not_show_them(url, tmp_path):
    """Refused by every command before anything is read or written (config.json, the manifest
    and the logs would keep it), and by the Python API's entry point, load_manifest."""
    commands = [(cli.train_app, ["--shards", url, "--out", tmp_path / "run", *FAST]),
                (cli.data_app, ["stats", url]), (cli.data_app, ["verify", url]), (cli.data_app, ["preview", url]),
                (cli.data_app, ["build", "--src", tmp_path, "--size", "16", "--out", url]),
                (cli.eval_app, ["--real", url, "--samples", tmp_path])]
    for app, args in commands:
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 2, (args, result.output)
        assert isinstance(result.exception, SystemExit), result.exception
        errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "holds credentials" in errors[0] and "environment" in errors[0], result.output
        assert SECRET not in result.output
    assert not (tmp_path / "run").exists()
    with pytest.raises(ManifestError, match="holds credentials") as raised:
        load_manifest(url)
    assert SECRET not in str(raised.value)


# ---------------------------------------------------------------- http


def test_http_set_reads_exactly_as_the_local_folder(tiny_shards):
    with http_server(tiny_shards.parent) as base:
        url = f"{base}/{tiny_shards.name}"
        manifest = load_manifest(url)
        assert manifest.root == url and manifest.is_remote and manifest.sample_checksums
        assert manifest.shards == load_manifest(tiny_shards).shards
        for mode, workers in (("stream", 0), ("stream", 2), ("memory", 0)):
            assert same(batches(url, mode=mode, workers=workers), batches(tiny_shards, mode=mode, workers=workers)), mode
        remote_val, local_val = load_split(url, "val"), load_split(tiny_shards, "val")  # val tars vs data.h5
        assert torch.equal(remote_val[0], local_val[0]) and torch.equal(remote_val[1], local_val[1])
        spread = load_split(url, "train", limit=5)
        assert spread[0].shape[0] == 5 and torch.equal(spread[0], load_split(tiny_shards, "train", limit=5)[0])
        report = verify(url)
        assert report.ok, report.problems
        assert report.samples_checked == 2 * sum(manifest.num_samples(s) for s in ("train", "val"))
        for command in (["stats", url], ["preview", url, "--n", "16", "--json"]):
            result = CliRunner().invoke(cli.data_app, command)
            assert result.exit_code == 0 and "Traceback" not in result.output, result.output


def test_eval_reads_a_url_like_the_local_folder(tiny_shards):
    from ddpm_eval.images import load_real

    with http_server(tiny_shards.parent) as base:
        remote_real = load_real(f"{base}/{tiny_shards.name}")
    local_real = load_real(tiny_shards)
    assert np.array_equal(remote_real.train.images, local_real.train.images)
    assert remote_real.val.names == local_real.val.names and remote_real.manifest_sha256 == local_real.manifest_sha256
    assert remote_real.cache_dir != local_real.cache_dir == local_real.root


def test_a_missing_manifest_says_the_set_is_absent_or_still_uploading(tmp_path):
    (tmp_path / "96").mkdir()
    with http_server(tmp_path) as base:
        with pytest.raises(ManifestError, match=r"96/manifest.json: missing: no shard set there, or its upload "
                                                r"has not finished \(the manifest is written last\)"):
            open_reader(f"{base}/96", ReaderConfig())


def test_a_missing_shard_names_its_url_or_is_skipped(copy_shards):
    shard_dir = copy_shards()
    (shard_dir / BAD).unlink()
    with http_server(shard_dir.parent) as base:
        url, bad_url = f"{base}/{shard_dir.name}", f"{base}/{shard_dir.name}/{BAD}"
        reader = open_reader(url, ReaderConfig(mode="stream", balance="balanced"))  # no request per shard at open
        with pytest.raises(ShardError, match=f"{bad_url}: missing.*--skip-bad-shards") as raised:
            for _ in range(20):
                next(reader)
        assert isinstance(raised.value, ValueError) and "\n" not in str(raised.value)
        reader = open_reader(url, ReaderConfig(mode="stream", balance="balanced", on_error=OnError.skip))
        with pytest.warns(UserWarning, match=f"{BAD}: missing"):
            labels = torch.cat([next(reader)[1] for _ in range(20)])
        assert [entry["path"] for entry in reader.skipped] == [bad_url]
        assert set(labels.tolist()) == {0, 1}


def test_a_cut_off_download_is_retried_then_named_as_an_outage_not_skipped(tiny_shards, monkeypatch):
    """The server closes the connection halfway through the promised body: the network failed,
    not the shard, so --skip-bad-shards does not pass over it."""
    from ddpm_data import transfer

    monkeypatch.setattr(transfer, "RETRY_BACKOFF_S", (0.01,))
    transfer.use(transfer.TransferConfig(retries=1))
    try:
        with http_server(tiny_shards.parent, truncate=(BAD,)) as base:
            bad_url = f"{base}/{tiny_shards.name}/{BAD}"
            reader = open_reader(f"{base}/{tiny_shards.name}",
                                 ReaderConfig(mode="stream", balance="balanced", on_error=OnError.skip))
            with pytest.warns(transfer.RetryWarning, match=f"{BAD}: transfer cut off .*; retry 1 of 1"):
                with pytest.raises(transfer.Unreachable, match=f"^{re.escape(bad_url)}: transfer cut off .*tried 2 "
                                                               f"times.*run the command again"):
                    for _ in range(20):
                        next(reader)
            assert reader.skipped == []
    finally:
        transfer.use(transfer.TransferConfig())


def test_a_sample_failing_its_own_checksum_is_caught_before_the_shard_ends(copy_shards, monkeypatch):
    """Windows of 2 samples: the first window of a 4-sample shard is released on the samples' own
    png_sha256, so a modified PNG byte must be caught there, and the shard skipped."""
    from ddpm_data import stream
    from ddpm_data.shardformat import iter_shard

    monkeypatch.setattr(stream, "SHUFFLE_WINDOW", 2)
    shard_dir = copy_shards()
    (key, members), *_ = iter_shard(shard_dir / BAD)
    data = bytearray((shard_dir / BAD).read_bytes())
    at = data.index(members["png"]) + len(members["png"]) // 2
    data[at] ^= 0xFF
    (shard_dir / BAD).write_bytes(bytes(data))
    reader = open_reader(shard_dir, ReaderConfig(mode="stream", balance="balanced", seed=4, on_error="skip"))
    with pytest.warns(UserWarning, match=f"{BAD}: sample {key}: .png fails its sha256 checksum"):
        delivered = [next(reader) for _ in range(20)]
    assert all(images.shape[0] == 8 for images, _ in delivered)
    assert [entry["path"] for entry in reader.skipped] == [str(shard_dir / BAD)]


def replace_by_another_shard(shard_dir: Path) -> None:
    """The served BAD shard becomes a byte copy of another valid shard of its class: every sample
    passes its own png_sha256, only the file's sha256 tells."""
    (shard_dir / BAD).write_bytes((shard_dir / "train-abnormal-000000.tar").read_bytes())


def test_a_shard_replaced_by_another_is_refused_or_skipped_in_memory_mode_eval_and_preview(copy_shards, tmp_path):
    from ddpm_eval.images import EvalInputError, load_real

    shard_dir = copy_shards()
    replace_by_another_shard(shard_dir)
    with http_server(shard_dir.parent) as base:
        url, bad_url = f"{base}/{shard_dir.name}", f"{base}/{shard_dir.name}/{BAD}"
        checksum = f"{re.escape(bad_url)}: fails its sha256 checksum"
        with pytest.raises(ShardError, match=f"^{checksum}.*--skip-bad-shards") as raised:
            open_reader(url, ReaderConfig(mode="memory", balance="balanced"))
        assert "--mode stream" not in str(raised.value) and "--out" not in str(raised.value)
        with pytest.raises(ShardError, match=checksum):
            load_split(url, "train")
        with pytest.raises(EvalInputError, match=checksum):
            load_real(url, splits=("train",))
        with pytest.warns(UserWarning, match=f"{checksum}.*; skipped"):
            reader = open_reader(url, ReaderConfig(mode="memory", balance="balanced", on_error=OnError.skip))
        assert [entry["path"] for entry in reader.skipped] == [bad_url]
        keys_held = reader.images.shape[0]
        assert keys_held == load_manifest(url).num_samples("train") - 4  # the 4 rows of the bad shard are left out
        assert set(torch.cat([next(reader)[1] for _ in range(4)]).tolist()) == {0, 1}
        previewed = invoke(cli.data_app, "preview", url, "--mode", "memory", "--n", "16", "--json")
        assert previewed.exit_code == 2 and f"error: {bad_url}: fails its sha256 checksum" in previewed.output
        trained = invoke(cli.train_app, "--shards", url, "--out", tmp_path / "run", "--max-steps", "2",
                         *FAST[:-2], "--mode", "memory")
        assert trained.exit_code == 2 and f"error: {bad_url}: fails its sha256 checksum" in trained.output


def test_pipe_commands_read_the_set_and_name_a_failing_command(tiny_shards, copy_shards):
    location = f"pipe:cat {tiny_shards}/{{}}"
    assert same(batches(location, mode="stream"), batches(tiny_shards, mode="stream"))
    shard_dir = copy_shards()
    (shard_dir / BAD).unlink()
    with pytest.raises(ShardError, match=f"pipe:cat {shard_dir}/{BAD}: the command failed \\(exit status 1"):
        batches(f"pipe:cat {shard_dir}/{{}}", 20, mode="stream")


def corrupt_a_png(shard: Path) -> str:
    """Flip one byte in the middle of the first sample's PNG (the file keeps its size); its key."""
    from ddpm_data.shardformat import iter_shard

    (key, members), *_ = iter_shard(shard)
    data = bytearray(shard.read_bytes())
    data[data.index(members["png"]) + len(members["png"]) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    return key


def invoke(app, *args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_a_set_served_by_python_http_server_is_verified_previewed_trained_and_resumed(tiny_shards, tmp_path):
    run = tmp_path / "run"
    with python_http_server(tiny_shards.parent) as base:
        url = f"{base}/{tiny_shards.name}"
        verified = invoke(cli.data_app, "verify", url)
        assert verified.exit_code == 0 and f"{url}: ok" in verified.output, verified.output
        previewed = invoke(cli.data_app, "preview", url, "--n", "32", "--json")
        assert previewed.exit_code == 0, previewed.output
        assert sum(json.loads(previewed.stdout)["drawn"].values()) == 32
        train("--shards", url, "--out", run, "--max-steps", "2", *FAST)
        assert json.loads((run / "config.json").read_text())["data"]["shards"] == url
        train("--resume", "--out", run, "--max-steps", "4", *FAST)
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(run))["step"] == 4


def test_a_corrupted_shard_on_http_is_caught_by_verify_and_by_training(copy_shards, tmp_path):
    shard_dir = copy_shards()
    key = corrupt_a_png(shard_dir / BAD)
    with python_http_server(shard_dir.parent) as base:
        url, bad_url = f"{base}/{shard_dir.name}", f"{base}/{shard_dir.name}/{BAD}"
        verified = invoke(cli.data_app, "verify", url)
        assert verified.exit_code == 1, verified.output
        assert f"{bad_url}: sample {key}: .png fails its sha256 checksum" in verified.stderr
        assert verified.stderr.splitlines()[-1] == f"error: {url}: 1 bad file(s): {BAD}"
        refused = invoke(cli.train_app, "--shards", url, "--out", tmp_path / "run", "--max-steps", "8",
                         "--balance", "balanced", *FAST)
        assert refused.exit_code == 2 and isinstance(refused.exception, SystemExit), refused.output
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
        # a shard of fewer samples than a window is used only after its file checksum: that one fails first
        assert len(errors) == 1 and errors[0].startswith(f"error: {bad_url}: fails its sha256 checksum")
        assert "--skip-bad-shards" in errors[0] and "Traceback" not in refused.output
        skipped = invoke(cli.train_app, "--shards", url, "--out", tmp_path / "skip", "--max-steps", "8",
                         "--balance", "balanced", "--skip-bad-shards", *FAST, "--quality-every", "4")
        assert skipped.exit_code == 0, skipped.output
        assert re.search(f"^warning: {re.escape(bad_url)}: fails its sha256 checksum .*; skipped", skipped.stderr, re.M)
        # the classifier is fitted at the first score (step 4); the scores go on without it
        assert "warning: the quality score goes without class accuracy" in skipped.output
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "skip"))["step"] == 8


# ---------------------------------------------------------------- s3 (moto)


@pytest.fixture(scope="module")
def s3():
    with moto_s3() as endpoint:
        yield endpoint


def s3_put_order(monkeypatch) -> list[str]:
    """Names written to S3, in order (put_file, and mv targets)."""
    from s3fs import S3FileSystem

    written, put, move = [], S3FileSystem._put_file, S3FileSystem.mv

    async def spy_put(self, lpath, rpath, **options):  # s3fs's put_file runs this coroutine
        written.append(Path(rpath).name)
        return await put(self, lpath, rpath, **options)

    monkeypatch.setattr(S3FileSystem, "_put_file", spy_put)
    monkeypatch.setattr(S3FileSystem, "mv", lambda self, a, b, **kw: (written.append(Path(b).name), move(self, a, b, **kw))[1])
    S3FileSystem.clear_instance_cache()  # instances bind their sync methods when made
    return written


def test_build_uploads_to_s3_manifest_last_and_refuses_to_overwrite(s3, tiny_source, tiny_shards, monkeypatch):
    written = s3_put_order(monkeypatch)
    args = ["build", "--src", tiny_source, "--size", "16", "--out", "s3://shards/built/{size}", "--shard-size", "4",
            "--workers", "0", "--val-fraction", "0.1"]
    result = CliRunner().invoke(cli.data_app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "s3://shards/built/16: size 16" in result.output
    assert written[-1] == "manifest.json" and written.count("manifest.json") == 1 and ".manifest.json.uploading" in written
    local, uploaded = load_manifest(tiny_shards), load_manifest("s3://shards/built/16")
    assert uploaded.shards == local.shards and uploaded.hdf5 == local.hdf5  # the same bytes
    assert uploaded.options["out"] == "s3://shards/built/{size}"
    result = CliRunner().invoke(cli.data_app, [str(a) for a in args])
    assert result.exit_code == 2 and "s3://shards/built/16: exists; pass --overwrite" in result.output
    from s3fs import S3FileSystem

    S3FileSystem().pipe_file("shards/built/16/notes.txt", b"the user's")  # --overwrite deletes no foreign file
    result = CliRunner().invoke(cli.data_app, [str(a) for a in args + ["--overwrite"]])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "--out s3://shards/built/16: also holds notes.txt, which a build did not write" in result.output
    assert S3FileSystem().cat_file("shards/built/16/notes.txt") == b"the user's"
    S3FileSystem().rm_file("shards/built/16/notes.txt")
    S3FileSystem().pipe_file("shards/built/16/train-gone-000009.tar", b"old")  # a shard of the set replaced
    result = CliRunner().invoke(cli.data_app, [str(a) for a in args + ["--overwrite"]])
    assert result.exit_code == 0, result.output
    assert not S3FileSystem().exists("shards/built/16/train-gone-000009.tar")
    result = CliRunner().invoke(cli.data_app, ["verify", "s3://shards/built/16"])
    assert result.exit_code == 0 and "s3://shards/built/16: ok" in result.output, result.output


def upload(local: Path, url: str) -> None:
    remote.upload_folder(local, url, "manifest.json", overwrite=True, owned=lambda name: True)


def test_train_and_resume_from_s3_match_a_local_run(s3, tiny_shards, tmp_path):
    url = "s3://shards/train/16"
    upload(tiny_shards, url)
    assert same(batches(url, mode="stream", workers=2), batches(tiny_shards, mode="stream", workers=2))  # forked workers
    local = tmp_path / "local"
    train("--shards", tiny_shards, "--out", local, "--max-steps", "2", *FAST)
    run = tmp_path / "s3"
    train("--shards", url, "--out", run, "--max-steps", "1", *FAST)
    assert json.loads((run / "config.json").read_text())["run"]["shards"] == url
    output = train("--out", run, "--resume", "--max-steps", "2", "--no-progress")
    assert "resumed from" in output and "finished at step 2" in output
    expected, got = final_weights(local), final_weights(run)
    assert all(torch.equal(expected[name], got[name]) for name in expected)


def test_s3_errors_name_the_url_and_skip_goes_on(s3, copy_shards, tmp_path, monkeypatch):
    from s3fs import S3FileSystem

    shard_dir = copy_shards()
    url = "s3://shards/broken/16"
    upload(shard_dir, url)
    gone = [f"train-abnormal-{index:06d}.tar" for index in (1, 2, 3)]  # 4 abnormal shards: 8 draws meet a gap
    for name in gone:
        S3FileSystem().rm_file(f"shards/broken/16/{name}")
    args = ["--shards", url, "--max-steps", "2", *FAST, "--balance", "balanced"]
    result = CliRunner().invoke(cli.train_app, [*args, "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert any(f"{url}/{name}: missing" in result.output for name in gone), result.output
    output = train(*args, "--out", tmp_path / "b", "--skip-bad-shards")
    assert re.search(f"^warning: {re.escape(url)}/train-abnormal-00000[123].tar: missing; skipped", output, re.M), output
    assert "finished at step 2" in output

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    _require_signatures(monkeypatch)
    S3FileSystem.clear_instance_cache()
    result = CliRunner().invoke(cli.data_app, ["stats", url])
    assert result.exit_code == 2 and f"{url}/manifest.json: access denied" in result.output
    assert "wrong" not in result.output
    S3FileSystem.clear_instance_cache()


def _require_signatures(monkeypatch) -> None:
    """Turn on moto's request authentication with a real (fake) IAM key, then spoil the secret."""
    import boto3
    from moto import settings

    iam = boto3.client("iam", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)


# ---------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_two_ranks_train_from_a_url_and_resume(tiny_shards, tmp_path):
    """`torchrun --nproc_per_node 2 --no-python ddpm-train --shards URL`, served by `python -m
    http.server`; then the same two ranks resume the run from its checkpoint."""
    run, bin_dir = tmp_path / "ddp", Path(sys.executable).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--no-python",
              str(bin_dir / "ddpm-train")]
    with python_http_server(tiny_shards.parent) as base:
        url = f"{base}/{tiny_shards.name}"
        for args in (["--shards", url, "--out", run, "--max-steps", "3"], ["--resume", "--out", run, "--max-steps", "5"]):
            done = subprocess.run([*launch, *map(str, args), *FAST], capture_output=True, text=True, env=env,
                                  timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))
            assert state["world_size"] == 2 and state["step"] == int(args[-1])
            assert [r["delivered"] for r in state["reader"]] == [state["step"]] * 2
    assert json.loads((run / "config.json").read_text())["data"]["shards"] == url


def test_a_failing_pipe_command_is_named_by_its_exit_status_not_a_python_tuple():
    result = CliRunner().invoke(cli.data_app, ["stats", "pipe:exit 3; echo {}"])
    assert result.exit_code == 2
    assert "the command failed (exit status 3" in result.output, result.output
    assert "'shell'" not in result.output and "((" not in result.output
    report = verify("pipe:exit 3; echo {}")
    (problem,) = report.problems
    assert problem.message.startswith("the command failed (exit status 3"), problem.message
