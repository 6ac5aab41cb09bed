"""What the reliability suites share: the CLI in a subprocess, database checks, figures.

The suites are slow (minutes) and marked ``slow``, so the default test command leaves
them out; ``make reliability`` runs them. Each suite writes its figures as JSON to
``$GLUELOC_RELIABILITY_OUT`` (default ``reliability-out/`` in the repository) and
``bench/reliability_report.py`` turns them into the table in docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from glueloc.storage.audit import audit
from glueloc.storage.catalogue import RECORD_NAME
from glueloc.storage.layout import Layout
from tests.helpers import sql

REPO = Path(__file__).resolve().parents[2]


def figures_dir() -> Path:
    out = Path(os.environ.get("GLUELOC_RELIABILITY_OUT", REPO / "reliability-out"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def record(suite: str, figures: dict) -> None:
    """Write one suite's figures (overwrites the previous run's)."""
    (figures_dir() / f"{suite}.json").write_text(json.dumps(figures, indent=1, default=str))


def glueloc_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "glueloc", *args]


def environment() -> dict[str, str]:
    # One thread each: the suites run several processes at once on small machines.
    return dict(os.environ, OMP_NUM_THREADS="1")  # glueloc as installed: nothing from PYTHONPATH


def run_cli(*args: str, timeout: float = 300, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(glueloc_command(*args), capture_output=True, text=True, env=environment(),
                          timeout=timeout, **kwargs)  # type: ignore[call-overload]


def start_cli(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(glueloc_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=environment(), **kwargs)  # type: ignore[call-overload]


def index_args(csv: Path, images: Path, db: Path, batch_size: int) -> list[str]:
    """``glueloc index`` with SIFT (weight-free, fast) and small batches: many commits to hit."""
    return ["index", str(csv), "--images", str(images), "--db", str(db), "--batch-size", str(batch_size),
            "--no-progress", "--extractor", "sift"]


def _read(db: Path, statement: str) -> list[tuple]:
    """Rows of a read-only statement: a bound directory's catalogue through SQLAlchemy, the
    default SQLite file opened read-only (so reading never creates it)."""
    if (db / RECORD_NAME).exists():
        return sql(db, statement)
    with sqlite3.connect(f"file:{db / 'glueloc.sqlite'}?mode=ro", uri=True, timeout=30) as connection:
        return connection.execute(statement).fetchall()


def run_count(db: Path) -> int:
    """How many runs the database has recorded (-1: no database, or no schema yet)."""
    try:
        return _read(db, "select count(*) from index_runs")[0][0]
    except (sqlite3.Error, SQLAlchemyError):
        return -1


def image_names(db: Path) -> list[str]:
    """Every image row's name, duplicates kept (a duplicate is a finding)."""
    return [row[0] for row in _read(db, "select name from images")]


def deep_audit_clean(db: Path) -> tuple[bool, list[str]]:
    report = audit(Layout.at(db), deep=True)
    return report.clean, [finding.message for finding in report.errors]


def labels(csv: Path) -> list[str]:
    return [line.split(",")[0] for line in csv.read_text().splitlines()[1:]]


def one_line_errors(stderr: str) -> bool:
    """A clear failure: no traceback, every line an ``error:``/``warning``/progress line."""
    return "Traceback" not in stderr and all(
        line.startswith(("error:", "warning", "interrupted", "rejected")) or not line.strip()
        for line in stderr.splitlines()
    )
