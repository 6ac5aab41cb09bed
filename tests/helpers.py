"""Helpers the tests share (kept out of conftest so they can be imported by name)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import text

from glueloc.core.labels import read_labels
from glueloc.indexer.pipeline import IndexOptions, IndexRunner, IndexSummary
from glueloc.storage.database import make_engine
from glueloc.storage.layout import Layout


def run_index(db: Path, labels: Path, images: Path, **options: object) -> IndexSummary:
    """Index with SIFT and no image embedder unless told otherwise: weight-free and quick, so
    the suite runs anywhere; tests of the learned image ranking ask for the embedder."""
    options.setdefault("extractor", "sift")
    options.setdefault("embedder", "none")
    rows = read_labels(labels, images)
    return IndexRunner(Layout.at(db), IndexOptions(**options)).run(rows, images, {"test": True})  # type: ignore[arg-type]


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``: equal digests mean a byte-identical database."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def sql(db: Path, statement: str, params: dict | None = None) -> list[tuple]:
    """Run one SQL statement on the catalogue of database directory ``db`` (SQLite or a server)
    and commit; returns the rows of a SELECT as tuples. Tests use it to read the catalogue and
    to damage it on purpose."""
    engine = make_engine(Layout.at(db).url)
    try:
        with engine.begin() as connection:
            result = connection.execute(text(statement), params or {})
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()
