"""Signal handling shared by the console entry point and the CLI.

SIGTERM is turned into the same KeyboardInterrupt as Ctrl-C, so every command stops the
same clean way (its own ``interrupted:`` line and exit 130) whatever it is doing.

A signal's KeyboardInterrupt is raised wherever the main thread happens to be, and that
can be a weakref callback or a ``__del__`` that the garbage collector is running (SQLAlchemy's
event registry has one). Python cannot propagate an exception from there: it prints
"Exception ignored in ..." with a traceback and drops it, so the command ignored Ctrl-C
and ran to the end (seen by tests/reliability/test_kill_anywhere.py: a SIGINT 3 s into a
new database's index run). :func:`redeliver_lost_interrupts` installs an unraisable-hook
that, instead, quietly delivers the interrupt again a moment later, when the main thread
is back in ordinary code.
"""

from __future__ import annotations

import _thread
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

#: How long the re-delivery waits: enough for the main thread to leave the callback.
REDELIVERY_DELAY_S = 0.02


def interrupt(signum: int, frame: FrameType | None) -> None:
    """A signal handler that raises KeyboardInterrupt where the program is."""
    raise KeyboardInterrupt


def _redeliver() -> None:
    def later() -> None:
        time.sleep(REDELIVERY_DELAY_S)
        _thread.interrupt_main(signal.SIGINT)

    threading.Thread(target=later, name="glueloc-interrupt", daemon=True).start()


def lost_interrupt_hook(previous: Callable[[Any], object]) -> Callable[[Any], None]:
    """An unraisable-hook: a dropped KeyboardInterrupt is delivered again, anything else goes to ``previous``."""

    def hook(unraisable: Any) -> None:
        try:
            if isinstance(unraisable.exc_value, KeyboardInterrupt):
                logger.debug("interrupt landed in %r; delivering it again", unraisable.object)
                _redeliver()
            else:
                previous(unraisable)
        except KeyboardInterrupt:  # a second signal while in here: deliver that one too
            _redeliver()

    return hook


def redeliver_lost_interrupts() -> None:
    """Install :func:`lost_interrupt_hook` for this process (the console entry point calls it once)."""
    sys.unraisablehook = lost_interrupt_hook(sys.unraisablehook)
