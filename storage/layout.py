"""Where each store lives inside a database directory.

A glueloc database is one directory: the SQLite file (unless another SQL server is
configured), immutable HDF5 feature shards, FAISS files, and the writer lock::

    glueloc-db/
      glueloc.sqlite          source of truth
      features/shard-*.h5     one immutable file per committed batch
      vectors/faiss-*.index   the FAISS index named in store_state (older ones are garbage)
      index.lock              held by the one writer
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py

from glueloc.vision.images import sha256_file

#: Files still being written carry this prefix; they are never referenced by SQLite.
TEMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class Layout:
    """Paths of one database directory, and the SQL URL of its catalogue."""

    root: Path
    url: str

    @classmethod
    def at(cls, root: Path, url: str | None = None) -> "Layout":
        root = Path(root).expanduser().absolute()
        env_url = os.environ.get("GLUELOC_DB_URL")
        return cls(root=root, url=url or env_url or f"sqlite:///{root / 'glueloc.sqlite'}")

    @property
    def is_sqlite_file(self) -> bool:
        return self.url.startswith("sqlite:///")

    @property
    def sqlite_path(self) -> Path | None:
        return Path(self.url.removeprefix("sqlite:///")) if self.is_sqlite_file else None

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    @property
    def vectors_dir(self) -> Path:
        return self.root / "vectors"

    @property
    def lock_path(self) -> Path:
        return self.root / "index.lock"

    def make_dirs(self) -> None:
        for path in (self.root, self.features_dir, self.vectors_dir):
            path.mkdir(parents=True, exist_ok=True)


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


@dataclass(frozen=True)
class Published:
    """A file made visible under its final name: what SQLite then registers."""

    filename: str
    sha256: str


def publish_file(directory: Path, prefix: str, suffix: str, write: Callable[[Path], None],
                 content_named: bool = False) -> Published:
    """Write a new immutable file via ``write(path)`` and publish it atomically.

    The file is built under a temporary name and renamed only once complete and synced,
    so no reader (and no crash) ever sees it half-written; on any failure the temporary
    file is removed. ``content_named``: the final name is the prefix and the first 32 hex
    digits of the file's sha256 (a model or an index segment, whose name then says what it
    is), otherwise a fresh uuid (a shard: two batches may well hold equal bytes).
    """
    token = uuid.uuid4().hex
    temp = directory / f"{TEMP_PREFIX}{prefix}{token}{suffix}"
    try:
        write(temp)
        digest = sha256_file(temp)
        final = directory / f"{prefix}{digest[:32] if content_named else token}{suffix}"
        atomic_publish(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return Published(filename=final.name, sha256=digest)


def publish_hdf5(directory: Path, prefix: str, write: Callable[[h5py.File], None],
                 content_named: bool = False) -> Published:
    """:func:`publish_file` of an HDF5 file that ``write`` fills through an open handle (in memory:
    a shard is a few MB)."""

    def to_path(path: Path) -> None:
        # Built in memory, then written with plain file I/O: a disk that fills up then fails
        # this one write() with ENOSPC. Let HDF5 write the file itself and a full disk can
        # fail inside the library's close, which has crashed the process (SIGSEGV).
        buffer = io.BytesIO()
        with h5py.File(buffer, "w", libver="latest") as handle:
            write(handle)
        with open(path, "wb") as out:
            out.write(buffer.getbuffer())

    return publish_file(directory, prefix, ".h5", to_path, content_named)
