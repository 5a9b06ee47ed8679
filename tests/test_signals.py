"""ddpm_data.signals: a held signal is recorded, not raised; a second Ctrl-C raises; handlers come back."""
from __future__ import annotations

import signal
import threading

import pytest

from ddpm_data.signals import HeldSignals

from conftest import send_signal


def test_a_held_signal_is_recorded_and_the_handlers_restored(default_ctrl_c):
    before = signal.getsignal(signal.SIGTERM)
    with HeldSignals((signal.SIGINT, signal.SIGTERM)) as held:
        send_signal(signal.SIGTERM)
        assert held.requested and held.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            held.raise_if_requested()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is before


def test_over_default_only_leaves_a_callers_handler_alone():
    mine = lambda *args: None  # noqa: E731
    previous = signal.signal(signal.SIGINT, mine)
    try:
        with HeldSignals(over_default_only=True):
            assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, previous)


def test_outside_the_main_thread_nothing_is_installed(default_ctrl_c):
    errors = []

    def enter() -> None:
        try:
            with HeldSignals():
                pass
        except ValueError as error:  # signal.signal outside the main thread
            errors.append(error)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert errors == [] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
