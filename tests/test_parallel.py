"""ddpm_data.parallel: ordered results, bounded run-ahead, clean shutdown on an error."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from ddpm_data.parallel import OrderedPool

REPO = Path(__file__).resolve().parents[1]


def _square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("workers", [0, 2])
def test_results_come_back_in_input_order(workers):
    with OrderedPool(workers) as pool:
        assert list(pool.map(_square, range(50), chunksize=3, in_flight=4)) == [x * x for x in range(50)]
        assert list(pool.map(_square, range(10), chunksize=4)) == [x * x for x in range(10)]


def test_input_is_consumed_only_in_flight_ahead():
    handed_out = []

    def items():
        for x in range(100):
            handed_out.append(x)
            yield x

    with OrderedPool(2) as pool:
        stream = pool.map(_square, items(), in_flight=4)
        assert next(stream) == 0
        threading.Event().wait(0.3)  # give the feeder every chance to run ahead
        assert len(handed_out) <= 1 + 4 + 1


def test_abandoning_a_stream_does_not_hang_shutdown():
    with pytest.raises(RuntimeError):
        with OrderedPool(2) as pool:
            for value in pool.map(_square, range(1000), in_flight=2):
                if value > 10:
                    raise RuntimeError("consumer failed")


ORPHANED = textwrap.dedent("""
    import sys, time
    from ddpm_data.parallel import OrderedPool

    def slow(x):
        time.sleep(1.5)
        return x

    with OrderedPool(1) as pool:
        print(*(p.pid for p in pool._pool._pool), flush=True)  # the worker, for the test to clean up
        for value in pool.map(slow, range(100), in_flight=2):
            pass
""")


def test_a_worker_whose_parent_is_killed_exits_quietly():
    """kill -9 of the parent mid-map: the worker finishes its item, finds no reader for the
    result and exits without a traceback (it shares the parent's stderr)."""
    parent = subprocess.Popen([sys.executable, "-c", ORPHANED], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    (worker,) = map(int, parent.stdout.readline().split())
    try:
        time.sleep(0.5)  # the worker is inside its first item
        parent.kill()
        parent.wait(timeout=10)
        _, stderr = parent.communicate(timeout=30)  # EOF once the worker, which holds stderr too, is gone
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
