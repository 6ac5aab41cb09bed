"""The schema comes only from Alembic migrations, and the ORM models agree with it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from glueloc.core.errors import DatabaseError
from glueloc.storage.database import head_revision, open_database, upgrade
from glueloc.storage.layout import Layout
from glueloc.storage.models import Base


def test_migrated_schema_equals_models(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path / "db")
    assert upgrade(layout) == (None, head_revision())
    db = open_database(layout)
    with db.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    db.close()


def test_upgrade_is_idempotent(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path / "db")
    upgrade(layout)
    assert upgrade(layout) == (head_revision(), head_revision())


def test_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="no glueloc database at"):
        open_database(Layout.at(tmp_path / "none"))
    assert not (tmp_path / "none").exists()  # reading never creates


def test_other_revision_says_what_to_run(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path / "db")
    upgrade(layout)
    with sqlite3.connect(tmp_path / "db" / "glueloc.sqlite") as connection:
        connection.execute("update alembic_version set version_num = '0000'")
    with pytest.raises(DatabaseError, match=r"revision 0000, this glueloc needs .*glueloc db upgrade --db"):
        open_database(layout)


def test_sqlite_file_without_schema_is_refused(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    sqlite3.connect(tmp_path / "db" / "glueloc.sqlite").close()
    with pytest.raises(DatabaseError, match="holds no glueloc schema"):
        open_database(Layout.at(tmp_path / "db"))
