"""The two catalogues the storage, index, query, audit and concurrency tests run against.

A test module marked ``pytest.mark.both_catalogues`` runs each of its tests that use a
database (the ``catalogue``, ``new_db`` or ``indexed`` fixtures) twice: with the default
SQLite file inside the directory, and with a fresh database on a local PostgreSQL server,
bound to the directory as ``glueloc index --catalogue`` binds it.

The server comes from ``GLUELOC_TEST_POSTGRES`` (an admin URL; default: the local server's
socket, as Debian's package sets it up). Without one the PostgreSQL cases skip, unless
``GLUELOC_REQUIRE_POSTGRES`` is set (CI sets it), when they fail: CI must not pass by skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from glueloc.storage.catalogue import RECORD_NAME, read_record, write_record

SERVER_ENV = "GLUELOC_TEST_POSTGRES"
REQUIRE_ENV = "GLUELOC_REQUIRE_POSTGRES"
DEFAULT_SERVER = "postgresql+psycopg:///postgres?host=/var/run/postgresql"
KINDS = ("sqlite", "postgresql")
PREFIX = "glueloc_test_"


@dataclass
class PostgresServer:
    """A PostgreSQL server the tests may create and drop databases on."""

    admin_url: str
    engine: Engine
    created: list[str] = field(default_factory=list)

    @classmethod
    def connect(cls, admin_url: str) -> "PostgresServer":
        engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return cls(admin_url=admin_url, engine=engine)

    def url_of(self, name: str) -> str:
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def create(self, template: str | None = None) -> str:
        """A new, empty database (or a copy of ``template``); returns its URL."""
        name = f"{PREFIX}{uuid.uuid4().hex[:16]}"
        with self.engine.connect() as connection:
            if template is None:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
            else:
                connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        self.created.append(name)
        return self.url_of(name)

    def drop_all(self) -> None:
        with self.engine.connect() as connection:
            for name in self.created:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.created.clear()
        self.engine.dispose()


@dataclass(frozen=True)
class Catalogue:
    """How a test's database directories get their catalogue."""

    kind: str
    server: PostgresServer | None = None

    def bind(self, root: Path) -> Path:
        """Make ``root`` a new database directory with a catalogue of this kind (for SQLite:
        nothing; the first `index` creates glueloc.sqlite)."""
        if self.server is not None:
            write_record(root, self.server.create())
        return root

    def copy(self, source: Path, target: Path) -> Path:
        """A private copy of a database directory and its catalogue.

        On a server the catalogue is copied too (CREATE DATABASE ... TEMPLATE) and the copy
        gets an id of its own: a copied directory must never share its original's catalogue.
        """
        shutil.copytree(source, target)
        record = read_record(source)
        if record is None:
            return target
        assert self.server is not None, "a bound directory needs the server it is bound to"
        (target / RECORD_NAME).unlink()
        url = self.server.create(template=make_url(record.url).database)
        copied = write_record(target, url)
        engine = create_engine(url)
        with engine.begin() as connection:
            connection.execute(text("UPDATE catalogue_owner SET directory_id = :id"), {"id": copied.directory_id})
        engine.dispose()
        return target


def find_server() -> tuple[PostgresServer | None, str]:
    """The test server, or None and why there is none."""
    url = os.environ.get(SERVER_ENV, DEFAULT_SERVER)
    try:
        return PostgresServer.connect(url), ""
    except (SQLAlchemyError, ImportError) as exc:
        return None, f"no PostgreSQL server at {url} ({type(exc).__name__}); set {SERVER_ENV}"


def required() -> bool:
    return bool(os.environ.get(REQUIRE_ENV))


def describe(root: Path) -> str:
    """What a directory's record says, for failure messages."""
    path = root / RECORD_NAME
    return json.loads(path.read_text())["url"] if path.exists() else "sqlite"
