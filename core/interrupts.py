"""Holding Ctrl-C (and SIGTERM) back while native code loads, then acting on it.

A signal's KeyboardInterrupt is raised wherever the main thread is between two Python
instructions. While torch and the models load, that can be a Python callback that C++
(pybind11) is running — an exception there ends the process with ``terminate called``
(SIGABRT), no clean stop — or a garbage-collector callback, where Python drops it and
the command ignores the interrupt. Both were seen by tests/reliability/test_kill_anywhere.py
with a SIGINT about 3 s into a new database's index run. Within :func:`deferred_interrupts`
a SIGINT or SIGTERM is only recorded; it is raised as the usual KeyboardInterrupt as the
block ends, where it stops the command the clean way.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

logger = logging.getLogger(__name__)

HELD: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Run the block with SIGINT/SIGTERM recorded, not raised; raise KeyboardInterrupt after it
    if one came. Off the main thread (where Python cannot set handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def record(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {signum: signal.signal(signum, record) for signum in HELD}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        logger.debug("signal %d held while loading; stopping now", received[0])
        raise KeyboardInterrupt
