"""An ordered, memory-bounded parallel map over a process pool (the build's decode stage).

`multiprocessing.Pool.imap` alone reads its whole input eagerly and lets results pile up when
the consumer is slower than the workers; a semaphore on the input side bounds that.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import signal
import threading
from multiprocessing.context import ForkProcess, ForkServerProcess, SpawnProcess
from typing import Any, Callable, Iterable, Iterator

from ddpm_data.signals import HeldSignals


def _ignore_sigint() -> None:
    # Ctrl-C is handled by the main process, which terminates the pool and removes temp folders.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _QuietWhenOrphaned:
    """A pool worker that exits quietly when its parent is gone (killed with SIGKILL): the result
    it was sending has no reader, and Python would print the BrokenPipeError twice. The parent's
    outputs are safe without it (they are written whole, then renamed)."""

    def run(self) -> None:
        parent = os.getppid()
        try:
            super().run()
        except (BrokenPipeError, ConnectionResetError, EOFError):
            if os.getppid() == parent:  # the parent still runs: a real error, report it
                raise


class _QuietFork(_QuietWhenOrphaned, ForkProcess):
    pass


class _QuietSpawn(_QuietWhenOrphaned, SpawnProcess):
    pass


class _QuietForkServer(_QuietWhenOrphaned, ForkServerProcess):
    pass


class _Pool(multiprocessing.pool.Pool):
    """multiprocessing's Pool with workers that exit quietly when orphaned."""

    @staticmethod
    def Process(ctx: Any, *args: Any, **kwargs: Any) -> Any:
        quiet = {"fork": _QuietFork, "spawn": _QuietSpawn, "forkserver": _QuietForkServer}[ctx.get_start_method()]
        return quiet(*args, **kwargs)


class _Gate:
    """Lets a generator feeding Pool.imap run at most `limit` items ahead of the consumer."""

    def __init__(self, limit: int) -> None:
        self._slots = threading.Semaphore(limit)
        self._stopped = threading.Event()

    def feed(self, items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            self._slots.acquire()
            if self._stopped.is_set():
                return
            yield item

    def done_one(self) -> None:
        self._slots.release()

    def stop(self) -> None:
        self._stopped.set()
        self._slots.release()


class OrderedPool:
    """Ordered maps over a process pool (`workers` processes; 0 = in this process).

    `map` streams: inputs are handed out only `in_flight` ahead of what the caller has consumed,
    so results never pile up in memory however large the folder is. Used as a context manager,
    a Ctrl-C is raised at the next result, where no lock the pool's threads share is held (a lock
    leaked there hangs the shutdown for good; `signals.HeldSignals`).
    """

    def __init__(self, workers: int) -> None:
        self._pool = _Pool(workers, initializer=_ignore_sigint) if workers else None
        self._gates: list[_Gate] = []
        self._interrupt = HeldSignals(over_default_only=True)

    def map(self, function: Callable[[Any], Any], items: Iterable[Any], chunksize: int = 1,
            in_flight: int | None = None) -> Iterator[Any]:
        if self._pool is None:
            yield from map(function, items)
            return
        gate = _Gate(in_flight) if in_flight is not None else None
        if gate is not None:
            self._gates.append(gate)
        for result in self._pool.imap(function, gate.feed(items) if gate else items, chunksize=chunksize):
            self._interrupt.raise_if_requested()
            yield result
            if gate is not None:
                gate.done_one()

    def __enter__(self) -> "OrderedPool":
        if self._pool is not None:
            self._interrupt.__enter__()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self._pool is None:
            return
        try:
            for gate in self._gates:  # unblock the pool's feeder thread, or terminate() would wait on it
                gate.stop()
            self._pool.terminate()
            self._pool.join()
        finally:
            self._interrupt.__exit__()
        if exc_type is None:
            self._interrupt.raise_if_requested()  # a Ctrl-C after the last result still stops the caller
