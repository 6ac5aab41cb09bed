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
from pathlib import Path
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


def test_a_model_is_built_with_interrupts_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """vision.registry.instantiate builds every model (extractors, matchers, embedders): a
    signal while one builds is raised once it is built, never inside its construction."""
    from glueloc.vision import registry

    built: list[dict] = []

    class Model:
        def __init__(self, conf: dict) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler has run by now: it must not have raised here
            built.append(conf)

    monkeypatch.setattr(registry, "resolve", lambda kind, table, name: Model)
    with pytest.raises(KeyboardInterrupt):
        registry.instantiate("matcher", {}, "model", {"a": 1})
    assert built == [{"a": 1}]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _interrupting_resolve(monkeypatch: pytest.MonkeyPatch, kind: str) -> list[str]:
    """Make the real models of ``kind`` send this process a SIGINT as they start building."""
    from glueloc.vision import registry

    real = registry.resolve
    loaded: list[str] = []

    def resolve(which: str, table: Any, name: str) -> Any:
        cls = real(which, table, name)
        if which != kind:
            return cls

        def build(conf: dict) -> Any:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            model = cls(conf)
            loaded.append(name)
            return model

        return build

    monkeypatch.setattr(registry, "resolve", resolve)
    return loaded


def test_a_ctrl_c_while_a_localizer_loads_its_models_stops_after_loading(monkeypatch: pytest.MonkeyPatch,
                                                                        indexed) -> None:
    """Every query command (query, evaluate, calibrate, serve) opens a Localizer: a Ctrl-C while
    its models load must wait until the model has loaded, then stop the command as usual."""
    from glueloc.query.localizer import Localizer
    from glueloc.storage.layout import Layout

    loaded = _interrupting_resolve(monkeypatch, "matcher")
    with pytest.raises(KeyboardInterrupt):
        Localizer(Layout.at(indexed))
    assert len(loaded) == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_while_match_loads_its_models_stops_after_loading(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    """``glueloc match`` builds its models itself (query.pair), not through a Localizer."""
    from glueloc.query.pair import match_files
    from glueloc.vision.pipelines import get_pipeline

    loaded = _interrupting_resolve(monkeypatch, "extractor")
    with pytest.raises(KeyboardInterrupt):
        match_files(tmp_path / "a.png", tmp_path / "b.png", get_pipeline("sift"))
    assert len(loaded) == 1
