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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, insert, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from glueloc.core.errors import DatabaseError
from glueloc.storage.catalogue import RECORD_NAME, write_record
from glueloc.storage.layout import TEMP_PREFIX, Layout
from glueloc.storage.models import Calibration, CatalogueOwner, StoreState, utcnow

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


def make_engine(url: str, **options: Any) -> Engine:
    parsed = make_url(url)
    if parsed.drivername == "postgresql":  # SQLAlchemy's default driver for it is psycopg2; glueloc ships psycopg 3
        parsed = parsed.set(drivername="postgresql+psycopg")
    engine = create_engine(parsed, **options)
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


def _owner(connection: Connection) -> str | None:
    """The directory id the catalogue belongs to, if it records one (storage.catalogue)."""
    return connection.execute(select(CatalogueOwner.directory_id).where(CatalogueOwner.id == 1)).scalar_one_or_none()


def _check_owner(connection: Connection, layout: Layout) -> None:
    """Refuse a catalogue that belongs to another directory; claim an unowned one for a bound directory."""
    owner = _owner(connection)
    if layout.directory_id is None:
        if owner is not None:
            raise DatabaseError(f"the catalogue {layout.display_url} belongs to another database directory (id {owner}), "
                                f"not to {layout.root}")
        return
    if owner is None:
        connection.execute(insert(CatalogueOwner).values(id=1, directory_id=layout.directory_id, bound_at=utcnow()))
    elif owner != layout.directory_id:
        raise DatabaseError(f"the catalogue {layout.display_url} belongs to another database directory (id {owner}), not to "
                            f"{layout.root} (id {layout.directory_id}): was the directory copied? A copy needs a "
                            "catalogue of its own")


@contextmanager
def migrating(engine: Engine) -> Iterator[tuple[Connection, Config]]:
    """A connection in one transaction and an Alembic configuration that runs on it.

    All or nothing on both catalogues: a migration that fails leaves the schema and the
    rows as they were. On SQLite this needs an explicit BEGIN, because Python's driver
    begins a transaction only before a data change, never before a CREATE or a DROP.

    On SQLite, foreign keys are not enforced while the migrations run and are checked
    before the commit. A batch migration changes a column by copying its table, dropping
    the old one and renaming the copy (SQLite's own procedure for schema changes); with
    keys enforced, dropping a table that other rows reference fails, so any migration that
    alters such a table would fail on every database that holds data. The pragma only
    takes effect outside a transaction, hence before ``begin``.
    """
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()  # ends SQLAlchemy's autobegun transaction; pysqlite sent no BEGIN for a pragma
        try:
            with connection.begin():
                if sqlite:  # pysqlite would run the DDL outside any transaction: a failed step would stay half-done
                    connection.exec_driver_sql("BEGIN IMMEDIATE")
                config.attributes["connection"] = connection
                yield connection, config
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        table, row, parent, _ = broken[0]
                        raise DatabaseError(f"migration left {len(broken)} rows whose reference is gone "
                                            f"(first: {table} row {row} -> {parent}); nothing was changed")
        finally:
            if sqlite:
                if connection.in_transaction():
                    connection.rollback()
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()


def _migrate(url: str, layout: Layout | None = None) -> str | None:
    """Run the migrations up to head on ``url`` in one transaction, checking (or claiming) the
    catalogue's owner in the same transaction; returns the revision before."""
    engine = make_engine(url)
    try:
        before = current_revision(engine)
        with migrating(engine) as (connection, config):
            command.upgrade(config, "head")
            if layout is not None:
                _check_owner(connection, layout)
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


def _refuse_unclaimed_stores(layout: Layout) -> None:
    """A new catalogue must not adopt a directory that already holds stores: they belong to a
    catalogue that is not here (a deleted catalogue.json?), and the new one's garbage
    collection would delete them all."""
    for folder in (layout.features_dir, layout.vectors_dir):
        if folder.is_dir() and any(not path.name.startswith(TEMP_PREFIX) for path in folder.iterdir()):
            raise DatabaseError(f"{layout.root} holds stores ({folder.name}/) but no catalogue: its catalogue is "
                                f"missing (glueloc.sqlite, or the {RECORD_NAME} that names one); refusing to start a "
                                "new one there")


def _bind(layout: Layout) -> Layout:
    """Record a new directory's catalogue on a server (or elsewhere) before anything is written
    to it, refusing a catalogue another directory already owns."""
    engine = make_engine(layout.url)
    try:
        with engine.connect() as connection:
            if MigrationContext.configure(connection).get_current_revision() is not None and \
                    inspect(connection).has_table(CatalogueOwner.__tablename__):
                _check_owner(connection, layout)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot open catalogue {layout.display_url}: {_first_line(exc)}") from None
    finally:
        engine.dispose()
    _refuse_unclaimed_stores(layout)
    record = write_record(layout.root, layout.url)
    return replace(layout, directory_id=record.directory_id)


def upgrade(layout: Layout) -> tuple[str | None, str]:
    """Bring the schema to the latest revision (creating the database if there is none);
    returns (before, after)."""
    layout.make_dirs()
    sqlite_path = layout.sqlite_path
    if layout.is_default_catalogue and sqlite_path is not None and not sqlite_path.exists():
        _refuse_unclaimed_stores(layout)
        _create_sqlite(sqlite_path)
        return None, head_revision()
    if not layout.is_default_catalogue and layout.directory_id is None:
        layout = _bind(layout)
    try:
        return _migrate(layout.url, layout), head_revision()
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot migrate catalogue {layout.display_url}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc.args[0] if exc.args else exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


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
            if self.engine.dialect.name == "sqlite":
                session.connection().exec_driver_sql("BEGIN")
            else:  # set on the connection before its transaction begins; reset when it goes back to the pool
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
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

    Raises :class:`DatabaseError` when there is no database (and ``create`` is false), when
    its catalogue belongs to another directory, or when its schema revision is not the one
    this code expects.
    """
    sqlite_path = layout.sqlite_path
    fresh_binding = not layout.is_default_catalogue and layout.directory_id is None
    if (layout.is_default_catalogue and sqlite_path is not None and not sqlite_path.exists()) or fresh_binding:
        if not create:
            raise DatabaseError(f"no glueloc database at {layout.root} (run `glueloc index` to create one)")
        upgrade(layout)
        layout = Layout.at(layout.root, layout.url)
    engine = make_engine(layout.url)
    try:
        revision = current_revision(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise DatabaseError(f"cannot open database {layout.display_url}: {_first_line(exc)}") from None
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
    try:
        with engine.begin() as connection:
            _check_owner(connection, layout)
    except BaseException:
        engine.dispose()
        raise
    layout.make_dirs()
    return Database(layout=layout, engine=engine, sessions=sessionmaker(engine, expire_on_commit=False))
