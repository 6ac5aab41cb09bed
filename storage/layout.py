"""Where each store lives inside a database directory.

A glueloc database is one directory: the SQLite file (unless another SQL server is
configured), immutable HDF5 feature shards, FAISS files, and the writer lock::

    glueloc-db/
      glueloc.sqlite          source of truth (or catalogue.json, naming a catalogue on a server)
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

from glueloc.core.errors import DatabaseError
from glueloc.storage.catalogue import RECORD_NAME, SQLITE_NAME, default_url, read_record, same_catalogue, without_password
from glueloc.storage.files import atomic_publish
from glueloc.vision.images import sha256_file

#: The process-wide catalogue override of earlier releases, refused so it cannot silently stop applying.
RETIRED_URL_ENV = "GLUELOC_DB_URL"
#: Files still being written carry this prefix; they are never referenced by SQLite.
TEMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class Layout:
    """Paths of one database directory, and the SQL URL of its catalogue."""

    root: Path
    url: str
    #: The directory's id in its catalogue.json (storage.catalogue); None for the default
    #: catalogue, the SQLite file inside the directory, which cannot be shared.
    directory_id: str | None = None

    @classmethod
    def at(cls, root: Path, url: str | None = None) -> "Layout":
        """The layout of the directory ``root``, with the catalogue its record names.

        ``url``: the catalogue for a directory being created (``glueloc index --catalogue``);
        for an existing one it must name the recorded catalogue (it may add the password).
        """
        if os.environ.get(RETIRED_URL_ENV):
            raise DatabaseError(f"{RETIRED_URL_ENV} is no longer read (it sent every --db to one catalogue): a "
                                "database records its own; create one with `glueloc index --catalogue URL`, then unset it")
        root = Path(root).expanduser().absolute()
        record = read_record(root)
        if record is None:
            if url is not None and url != default_url(root) and (root / SQLITE_NAME).exists():
                raise DatabaseError(f"{root} has its own catalogue ({SQLITE_NAME}); a catalogue URL applies only to "
                                    "a new database directory")
            return cls(root=root, url=url or default_url(root))
        if url is not None and not same_catalogue(url, record.url):
            raise DatabaseError(f"{root} belongs to the catalogue {record.url}, not {without_password(url)} "
                                f"(see {root / RECORD_NAME})")
        return cls(root=root, url=url or record.url, directory_id=record.directory_id)

    @property
    def display_url(self) -> str:
        """The catalogue's URL as messages show it: never with a password."""
        return without_password(self.url)

    @property
    def is_default_catalogue(self) -> bool:
        """Whether the catalogue is the directory's own SQLite file (nothing to record or check)."""
        return self.url == default_url(self.root)

    @property
    def is_server(self) -> bool:
        """Whether the catalogue is on a server that other machines reach (not a SQLite file)."""
        return not self.url.startswith("sqlite")

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
