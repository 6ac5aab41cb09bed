"""Opening a glueloc database: engine, sessions, and the schema revision check.

The schema is created and changed only by the Alembic migrations in ``migrations/``.
Opening an existing database at another revision refuses with the command that fixes
it, rather than running on a schema the code does not expect.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from glueloc.core.errors import DatabaseError
from glueloc.storage.layout import Layout
from glueloc.storage.models import Calibration, StoreState

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic configuration for ``url`` that needs no alembic.ini on disk."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None, "migrations/ holds no revision"
    return head


def make_engine(url: str) -> Engine:
    engine = create_engine(url)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            # WAL lets queries read committed rows while an index run writes; FULL
            # synchronous makes a commit durable before the next batch starts.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

    return engine


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _migrate(url: str) -> str | None:
    """Run the migrations up to head on ``url`` in one transaction; returns the revision before."""
    engine = make_engine(url)
    try:
        before = current_revision(engine)
        config = alembic_config(url)
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        if url.startswith("sqlite:///"):
            with engine.connect() as connection:  # fold the WAL into the file before it moves
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return before
    finally:
        engine.dispose()


def _create_sqlite(path: Path) -> None:
    """Create a new SQLite database at ``path`` whole or not at all.

    The schema is built in a temporary file that is renamed into place once complete, so
    a crash or a full disk during creation leaves no half-made database behind for the
    next run to trip over (only a temporary file, removed here next time).
    """
    for stale in path.parent.glob(f".tmp-*-{path.name}*"):
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        _migrate(f"sqlite:///{tmp}")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        for leftover in path.parent.glob(f"{tmp.name}*"):
            leftover.unlink(missing_ok=True)


def upgrade(layout: Layout) -> tuple[str | None, str]:
    """Bring the schema to the latest revision; returns (before, after)."""
    layout.make_dirs()
    sqlite_path = layout.sqlite_path
    if sqlite_path is not None and not sqlite_path.exists():
        _create_sqlite(sqlite_path)
        return None, head_revision()
    return _migrate(layout.url), head_revision()


@dataclass
class Database:
    """An open database: its layout, engine and session factory."""

    layout: Layout
    engine: Engine
    sessions: sessionmaker[Session]

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as session:
            yield session

    @contextmanager
    def read_snapshot(self) -> Iterator[Session]:
        """A session every read of which sees the same committed state, whatever a writer commits.

        Why: Python's sqlite3 driver begins a transaction only before a write, so the reads
        of a plain session each see the newest commit — a query could take the FAISS file
        of one batch and the image rows of the next. Here SQLite gets an explicit BEGIN (a
        WAL read snapshot from the first read on; writers are not blocked); another server
        a REPEATABLE READ transaction. Meant for reads: it is rolled back at the end.
        """
        with self.sessions() as session:
            connection = session.connection()
            if self.engine.dialect.name == "sqlite":
                connection.exec_driver_sql("BEGIN")
            else:
                connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            try:
                yield session
            finally:
                # Read-only, so it ends with a rollback; the rows read are detached first so the
                # rollback does not expire them (their loaded values stay usable).
                session.expunge_all()
                session.rollback()

    def state(self, session: Session) -> StoreState | None:
        return session.scalars(select(StoreState).where(StoreState.id == 1)).one_or_none()

    def calibration(self, session: Session, codebook_id: int, retrieval: str | None = None,
                    model_id: int | None = None) -> Calibration | None:
        """The calibration queries use: the newest one fitted with ``codebook_id`` and the
        retrieval model ``model_id`` on shortlists drawn by ``retrieval`` (its probabilities
        rest on the rank and similarity of the candidates such a shortlist holds, and a new
        model changes which candidates those are); any retrieval's with None."""
        rows = session.scalars(select(Calibration).where(Calibration.codebook_id == codebook_id,
                                                         Calibration.model_id.is_(None) if model_id is None
                                                         else Calibration.model_id == model_id)
                               .order_by(Calibration.id.desc()))
        return next((row for row in rows if retrieval in (None, calibration_retrieval(row))), None)

    def close(self) -> None:
        self.engine.dispose()


#: Calibrations recorded before shortlists could be drawn by descriptor votes were fitted
#: on VLAD shortlists and say nothing of it.
LEGACY_RETRIEVAL = "vlad"


def calibration_retrieval(row: Calibration) -> str:
    """The retrieval (query.retrieval.RETRIEVALS) a calibration row was fitted on."""
    return str(row.options.get("retrieval", LEGACY_RETRIEVAL))


def open_database(layout: Layout, create: bool = False) -> Database:
    """Open the database at ``layout``; with ``create``, make a new one by migrating.

    Raises :class:`DatabaseError` when there is no database (and ``create`` is false) or
    when its schema revision is not the one this code expects.
    """
    sqlite_path = layout.sqlite_path
    if sqlite_path is not None and not sqlite_path.exists():
        if not create:
            raise DatabaseError(f"no glueloc database at {layout.root} (run `glueloc index` to create one)")
        upgrade(layout)
    engine = make_engine(layout.url)
    try:
        revision = current_revision(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise DatabaseError(f"cannot open database {layout.url}: {exc.__class__.__name__}: {exc.args[0]}") from None
    head = head_revision()
    if revision is None and create:
        engine.dispose()
        upgrade(layout)
        engine = make_engine(layout.url)
        revision = current_revision(engine)
    if revision is None:
        engine.dispose()
        raise DatabaseError(f"{layout.root} holds no glueloc schema (run `glueloc db upgrade --db {layout.root}`)")
    if revision != head:
        engine.dispose()
        raise DatabaseError(
            f"database {layout.root} is at schema revision {revision}, this glueloc needs {head}: "
            f"run `glueloc db upgrade --db {layout.root}`"
        )
    layout.make_dirs()
    return Database(layout=layout, engine=engine, sessions=sessionmaker(engine, expire_on_commit=False))
