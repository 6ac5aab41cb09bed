"""Which SQL catalogue a database directory belongs to, recorded in the directory itself.

A glueloc database is a directory of immutable files plus a catalogue that names them.
By default the catalogue is ``glueloc.sqlite`` inside the directory, and nothing more is
needed. A catalogue on a server (PostgreSQL) lives elsewhere, so the directory records
it when it is created, in ``catalogue.json``::

    {"url": "postgresql+psycopg://glueloc@db.example/campus", "directory_id": "3f0c..."}

and the catalogue records the same ``directory_id`` (table ``catalogue_owner``). Why
both: shards, FAISS files and garbage collection belong to one directory, so two
directories sharing one catalogue would delete each other's files. Every open checks that
the two ids agree, and refuses with one line when they do not (a copied directory, a
mistyped URL), instead of a process-wide setting silently sending every ``--db`` to the
same catalogue.

Passwords are never written to the record: the server's usual mechanisms
(``PGPASSWORD``, ``~/.pgpass``, a client certificate) supply them to every command.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from glueloc.core.errors import DatabaseError
from glueloc.storage.files import atomic_publish

logger = logging.getLogger(__name__)

RECORD_NAME = "catalogue.json"
SQLITE_NAME = "glueloc.sqlite"


@dataclass(frozen=True)
class CatalogueRecord:
    """What a database directory says about its catalogue."""

    url: str  # without a password
    directory_id: str


def default_url(root: Path) -> str:
    return f"sqlite:///{root / SQLITE_NAME}"


def without_password(url: str) -> str:
    """``url`` with any password removed (the record must not hold secrets)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(f"not a database URL: {url!r} (e.g. postgresql+psycopg://user@host/dbname)") from None
    # URL.set(password=None) keeps the password (None there means "unchanged"): build it anew.
    bare = URL.create(parsed.drivername, username=parsed.username, host=parsed.host, port=parsed.port,
                      database=parsed.database, query=parsed.query)
    return bare.render_as_string(hide_password=False)


def same_catalogue(a: str, b: str) -> bool:
    """Whether two URLs name one catalogue (a password given for one run does not matter)."""
    return without_password(a) == without_password(b)


def read_record(root: Path) -> CatalogueRecord | None:
    path = root / RECORD_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return CatalogueRecord(url=str(data["url"]), directory_id=str(data["directory_id"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatabaseError(f"{path} is unreadable ({type(exc).__name__}); it should name the directory's catalogue "
                            f'as {{"url": ..., "directory_id": ...}}') from None


def write_record(root: Path, url: str) -> CatalogueRecord:
    """Bind a new directory to the catalogue at ``url``: written whole (temporary file,
    fsync, rename) before anything else is, so a crash leaves a directory that is either
    unbound or bound, never half."""
    record = CatalogueRecord(url=without_password(url), directory_id=uuid.uuid4().hex)
    if make_url(url).password is not None:
        logger.warning("the catalogue's password is not recorded in %s: later commands take it from PGPASSWORD "
                       "or ~/.pgpass", root / RECORD_NAME)
    root.mkdir(parents=True, exist_ok=True)
    temp = root / f".tmp-{uuid.uuid4().hex}-{RECORD_NAME}"
    try:
        temp.write_text(json.dumps({"url": record.url, "directory_id": record.directory_id}), encoding="utf-8")
        atomic_publish(temp, root / RECORD_NAME)
    finally:
        temp.unlink(missing_ok=True)
    return record
