"""A writing command as an audited run: the writer lock, a run row, its outcome recorded.

``glueloc reindex`` and ``glueloc train`` are each one step under the lock whose run row
says what was asked and how it ended — completed, failed with its message, or
interrupted — so ``inspect`` shows every change to a database's derived stores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from glueloc.core.errors import DatabaseError
from glueloc.core.version import __version__
from glueloc.storage.database import Database, open_database
from glueloc.storage.garbage import collect_garbage
from glueloc.storage.layout import Layout
from glueloc.storage.lock import WriterLock
from glueloc.storage.models import IndexRun, utcnow

logger = logging.getLogger(__name__)

T = TypeVar("T")


def audited_run(layout: Layout, command: str, arguments: dict[str, Any],
                step: Callable[[Database, int], T], describe: Callable[[T], str | None] = lambda _: None) -> T:
    """Run ``step(db, run_id)`` under the writer lock as a recorded run of ``command``."""
    if not layout.root.is_dir():  # the lock file would be created inside it: say what is wrong instead
        raise DatabaseError(f"no glueloc database at {layout.root} (run `glueloc index` to create one)")
    with WriterLock(layout):
        db = open_database(layout)
        try:
            with db.session() as session, session.begin():
                collect_garbage(db, session)
                run = IndexRun(command=command, arguments=arguments, outcome="running", glueloc_version=__version__)
                session.add(run)
            outcome, message = "failed", None
            try:
                result = step(db, run.id)
                outcome, message = "completed", describe(result)
            except BaseException as exc:  # KeyboardInterrupt too: record it, then re-raise
                outcome = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
                message = f"{type(exc).__name__}: {exc}"[:500]
                raise
            finally:
                with db.session() as session, session.begin():
                    live = session.get(IndexRun, run.id)
                    assert live is not None
                    live.outcome, live.finished_at, live.message = outcome, utcnow(), message
        finally:
            db.close()
    return result
