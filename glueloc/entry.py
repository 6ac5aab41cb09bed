"""The console entry point, kept free of heavy imports so signals are handled from the start.

Importing the CLI pulls in typer, SQLAlchemy, h5py and more, which takes a second or two
on a small machine. A Ctrl-C or SIGTERM in that window would otherwise print an import
traceback (SIGINT) or end the process by the default action (SIGTERM); nothing has been
written yet, so the right answer is a quiet exit with the usual status (130 / 143).
Once the CLI is loaded, SIGTERM is turned into the same KeyboardInterrupt as Ctrl-C, so
every command stops the same clean way whatever it is doing, and an interrupt that lands
where Python would drop it (a garbage-collector callback) is delivered again
(``glueloc.signals``).
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType


def _quiet_exit(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write("interrupted before start-up finished: nothing was written\n")
    os._exit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGINT, _quiet_exit)
    signal.signal(signal.SIGTERM, _quiet_exit)
    from glueloc.cli import run
    from glueloc.signals import interrupt, redeliver_lost_interrupts

    redeliver_lost_interrupts()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
    run()
