"""The schema comes only from Alembic migrations, and the ORM models agree with it, on both catalogues."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from glueloc.core.errors import DatabaseError
from glueloc.storage.database import alembic_config, head_revision, make_engine, open_database, upgrade
from glueloc.storage.layout import Layout
from glueloc.storage.models import Base
from tests.catalogues import Catalogue
from tests.helpers import sql

pytestmark = pytest.mark.both_catalogues


def test_migrated_schema_equals_models(tmp_path: Path, catalogue: Catalogue) -> None:
    layout = Layout.at(catalogue.bind(tmp_path / "db"))
    assert upgrade(layout) == (None, head_revision())
    db = open_database(layout)
    with db.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    db.close()


def test_every_revision_upgrades_and_downgrades(tmp_path: Path, catalogue: Catalogue) -> None:
    """Each migration, one at a time, up to head, back down to nothing, and up again."""
    layout = Layout.at(catalogue.bind(tmp_path / "db"))
    url = layout.url if not layout.is_default_catalogue else f"sqlite:///{tmp_path / 'plain.sqlite'}"
    config = alembic_config(url)
    revisions = [script.revision for script in ScriptDirectory.from_config(config).walk_revisions()][::-1]
    assert revisions[0] == "0001" and revisions[-1] == head_revision()
    engine = make_engine(url)
    try:
        for step in (*revisions, "base", "head"):
            with engine.begin() as connection:
                config.attributes["connection"] = connection
                if step == "base":
                    command.downgrade(config, "base")
                else:
                    command.upgrade(config, step)
            with engine.connect() as connection:
                current = MigrationContext.configure(connection).get_current_revision()
            assert current == (None if step == "base" else head_revision() if step == "head" else step)
        with engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    finally:
        engine.dispose()


def test_upgrade_is_idempotent(tmp_path: Path, catalogue: Catalogue) -> None:
    layout = Layout.at(catalogue.bind(tmp_path / "db"))
    upgrade(layout)
    assert upgrade(Layout.at(layout.root)) == (head_revision(), head_revision())


def test_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="no glueloc database at"):
        open_database(Layout.at(tmp_path / "none"))
    assert not (tmp_path / "none").exists()  # reading never creates


def test_other_revision_says_what_to_run(tmp_path: Path, catalogue: Catalogue) -> None:
    layout = Layout.at(catalogue.bind(tmp_path / "db"))
    upgrade(layout)
    sql(layout.root, "update alembic_version set version_num = '0000'")
    with pytest.raises(DatabaseError, match=r"revision 0000, this glueloc needs .*glueloc db upgrade --db"):
        open_database(Layout.at(layout.root))


def test_sqlite_file_without_schema_is_refused(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    sqlite3.connect(tmp_path / "db" / "glueloc.sqlite").close()
    with pytest.raises(DatabaseError, match="holds no glueloc schema"):
        open_database(Layout.at(tmp_path / "db"))
