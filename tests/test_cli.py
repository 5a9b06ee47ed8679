"""Every console script and sub-command answers --help without error."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

import cli

REPO = Path(__file__).resolve().parents[1]
APPS = {"ddpm-data": cli.data_app, "ddpm-train": cli.train_app, "ddpm-sample": cli.sample_app, "ddpm-eval": cli.eval_app,
        "ddpm-study": cli.study_app}


def command_paths() -> list[tuple[str, list[str]]]:
    paths = []
    for script, app in APPS.items():
        if not app.registered_commands and not app.registered_groups:
            continue
        command = get_command(app)
        paths.append((script, []))
        for name in getattr(command, "commands", {}):
            paths.append((script, [name]))
    return paths


@pytest.mark.parametrize(("script", "path"), command_paths(), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_help(script, path):
    result = CliRunner().invoke(APPS[script], [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_every_console_script_is_wired():
    import tomllib
    from pathlib import Path

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert {name: target.split(":")[1] for name, target in scripts.items()} == {
        "ddpm-data": "data_app", "ddpm-train": "train_app", "ddpm-sample": "sample_app", "ddpm-eval": "eval_app",
        "ddpm-study": "study_app",
    }
    assert all(isinstance(app, typer.Typer) for app in APPS.values())


def test_one_comma_list_parser_names_the_flag_and_an_example():
    import cli

    assert cli.int_list("40, 96,128", "--size") == (40, 96, 128)
    assert cli.int_list(None, "--size") is None
    for text in ("96px", "", ","):
        with pytest.raises(typer.Exit):
            cli.int_list(text, "--size", "96 or 40,96,128")


def test_help_does_not_import_torch():
    """Option defaults come from the torch-free config modules, so --help answers at once."""
    import subprocess
    import sys

    code = "import sys, cli; cli.train_app(['--help'], standalone_mode=False); assert 'torch' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


_PEER = """
import os, sys
import torch.distributed as dist
from cli import error_line
rank, port = int(sys.argv[1]), sys.argv[2]
try:
    dist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"tcp://127.0.0.1:{port}")
    dist.barrier()  # both ranks are up
    if rank == 0:
        os._exit(3)  # this rank dies, as one does when its server or data fails
    dist.barrier()
except Exception as error:
    print(error_line(error))
"""


def test_a_peer_ranks_failure_is_one_line_on_the_other_rank():
    import socket

    with socket.socket() as probe:  # a free port on the loopback address
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": str(REPO), "RANK": "1"}
    dying = subprocess.Popen([sys.executable, "-c", _PEER, "0", port], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        done = subprocess.run([sys.executable, "-c", _PEER, "1", port], capture_output=True, text=True, env=env,
                              timeout=120)
    finally:
        dying.wait(timeout=60)
    line = done.stdout.strip()
    assert line.startswith("rank 1: another rank of this job stopped (") and "by peer" in line, done.stdout + done.stderr
    assert line.endswith("its own error line says why") and "\n" not in line
