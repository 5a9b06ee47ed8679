"""ddpm_study.tools: console scripts as subprocesses: environment, launcher prefix, time limit, errors."""
from __future__ import annotations

import sys
import textwrap

from ddpm_study.tools import Subprocesses, ToolRun


def script(tmp_path, name: str, body: str):
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def test_the_child_inherits_pythonpath_and_runs_behind_the_launcher(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/the/worktree")
    tool = script(tmp_path, "show-env", "import os\nprint(os.environ['PYTHONPATH'], os.environ.get('VIA_LAUNCHER'))\n")
    run = Subprocesses(echo=lambda line: None)([tool], launcher=("env", "VIA_LAUNCHER=yes"), capture=True)
    assert run.returncode == 0 and run.stdout.split() == ["/the/worktree", "yes"]


def test_a_time_limit_sends_sigterm_and_the_child_may_finish_its_checkpoint(tmp_path):
    marker = tmp_path / "checkpointed"
    tool = script(tmp_path, "slow-train", f"""
        import signal, sys, time
        def stop(signum, frame):
            open({str(marker)!r}, "w").write("ok")
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        print("started", file=sys.stderr, flush=True)
        time.sleep(60)
    """)
    lines = []
    run = Subprocesses(echo=lines.append)([tool], time_limit=1.5)
    assert run.stopped and run.returncode == 0 and marker.read_text() == "ok"
    assert run.seconds < 30
    assert "started" in lines


def test_the_childs_own_error_line_is_kept():
    run = ToolRun(2, 0.1, None, ("progress 50%", "error: --preset huge: unknown; valid: 40, 96", "Aborted"))
    assert run.error_line == "--preset huge: unknown; valid: 40, 96"
    assert ToolRun(1, 0.1, None, ("Traceback ...", "RuntimeError: boom")).error_line == "RuntimeError: boom"
    assert ToolRun(3, 0.1, None, ()).error_line == "exit status 3"


def test_a_missing_program_is_an_error_line_not_a_crash(tmp_path):
    run = Subprocesses(echo=lambda line: None)([str(tmp_path / "no-such-tool")])
    assert run.returncode == 127 and "cannot run" in run.error_line


def test_a_killed_study_takes_its_training_down_with_it(tmp_path):
    """SIGKILL of the study (no handler can run) still stops the child, which may checkpoint."""
    import os
    import signal
    import subprocess
    import time
    from pathlib import Path

    marker, pid_file = tmp_path / "checkpointed", tmp_path / "child.pid"
    tool = script(tmp_path, "long-train", f"""
        import os, signal, sys, time
        def stop(signum, frame):
            open({str(marker)!r} + ".tmp", "w").write("ok")
            os.replace({str(marker)!r} + ".tmp", {str(marker)!r})  # the test polls for it: whole or absent
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        open({str(pid_file)!r} + ".tmp", "w").write(str(os.getpid()))
        os.replace({str(pid_file)!r} + ".tmp", {str(pid_file)!r})  # whole, never read half-written
        time.sleep(120)
    """)
    study = subprocess.Popen([sys.executable, "-c", "import sys; from ddpm_study.tools import Subprocesses; "
                              f"Subprocesses(echo=lambda line: None)([{tool!r}])"],
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    study.send_signal(signal.SIGKILL)
    study.wait()
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.read_text() == "ok"  # the child was told to stop, and checkpointed
    while time.monotonic() < deadline and _running(child):
        time.sleep(0.05)
    if _running(child):
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the training child outlived its study")


def _running(pid: int) -> bool:
    """True while `pid` runs; an exited child nobody has reaped yet (a zombie) does not run."""
    from pathlib import Path

    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
