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
from glueloc.storage.audit import audit
from glueloc.storage.database import (alembic_config, head_revision, make_engine, migrating, open_database,
                                     upgrade)
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
            with migrating(engine) as (_, config):
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


def downgrade(layout: Layout, revision: str) -> None:
    """Take a database's catalogue down to ``revision`` with its rows (as an older glueloc left it)."""
    engine = make_engine(layout.url)
    try:
        with migrating(engine) as (_, config):
            command.downgrade(config, revision)
    finally:
        engine.dispose()


def test_upgrade_keeps_a_database_that_holds_data(indexed: Path) -> None:
    """From each older revision back to head with its rows in place, as `glueloc db upgrade` does.

    The empty walk above cannot catch a migration that fails on rows: 0006 first failed
    on every indexed SQLite database (a batch table rebuild under enforced foreign keys).
    """
    layout = Layout.at(indexed)

    def count(table: str) -> int:
        return sql(indexed, f"select count(*) from {table}")[0][0]

    images, segments = count("images"), count("vote_segments")
    assert images > 0 and segments > 0
    config = alembic_config(layout.url)
    older = [script.revision for script in ScriptDirectory.from_config(config).walk_revisions()][1:]
    for revision in older:
        downgrade(layout, revision)
        assert upgrade(Layout.at(indexed)) == (revision, head_revision())
        assert count("images") == images
        if revision == older[0]:  # the step users take now: every store survives it
            assert count("vote_segments") == segments
            report = audit(Layout.at(indexed), deep=True)
            assert report.clean, report.findings


def test_failed_upgrade_changes_nothing(indexed: Path, catalogue: Catalogue) -> None:
    """A migration that fails on SQLite leaves the schema as it was, DDL included (the driver
    runs a CREATE outside any transaction unless told otherwise); here the foreign-key check
    before the commit fails on a dangling reference planted with the keys off."""
    if catalogue.kind != "sqlite":
        pytest.skip("a server enforces foreign keys itself: no dangling row can be planted")
    layout = Layout.at(indexed)
    downgrade(layout, "0005")
    with sqlite3.connect(indexed / "glueloc.sqlite") as raw:  # foreign keys are off in a plain connection
        raw.execute("update images set vote_segment_id = 99999 where id = (select min(id) from images)")
    with pytest.raises(DatabaseError, match="reference is gone.*nothing was changed"):
        upgrade(layout)
    assert sql(indexed, "select version_num from alembic_version") == [("0005",)]
    assert sql(indexed, "select name from sqlite_master where name = 'catalogue_owner'") == []


def test_upgrade_clears_what_a_failed_0006_left(indexed: Path, catalogue: Catalogue) -> None:
    """The first 0006 failed on indexed SQLite databases part-way, outside a transaction,
    leaving two empty tables; the upgrade now goes through all the same."""
    if catalogue.kind != "sqlite":
        pytest.skip("only SQLite ran that DDL outside a transaction")
    layout = Layout.at(indexed)
    downgrade(layout, "0005")
    with sqlite3.connect(indexed / "glueloc.sqlite") as raw:
        raw.execute("create table catalogue_owner (id integer primary key, directory_id varchar(64) not null, "
                    "bound_at datetime not null)")
        raw.execute("create table _alembic_tmp_vote_segments (id integer primary key)")
    assert upgrade(layout) == ("0005", head_revision())
    assert sql(indexed, "select name from sqlite_master where name like '_alembic%'") == []


def test_a_table_0006_would_create_that_holds_rows_is_refused(indexed: Path, catalogue: Catalogue) -> None:
    """Only an empty leftover is dropped; a table of that name with rows is one clear error, not a traceback."""
    if catalogue.kind != "sqlite":
        pytest.skip("only SQLite ran that DDL outside a transaction")
    layout = Layout.at(indexed)
    downgrade(layout, "0005")
    with sqlite3.connect(indexed / "glueloc.sqlite") as raw:
        raw.execute("create table _alembic_tmp_vote_segments (id integer primary key)")
        raw.execute("insert into _alembic_tmp_vote_segments values (1)")
    with pytest.raises(DatabaseError, match="holds rows: not a leftover of revision 0006"):
        upgrade(layout)
    assert sql(indexed, "select version_num from alembic_version") == [("0005",)]
    assert sql(indexed, "select count(*) from _alembic_tmp_vote_segments") == [(1,)]


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
