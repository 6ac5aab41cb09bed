"""Durable publication of a finished file: fsync it, rename it into place, fsync the directory.

Why its own module: the layout (shards, FAISS files) and the catalogue record both publish
files this way, and the record must be written before a layout can be read.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (POSIX needs the directory synced too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_publish(temp: Path, final: Path) -> None:
    """fsync a finished temporary file, rename it into place, fsync the directory."""
    with open(temp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, final)
    fsync_dir(final.parent)
