"""Where a database's catalogue lives, and what keeps two writers (or two directories) apart.

The catalogue URL is recorded in the directory when it is created and checked on every
open (storage.catalogue); the writer lock crosses machines when the catalogue is on a
server (storage.lock); a query's reads form one snapshot on either catalogue.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from typer.testing import CliRunner

from glueloc.cli import app
from glueloc.core.errors import DatabaseError
from glueloc.storage.catalogue import RECORD_NAME, read_record, write_record
from glueloc.storage.database import open_database
from glueloc.storage.layout import Layout
from glueloc.storage.lock import WriterLock, is_locked
from glueloc.storage.models import Image
from tests.catalogues import Catalogue, PostgresServer
from tests.helpers import run_index, sql

runner = CliRunner()


@pytest.fixture()
def server(catalogue: Catalogue) -> PostgresServer:
    assert catalogue.server is not None
    return catalogue.server


def index_cli(workdir: Path, db: Path, *extra: str) -> object:
    return runner.invoke(app, ["index", str(workdir / "labels.csv"), "--images", str(workdir / "images"), "--db",
                               str(db), "--extractor", "sift", "--embedder", "none", "--no-progress", *extra])


def test_the_record_never_holds_a_password(tmp_path: Path) -> None:
    write_record(tmp_path, "postgresql+psycopg://glueloc:s3cret@db.example:5432/campus")
    text_ = (tmp_path / RECORD_NAME).read_text()
    assert "s3cret" not in text_ and json.loads(text_)["url"] == "postgresql+psycopg://glueloc@db.example:5432/campus"
    # The password may come with a command again; it names the same catalogue.
    assert Layout.at(tmp_path, "postgresql+psycopg://glueloc:other@db.example:5432/campus").url.endswith("/campus")
    with pytest.raises(DatabaseError, match="belongs to the catalogue"):
        Layout.at(tmp_path, "postgresql+psycopg://glueloc@db.example:5432/elsewhere")


def test_a_url_is_refused_for_a_directory_with_its_own_sqlite(indexed: Path) -> None:
    with pytest.raises(DatabaseError, match="has its own catalogue"):
        Layout.at(indexed, "postgresql+psycopg://glueloc@db.example/campus")


def test_a_directory_with_stores_but_no_catalogue_is_not_adopted(indexed: Path, workdir: Path) -> None:
    (indexed / "glueloc.sqlite").unlink()
    for leftover in indexed.glob("glueloc.sqlite-*"):
        leftover.unlink()
    shards = sorted((indexed / "features").iterdir())
    result = index_cli(workdir, indexed)
    assert result.exit_code == 2 and "holds stores (features/) but no catalogue" in result.output
    assert sorted((indexed / "features").iterdir()) == shards  # nothing collected as garbage


@pytest.mark.parametrize("catalogue", ["postgresql"], indirect=True)
def test_a_server_catalogue_is_recorded_once_and_owned_by_one_directory(workdir: Path, server: PostgresServer) -> None:
    url = server.create()
    db = workdir / "db"
    result = index_cli(workdir, db, "--catalogue", url)
    assert result.exit_code == 0, result.output
    record = read_record(db)
    assert record is not None and not (db / "glueloc.sqlite").exists()
    assert sql(db, "select directory_id from catalogue_owner") == [(record.directory_id,)]
    # Later commands need only --db; the run added nothing new.
    again = index_cli(workdir, db)
    assert again.exit_code == 0 and "added 0, skipped 24" in again.output
    # A second directory cannot take the same catalogue...
    other = index_cli(workdir, workdir / "other", "--catalogue", url)
    assert other.exit_code == 2 and "belongs to another database directory" in other.output
    assert len(other.output.strip().splitlines()) == 1
    assert not (workdir / "other" / RECORD_NAME).exists()
    # ...nor can a copy of this one, whose record names it too.
    shutil.copytree(db, workdir / "copy")
    (workdir / "copy" / RECORD_NAME).write_text(json.dumps({"url": record.url, "directory_id": "f" * 32}))
    copy = runner.invoke(app, ["audit", "--db", str(workdir / "copy")])
    assert copy.exit_code == 2 and "was the directory copied?" in copy.output
    # A different catalogue for the bound directory is refused before anything is opened.
    wrong = index_cli(workdir, db, "--catalogue", server.create())
    assert wrong.exit_code == 2 and "belongs to the catalogue" in wrong.output
    assert runner.invoke(app, ["audit", "--db", str(db), "--deep"]).exit_code == 0


@pytest.mark.parametrize("catalogue", ["postgresql"], indirect=True)
def test_the_advisory_lock_excludes_a_writer_the_file_lock_cannot_see(new_db: Path, workdir: Path) -> None:
    """Another machine: its own index.lock (flock does not cross machines), the same catalogue."""
    run_index(new_db, workdir / "labels.csv", workdir / "images")
    layout = Layout.at(new_db)
    elsewhere = replace(layout, root=workdir / "other-machine-view")
    with WriterLock(layout):
        assert is_locked(elsewhere)  # seen from the server, though its lock file is free
        with pytest.raises(DatabaseError, match="holds the writer lock"):
            WriterLock(elsewhere).acquire()
    assert not is_locked(elsewhere)
    with WriterLock(elsewhere):
        pass


@pytest.mark.parametrize("catalogue", ["postgresql"], indirect=True)
def test_a_killed_writer_leaves_no_lock_on_the_server(new_db: Path, workdir: Path) -> None:
    run_index(new_db, workdir / "labels.csv", workdir / "images")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from glueloc.storage.layout import Layout; from glueloc.storage.lock import WriterLock\n"
        f"lock = WriterLock(Layout.at({str(new_db)!r})); lock.acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert is_locked(Layout.at(new_db))
    finally:
        holder.kill()
        holder.wait()
    with WriterLock(replace(Layout.at(new_db), root=workdir / "other-machine-view")):
        pass  # the server ended the killed holder's session, and its lock with it


@pytest.mark.both_catalogues
def test_a_read_snapshot_does_not_see_later_commits(indexed: Path) -> None:
    database = open_database(Layout.at(indexed))
    try:
        with database.read_snapshot() as session:
            before = session.scalar(select(func.count()).select_from(Image))
            sql(indexed, "delete from images where id = (select max(id) from images)")  # another connection commits
            assert session.scalar(select(func.count()).select_from(Image)) == before
        with database.session() as session:
            assert session.scalar(select(func.count()).select_from(Image)) == before - 1
            assert session.execute(text("select 1")).scalar() == 1
    finally:
        database.close()


def test_the_retired_process_wide_url_is_refused_not_ignored(indexed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLUELOC_DB_URL", "postgresql+psycopg://glueloc@db.example/campus")
    result = runner.invoke(app, ["audit", "--db", str(indexed)])
    assert result.exit_code == 2 and "GLUELOC_DB_URL is no longer read" in result.output
    assert len(result.output.strip().splitlines()) == 1
