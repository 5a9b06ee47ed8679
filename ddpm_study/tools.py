"""The pipeline's console scripts (ddpm-data, ddpm-train, ddpm-sample, ddpm-eval) as subprocesses.

The study drives training, sampling and evaluation only through their command lines, so a change
inside those packages cannot break it while the flags stay the same. A script is looked up next
to the running Python first (the same virtual environment), then on PATH. The child inherits the
environment, PYTHONPATH included.

Each child runs in its own process group. A time limit, a Ctrl-C or a SIGTERM sent to
`ddpm-study` reaches the whole group (torchrun and every rank) as SIGTERM. ddpm-train then
finishes its step, writes a checkpoint and exits, which is what the wall-time budget relies on.
On Linux the child also gets SIGTERM when `ddpm-study` dies without a word (SIGKILL, the OOM
killer): `prctl(PR_SET_PDEATHSIG)`, so no training is left running as an orphan.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

_PR_SET_PDEATHSIG = 1  # linux/prctl.h

STOP_GRACE_S = 600  # after SIGTERM, how long a run may take to checkpoint before it is killed
TAIL_LINES = 20


@dataclass(frozen=True)
class ToolRun:
    returncode: int
    seconds: float
    stdout: str | None  # captured only when asked for
    stderr_tail: tuple[str, ...]  # the last lines written to stderr
    stopped: bool = False  # the time limit ran out and the run was sent SIGTERM

    @property
    def error_line(self) -> str:
        """The child's own one-line error ('error: ...'), else its last stderr line."""
        for line in reversed(self.stderr_tail):
            if line.startswith("error:"):
                return line[len("error:"):].strip()
        return self.stderr_tail[-1].strip() if self.stderr_tail else f"exit status {self.returncode}"


class Tools(Protocol):
    def __call__(self, argv: Sequence[str], *, launcher: Sequence[str] = (), time_limit: float | None = None,
                 capture: bool = False, quiet: bool = False) -> ToolRun: ...


def resolve(name: str) -> str:
    """The path of console script `name`: next to sys.executable (this venv), else on PATH, else the bare name."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name) or name


class Subprocesses:
    """The real `Tools`: runs argv[0] (a console script name) with its arguments."""

    def __init__(self, echo: Callable[[str], None] | None = None):
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))

    def __call__(self, argv: Sequence[str], *, launcher: Sequence[str] = (), time_limit: float | None = None,
                 capture: bool = False, quiet: bool = False) -> ToolRun:
        """Run to the end (or `time_limit` s, then stop); `capture` keeps stdout; `quiet` keeps stderr from the terminal."""
        command = [*launcher, resolve(argv[0]), *map(str, argv[1:])]
        started = time.monotonic()
        try:
            process = subprocess.Popen(command, stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE,
                                       text=True, errors="replace", start_new_session=True,
                                       preexec_fn=stop_with_parent())
        except OSError as error:
            return ToolRun(127, 0.0, None, (f"error: {command[0]}: cannot run ({error.strerror}); is the package installed?",))
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        relay = threading.Thread(target=self._relay, args=(process.stderr, tail, quiet), daemon=True)
        relay.start()
        output: list[str] = []
        reader = None
        if capture:
            reader = threading.Thread(target=lambda: output.append(process.stdout.read()), daemon=True)
            reader.start()
        stopped = False
        try:
            try:
                process.wait(timeout=time_limit)
            except subprocess.TimeoutExpired:
                stopped = True
                self.echo(f"study: time budget reached; stopping {argv[0]} (it checkpoints first)")
                stop(process)
        except KeyboardInterrupt:
            stop(process)
            raise
        relay.join(timeout=5)
        if reader is not None:
            reader.join(timeout=30)
        return ToolRun(process.returncode, time.monotonic() - started, "".join(output) if capture else None,
                       tuple(tail), stopped)

    def _relay(self, stream, tail: deque, quiet: bool) -> None:
        for line in stream:
            line = line.rstrip("\n")
            tail.append(line)
            if not quiet:
                self.echo(line)


def stop_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` asking Linux to send the child SIGTERM when this process dies; None elsewhere.

    prctl is looked up here, before the fork: the child only calls it (and, if this process died
    in between, stops itself)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


def stop(process: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM to the child's process group, then SIGKILL if it has not exited within `grace` s."""
    for sent in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sent)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


class TerminationAsInterrupt:
    """While active, SIGTERM to this process raises KeyboardInterrupt, so a running child is stopped
    (and checkpoints) instead of being left behind when a scheduler pre-empts the study."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    @staticmethod
    def _raise(signum, frame) -> None:
        raise KeyboardInterrupt
