"""One writer at a time: an exclusive, non-blocking lock on the database.

Two index runs interleaving batches would still commit consistent transactions, but
they would race on the FAISS file pointer and on garbage collection; refusing the
second writer with a clear message is simpler and what users expect.

Two locks, because writers may run on several machines: an ``flock`` on the directory's
``index.lock`` (the kernel drops it when its holder dies, so a SIGKILLed run never leaves
a stale lock behind), and, when the catalogue is on a server, a PostgreSQL session-level
advisory lock in that catalogue's database — the one lock every machine that can write
sees (flock on a network filesystem often does not cross machines). The server drops it
when the holder's connection ends, killed process included.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from types import TracebackType

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from glueloc.core.errors import DatabaseError
from glueloc.storage.database import make_engine
from glueloc.storage.layout import Layout

logger = logging.getLogger(__name__)

#: The advisory-lock key of the writer ("glueloc" in ASCII). Advisory locks are scoped to
#: one database of the server, and a catalogue belongs to one directory, so one key suffices.
WRITER_KEY = 0x676C75656C6F63


class WriterLock:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._fd: int | None = None
        self._engine: Engine | None = None
        self._connection: Connection | None = None

    @property
    def path(self) -> Path:
        return self.layout.lock_path

    def acquire(self) -> None:
        self.layout.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise DatabaseError(
                f"database {self.path.parent} is being written by pid {holder}; wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}@{os.uname().nodename}".encode(), 0)
        self._fd = fd
        if self.layout.is_server:
            try:
                self._acquire_advisory()
            except BaseException:
                self.release()
                raise

    def _acquire_advisory(self) -> None:
        self._engine = make_engine(self.layout.url, poolclass=NullPool)
        try:
            connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._connection = connection
            taken = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": WRITER_KEY}).scalar()
        except SQLAlchemyError as exc:
            raise DatabaseError(f"cannot reach the catalogue {self.layout.display_url} to take the writer lock: "
                                f"{type(exc).__name__}") from None
        if not taken:
            raise DatabaseError(f"database {self.layout.root} is being written by another process (its catalogue "
                                f"{self.layout.display_url} holds the writer lock, perhaps from another machine); wait for "
                                "it to finish")

    def release(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()  # ends the session, which releases its advisory lock
            except SQLAlchemyError as exc:  # the server went away: it dropped the lock with the session
                logger.warning("closing the writer lock's connection failed: %s", type(exc).__name__)
            self._connection = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _file_locked(path: Path) -> bool:
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def is_locked(layout: Layout) -> bool:
    """Whether some process (on any machine, for a catalogue on a server) holds the writer lock now."""
    if _file_locked(layout.lock_path):
        return True
    if not layout.is_server:
        return False
    engine = make_engine(layout.url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            held = connection.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND classid = :high AND objid = :low AND objsubid = 1"),
                {"high": WRITER_KEY >> 32, "low": WRITER_KEY & 0xFFFFFFFF}).scalar()
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot reach the catalogue {layout.display_url}: {type(exc).__name__}") from None
    finally:
        engine.dispose()
    return bool(held)
