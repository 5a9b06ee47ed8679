"""Outages at a URL (ddpm_data/transfer.py), against servers on 127.0.0.1 that refuse, fail,
stall or trickle: each is named as an outage with its URL and what to do, retried visibly and
boundedly, never passed over as a bad shard; a slow but steady download completes."""
from __future__ import annotations

import re
import time

import pytest
from typer.testing import CliRunner

import cli
from ddpm_data import transfer
from ddpm_data.manifest import ManifestError, load_manifest
from ddpm_data.stream import OnError, ReaderConfig, open_reader
from ddpm_data.transfer import TransferConfig, Unreachable
from helpers_remote import faulty_server, free_port, http_server

BAD = "train-abnormal-000001.tar"


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(transfer, "RETRY_BACKOFF_S", (0.01,))
    yield
    transfer.use(TransferConfig())  # the commands set it for the process


def errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error: ")]


def assert_named_as_outage(line: str, url: str, what: str) -> None:
    assert line.startswith(f"error: {url}") and what in line, line
    assert "run the command again" in line and "rebuild" not in line and "--out http" not in line, line
    assert "bad file" not in line and "--skip-bad-shards" not in line, line


def test_nothing_listening_is_named_with_one_warning_per_retry(tiny_shards):
    url = f"http://127.0.0.1:{free_port()}/16"
    result = CliRunner().invoke(cli.data_app, ["verify", url, "--retries", "2"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert_named_as_outage(errors(result.output)[0], f"{url}/manifest.json", "connection refused (nothing listening) (tried 3 times)")
    retries = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert len(retries) == 2 and all(re.search(r"connection refused .*; retry [12] of 2", line) for line in retries)


def test_an_unknown_host_is_named_as_such():
    transfer.use(TransferConfig(retries=0))
    with pytest.raises(Unreachable, match=r"no-such-host.invalid/16/manifest.json: host not found"):
        load_manifest("http://no-such-host.invalid/16")


def test_a_failing_server_is_an_outage_in_verify_stream_and_memory_mode_even_with_skip(tiny_shards):
    transfer.use(TransferConfig(retries=1))
    with faulty_server(tiny_shards.parent, failures=100, only=(BAD,)) as base:
        url = f"{base}/{tiny_shards.name}"
        result = CliRunner().invoke(cli.data_app, ["verify", url, "--retries", "1"])
        assert result.exit_code == 2 and len(errors(result.output)) == 1, result.output
        assert_named_as_outage(errors(result.output)[0], f"{url}/{BAD}", "server error (HTTP 503) (tried 2 times)")
        for mode in ("stream", "memory"):
            with pytest.raises(Unreachable, match=f"{re.escape(url)}/{BAD}: server error"):
                reader = open_reader(url, ReaderConfig(mode=mode, balance="balanced", on_error=OnError.skip))
                for _ in range(20):
                    next(reader)


def test_a_server_failing_once_is_retried_and_the_read_goes_on(tiny_shards):
    transfer.use(TransferConfig(retries=1))
    with faulty_server(tiny_shards.parent, failures=2, only=(BAD,)) as base:  # fsspec tries HEAD, then GET
        result = CliRunner().invoke(cli.data_app, ["verify", f"{base}/{tiny_shards.name}", "--retries", "1"])
    assert result.exit_code == 0, result.output
    assert f"warning: {base}/16/{BAD}: server error (HTTP 503); retry 1 of 1 in 0.01 s" in result.output


def test_access_denied_is_not_retried_and_names_the_credentials(tiny_shards):
    with faulty_server(tiny_shards.parent, failures=100, status=403) as base:
        result = CliRunner().invoke(cli.data_app, ["verify", f"{base}/16"])
    assert result.exit_code == 2 and "warning: " not in result.output
    assert f"error: {base}/16/manifest.json: access denied (HTTP 403); check the credentials" in result.output


def test_a_stall_fails_naming_the_url_and_a_slow_steady_download_completes(tiny_shards):
    with faulty_server(tiny_shards.parent, chunk=2048, stall=5.0, only=(BAD,)) as base:
        started = time.monotonic()
        result = CliRunner().invoke(cli.data_app, ["verify", f"{base}/16", "--retries", "0", "--stall-timeout", "0.5"])
        assert time.monotonic() - started < 4, "a stall of 0.5 s must end the transfer"
    assert result.exit_code == 2
    assert_named_as_outage(errors(result.output)[0], f"{base}/16/{BAD}", "stalled: no byte for 0.5 s")
    # 2 kB every 0.2 s: a shard takes over a second, longer than the stall limit, and still arrives
    with faulty_server(tiny_shards.parent, chunk=2048, pause=0.2, only=(BAD,)) as base:
        started = time.monotonic()
        result = CliRunner().invoke(cli.data_app, ["verify", f"{base}/16", "--retries", "0", "--stall-timeout", "0.5"])
        assert result.exit_code == 0, result.output
        assert time.monotonic() - started > 1.0


def test_an_s3_endpoint_that_is_down_is_named_quickly(monkeypatch):
    from s3fs import S3FileSystem

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    S3FileSystem.clear_instance_cache()
    transfer.use(TransferConfig(retries=1))
    started = time.monotonic()
    with pytest.raises(Unreachable, match=r"s3://shards/16/manifest.json: connection refused .*run the command again"):
        load_manifest("s3://shards/16")
    assert time.monotonic() - started < 30
    S3FileSystem.clear_instance_cache()


def test_build_out_http_is_refused_before_any_work(tmp_path):
    result = CliRunner().invoke(cli.data_app, ["build", "--src", str(tmp_path / "absent"), "--size", "16",
                                               "--out", "http://127.0.0.1:9/shards/{size}"])
    assert result.exit_code == 2
    assert errors(result.output) == [errors(result.output)[0]] and "cannot be written" in result.output
    assert "s3://" in result.output and "absent" not in result.output


@pytest.mark.parametrize("content, named", [(b"<!DOCTYPE html><html>Sign in</html>", "an HTML page, not a manifest"),
                                            (b"\xff\xfe{\x00", "not UTF-8 text")])
def test_a_manifest_url_serving_html_or_binary_is_named_as_such(tmp_path, content, named):
    (tmp_path / "16").mkdir()
    (tmp_path / "16" / "manifest.json").write_bytes(content)
    with http_server(tmp_path) as base:
        with pytest.raises(ManifestError, match=f"^{re.escape(base)}/16/manifest.json: {named}"):
            load_manifest(f"{base}/16")
