"""Signals held to a safe point: while active, a signal only records itself, and the code checks
the record where stopping is clean (after a training step, at the next decoded image) instead of
being interrupted wherever it is (inside a lock other threads share, half-way through a write).
A second Ctrl-C raises KeyboardInterrupt at once."""
from __future__ import annotations

import signal
import threading
from typing import Any


class HeldSignals:
    """Context manager holding `numbers` (main thread only; elsewhere no handler is installed).
    With `over_default_only`, a signal whose handler is not Python's default Ctrl-C handler (one
    the caller installed) is left alone."""

    def __init__(self, numbers: tuple[int, ...] = (signal.SIGINT,), over_default_only: bool = False) -> None:
        self.numbers, self.over_default_only = numbers, over_default_only
        self.signal_name: str | None = None          # "SIGINT" | "SIGTERM" once one arrived
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "HeldSignals":
        if threading.current_thread() is threading.main_thread():
            for number in self.numbers:
                if not self.over_default_only or signal.getsignal(number) is signal.default_int_handler:
                    self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: object) -> None:
        if self.signal_name is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(number).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def raise_if_requested(self) -> None:
        if self.requested:
            raise KeyboardInterrupt
