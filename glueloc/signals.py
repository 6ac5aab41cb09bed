"""Signal handling shared by the console entry point and the CLI.

SIGTERM is turned into the same KeyboardInterrupt as Ctrl-C, so every command stops the
same clean way (its own ``interrupted:`` line and exit 130) whatever it is doing.
"""

from __future__ import annotations

from types import FrameType


def interrupt(signum: int, frame: FrameType | None) -> None:
    """A signal handler that raises KeyboardInterrupt where the program is."""
    raise KeyboardInterrupt
