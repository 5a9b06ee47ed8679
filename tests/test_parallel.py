"""ddpm_data.parallel: ordered results, bounded run-ahead, clean shutdown on an error or a Ctrl-C."""
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

from conftest import send_signal

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


def test_ctrl_c_is_raised_at_the_next_result_and_the_handler_restored(default_ctrl_c):
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with OrderedPool(2) as pool:
            stream = pool.map(_square, range(1000), in_flight=4)
            assert next(stream) == 0
            send_signal()  # held: no exception where the pool's threads share a lock
            steps.append("held")
            next(stream)
            steps.append("not raised")
    assert steps == ["held"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_raises_at_once(default_ctrl_c):
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with OrderedPool(2):
            send_signal()
            steps.append("first held")
            send_signal()
            steps.append("second held")
    assert steps == ["first held"]


def test_a_ctrl_c_after_the_last_result_stops_the_caller_at_the_pool_exit(default_ctrl_c):
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with OrderedPool(2) as pool:
            assert list(pool.map(_square, range(5))) == [x * x for x in range(5)]
            send_signal()
            steps.append("held")
    assert steps == ["held"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_handler_the_caller_installed_is_left_alone():
    seen = []
    previous = signal.signal(signal.SIGINT, lambda *args: seen.append(args[0]))
    try:
        with OrderedPool(2) as pool:
            assert list(pool.map(_square, range(5), in_flight=2)) == [x * x for x in range(5)]
            send_signal()
        assert seen == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)
