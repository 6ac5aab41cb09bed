"""Ctrl-C and SIGTERM stop a command the clean way even where Python would lose them.

Found by tests/reliability/test_kill_anywhere.py: a SIGINT about 3 s into a new
database's index run landed in a garbage-collector callback (dropped: the run went on to
the end, printing a traceback) or, re-raised there, inside C++ code calling Python
(``terminate called``, SIGABRT).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

import pytest

from glueloc.core.interrupts import deferred_interrupts
from glueloc.signals import interrupt, lost_interrupt_hook


def _wait_for_interrupt(seconds: float = 5.0) -> bool:
    """True when a KeyboardInterrupt reaches this (main) thread within ``seconds``."""
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.01)
    except KeyboardInterrupt:
        return True
    return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_loading_is_held_then_raised(signum: int) -> None:
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        reached_the_end = False
        with pytest.raises(KeyboardInterrupt):
            with deferred_interrupts():
                os.kill(os.getpid(), signum)
                time.sleep(0.2)  # the handler has run by now: it must not have raised here
                reached_the_end = True
        assert reached_the_end
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is interrupt
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_no_signal_no_interrupt() -> None:
    with deferred_interrupts():
        value = 1 + 1
    assert value == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_off_the_main_thread_it_changes_nothing() -> None:
    seen: list[object] = []

    def work() -> None:
        with deferred_interrupts():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]


class _Interrupted:
    """An object whose finaliser is interrupted, as the signal's KeyboardInterrupt can be."""

    def __del__(self) -> None:
        raise KeyboardInterrupt


def test_an_interrupt_dropped_in_a_finaliser_is_delivered_again(monkeypatch: pytest.MonkeyPatch) -> None:
    passed_on: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", lost_interrupt_hook(passed_on.append))
    victim = _Interrupted()
    del victim  # Python drops the exception and calls the unraisable-hook
    assert _wait_for_interrupt(), "the dropped interrupt was not delivered again"
    assert passed_on == []


def test_without_the_hook_the_interrupt_is_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: what the hook fixes (this would fail if Python stopped dropping it)."""
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: None)
    victim = _Interrupted()
    del victim
    assert not _wait_for_interrupt(0.3)


def test_other_unraisable_errors_go_to_the_previous_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    passed_on: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", lost_interrupt_hook(passed_on.append))

    class Broken:
        def __del__(self) -> None:
            raise ValueError("finaliser failed")

    victim = Broken()
    del victim
    assert len(passed_on) == 1 and isinstance(passed_on[0].exc_value, ValueError)
    assert not _wait_for_interrupt(0.3)


def test_a_ctrl_c_while_a_localizer_loads_its_models_stops_after_loading(monkeypatch: pytest.MonkeyPatch,
                                                                        indexed) -> None:
    """Every query command (query, evaluate, calibrate, serve) opens a Localizer: a Ctrl-C while
    its models load must wait until they have loaded, then stop the command as usual."""
    from glueloc.query import localizer as localizer_module
    from glueloc.query.localizer import Localizer
    from glueloc.storage.layout import Layout

    real = localizer_module.load_matcher
    loaded: list[str] = []

    def interrupted_load(name: str, conf: Any = None) -> Any:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handler has run by now: it must not have raised inside the load
        matcher = real(name, conf)
        loaded.append(name)
        return matcher

    monkeypatch.setattr(localizer_module, "load_matcher", interrupted_load)
    with pytest.raises(KeyboardInterrupt):
        Localizer(Layout.at(indexed))
    assert len(loaded) == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
