"""What of a location may be written or shown (ddpm_data/redact.py): the rule on its own, then a
run reading through a `pipe:` command that carries a bearer token, with every file it writes and
every line it prints searched for the token."""
from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

import cli
from ddpm_data.redact import is_hidden, public, redact, scrub
from helpers_remote import http_server

SECRET = "tok-5ecret-9f2c"
FAST = ["--preset", "tiny", "--model-channels", "8", "--channel-multipliers", "1,2", "--use-attention", "0,0",
        "--num-timesteps", "100", "--batch-size", "8", "--warmup-steps", "2", "--lr", "1e-3", "--sample-steps", "1",
        "--samples-per-class", "1", "--log-every", "1", "--val-every", "1", "--val-images", "4",
        "--checkpoint-every", "1", "--sample-every", "1", "--no-progress", "--device", "cpu", "--mode", "stream"]


def test_public_keeps_the_program_options_urls_and_environment_references_only():
    assert public(f"pipe:curl -sfL -H 'Authorization: Bearer {SECRET}' https://h/96/{{}}") == \
        "pipe:curl -sfL -H *** https://h/96/{}"
    assert public(f"pipe:curl -sf --user bob:{SECRET} https://h/96/{{}}?sig={SECRET}") == \
        "pipe:curl -sf --user *** https://h/96/{}?sig=***"
    assert public(f"pipe:TOKEN={SECRET} curl --oauth2-bearer={SECRET} https://h/{{}}") == \
        "pipe:TOKEN=*** curl --oauth2-bearer=*** https://h/{}"
    for kept in ['pipe:curl -sfL -H "Authorization: Bearer $TOKEN" https://h/96/{}', "pipe:curl -sf --netrc https://h/{}",
                 "pipe:cat /data/shards/96/{}"]:
        assert public(kept) == kept and not is_hidden(kept)
    assert public("pipe:aws s3 cp s3://b/96/{} -") == "pipe:aws *** *** s3://b/96/{} -"  # unknown words are hidden
    assert public(Path("/x/y")) == "/x/y" and public(f"https://u:{SECRET}@h/x") == "https://***@h/x"


def test_redact_hides_secret_options_headers_and_tokens_in_free_text():
    text = (f"pipe:curl -H 'Authorization: Bearer {SECRET}' https://h/a.tar: exit 22 (curl -u bob:{SECRET} "
            f"--oauth2-bearer {SECRET} -H X-Api-Key:{SECRET} API_TOKEN={SECRET} Cookie: s={SECRET})")
    assert SECRET not in redact(text) and "https://h/a.tar: exit 22" in redact(text)
    assert scrub({"a": [f"pipe:curl -H 'Authorization: Bearer {SECRET}' https://h/{{}}"], "b": 1}) == \
        {"a": ["pipe:curl -H *** https://h/{}"], "b": 1}


def files_holding(folder: Path, secret: str) -> list[str]:
    return [str(path) for path in folder.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]


def test_a_run_through_a_pipe_command_with_a_token_writes_and_prints_no_token(tiny_shards, tmp_path):
    run = tmp_path / "run"
    with http_server(tiny_shards.parent, token=SECRET) as base:
        command = f"pipe:curl -sfL -H 'Authorization: Bearer {SECRET}' {base}/{tiny_shards.name}/{{}}"
        outputs = []
        for args in (["--shards", command, "--out", run, "--max-steps", "2"],
                     ["--resume", "--shards", command, "--out", run, "--max-steps", "3"]):
            result = CliRunner().invoke(cli.train_app, [str(a) for a in [*args, *FAST]])
            assert result.exit_code == 0, result.output
            outputs.append(result.output)
        saved = json.loads((run / "config.json").read_text())
        assert saved["run"]["shards"] == f"pipe:curl -sfL -H *** {base}/{tiny_shards.name}/{{}}"
        refused = CliRunner().invoke(cli.train_app, ["--resume", "--out", str(run), "--max-steps", "4", "--no-progress"])
        assert refused.exit_code == 2 and "pass the command again with --shards" in refused.output
        outputs.append(refused.output)
        for command_args in (["verify", command], ["preview", command, "--n", "8", "--json"]):
            result = CliRunner().invoke(cli.data_app, command_args)
            assert result.exit_code == 0, result.output
            outputs.append(result.output)
        wrong = command.replace(SECRET, SECRET[::-1])  # the server answers 403: curl -f exits with an error
        failed = CliRunner().invoke(cli.data_app, ["verify", wrong])
        assert failed.exit_code != 0 and "error: " in failed.output
        outputs.append(failed.output)
    assert (run / "checkpoints").is_dir() and (run / "metrics.jsonl").is_file()
    assert files_holding(run, SECRET) == []
    assert all(SECRET not in output and SECRET[::-1] not in output for output in outputs), outputs
