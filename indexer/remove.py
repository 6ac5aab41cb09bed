"""``glueloc remove``: retire images from a database (a museum rehangs, a photo was mislabelled).

A removal is one unit of work that lands whole or not at all, with the same commit
protocol as an index batch (indexer.pipeline), under the same writer lock:

1. validate every name (as the labels CSV's names are: no path escapes) and look them
   up; names that are not indexed are reported, not fatal, unless none is indexed;
2. write new FAISS files without the removed ids — the global vectors' and, when the
   database has one, the retrieval model's (temporary name, fsync, rename);
3. in one SQLite transaction: delete the image rows and their ``coordinate_changes``
   (whose foreign key needs the image; their content is copied into the run's record),
   delete the ``feature_shards`` / ``vector_shards`` rows that no live image points to
   any more, point ``store_state`` at the new FAISS files, and record the run
   (``command="remove"``, the names asked, what was retired, the outcome, the names not
   found as rejections) — and commit;
4. delete the files the catalogue no longer references (``storage.garbage``): the old
   FAISS files and the shards left without a live image.

Killed before the commit, the catalogue is exactly as before (not even a run row is
left: the run is recorded by the commit that removes) and the new FAISS file is an
unreferenced leftover that the next writer or ``audit --repair`` deletes; killed after
it, the removal is complete and only step 4's files are left over, harmless the same way.

Shard files are immutable and never rewritten, so a shard that still holds a live image
keeps the HDF5 groups of the images retired from it (and so does a vector shard). The
run's record says exactly which: its ``arguments["retired"]`` lists, for each removed
image, its name, content hash, position, the feature shard and vector shard files it
was in, the run that indexed it and its coordinate changes. The audit accepts a group
that no row owns only when a remove run retired that name from that very file
(``storage.audit.retired_groups``); any other orphan is still an error. This needs no
schema change, and the retired features are still on disk until their whole shard is
collected (or rebuilt by ``audit --repair``): a removal takes an image out of the
database, it does not shred its features.

Removing every image is refused: an empty database has nothing to localise against,
and its codebook would describe images it no longer holds. Index the new images first,
then remove the old ones, or start a new database with another ``--db``.

A removed name can be indexed again (``glueloc index`` sees it as new).
"""

from __future__ import annotations

import csv
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from glueloc.core.errors import DatabaseError, GluelocError, StorageWriteError
from glueloc.core.labels import MAX_PROBLEMS_SHOWN, LabelsError, check_name, open_csv
from glueloc.core.version import __version__
from glueloc.indexer import vote_index
from glueloc.indexer.pipeline import write_failed
from glueloc.storage.audit import REMOVE_COMMAND, RETIRED_KEY
from glueloc.storage.database import Database, open_database
from glueloc.storage.garbage import collect_garbage
from glueloc.storage.layout import Layout
from glueloc.storage.lock import WriterLock
from glueloc.storage.models import (CoordinateChange, FeatureShard, Image, IndexRun, Rejection,
                                    VectorShard, VoteSegment, utcnow)
from glueloc.storage.vectors import VectorIndex

logger = logging.getLogger(__name__)

#: Ids per ``IN (...)`` clause: well under SQLite's bound-parameter limit on every version.
CHUNK = 500

T = TypeVar("T")


@dataclass
class RemoveSummary:
    """What one ``glueloc remove`` did."""

    run_id: int
    removed: int
    not_found: list[str] = field(default_factory=list)
    shards_collected: int = 0  # feature shards left without a live image: row dropped, file deleted
    vector_shards_collected: int = 0  # the same for vector shards
    faiss_file: str | None = None  # the FAISS file the database names now
    seconds: float = 0.0


@dataclass(frozen=True)
class _Target:
    """An image row to remove, with what its record in the run needs."""

    id: int
    name: str
    sha256: str
    x: float
    y: float
    run_id: int
    shard_id: int
    shard: str
    vector_shard_id: int | None
    vector_shard: str | None


def _chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


@contextmanager
def _name_checker() -> Iterator[Callable[[str], str | None]]:
    """``check_name`` as the labels CSV applies it, but against an empty folder.

    A name to remove is never opened, so only the name itself can make it unsafe: in a
    fresh empty folder nothing below it exists, no symlink can lead out, and the check
    is exactly the labels' rules on the text (no '..', no absolute path, normal form...).
    """
    with tempfile.TemporaryDirectory(prefix="glueloc-names-") as empty:
        root = Path(empty).resolve()
        yield lambda name: check_name(name, root)[1]


def _refuse(problems: list[str]) -> None:
    shown = problems[:MAX_PROBLEMS_SHOWN]
    more = len(problems) - len(shown)
    raise GluelocError("\n".join(shown + ([f"... and {more} more problems"] if more else [])))


def validate_names(names: Iterable[str]) -> list[str]:
    """The names once each, in order; refuses (listing every problem) if any is unsafe.

    Names are checked before the database is opened, so a bad list changes nothing.
    """
    unique: list[str] = []
    seen: set[str] = set()
    problems: list[str] = []
    with _name_checker() as problem_of:
        for name in names:
            if name in seen:
                continue  # the same name on the command line and in --csv: harmless
            seen.add(name)
            problem = problem_of(name)
            if problem:
                problems.append(problem)
            else:
                unique.append(name)
    if problems:
        _refuse(problems)
    if not unique:
        raise GluelocError("no image names given: name them, or pass a CSV with a 'name' column")
    return unique


def read_names(csv_path: Path) -> list[str]:
    """The names of a CSV with a ``name`` column (extra columns, such as x and y, ignored).

    Accepts the labels CSV itself (core.labels) or any list with that header, under the
    same rules: UTF-8 (a byte-order mark tolerated), every row as many fields as the
    header, safe names. Every problem is listed, with its line, before anything is done.
    """
    csv_path = Path(csv_path)
    header, reader = open_csv(csv_path, "names file", "a header with a 'name' column")
    columns = [c.strip().lower() for c in header]
    if columns.count("name") != 1:
        what = "repeats" if columns.count("name") else "lacks"
        raise GluelocError(f"{csv_path.name}: header {','.join(header)!r} {what} the column 'name'")
    where = columns.index("name")
    names: list[str] = []
    problems: list[str] = []
    with _name_checker() as problem_of:
        try:
            for fields in reader:
                line = reader.line_num
                if not fields or all(not f.strip() for f in fields):
                    continue
                if len(fields) != len(header):
                    problems.append(f"line {line}: {len(fields)} fields, header has {len(header)}")
                    continue
                problem = problem_of(fields[where])
                if problem:
                    problems.append(f"line {line}: {problem}")
                else:
                    names.append(fields[where])
        except csv.Error as exc:
            problems.append(f"line {reader.line_num}: malformed CSV ({exc})")
    if problems:
        raise LabelsError(csv_path, problems)
    if not names:
        raise GluelocError(f"{csv_path.name}: no names after the header")
    return names


def remove_images(layout: Layout, names: Sequence[str], arguments: Mapping[str, Any]) -> RemoveSummary:
    """Remove the images called ``names`` in one commit (see the module docstring).

    ``arguments`` are the command's arguments as given, recorded with the run, which
    sets their ``names`` (every name asked, once, command line and CSV together)
    and ``retired`` keys. Names not indexed are returned in ``not_found``; raises
    :class:`GluelocError` when none is indexed, when every image would go, or when a name
    is unsafe, changing nothing.
    """
    started = time.perf_counter()
    wanted = validate_names(names)
    if not layout.root.is_dir():
        raise DatabaseError(f"no glueloc database at {layout.root}")
    try:
        with WriterLock(layout):
            db = open_database(layout)
            try:
                # As JSON will store them (a Path given becomes its text), before anything is written.
                recorded = json.loads(json.dumps(dict(arguments), default=str))
                summary = _remove_locked(db, wanted, recorded)
            finally:
                db.close()
    except Exception as exc:
        if isinstance(exc, GluelocError) or not write_failed(exc):
            raise
        detail = " ".join(str(exc).split())[:160]
        raise StorageWriteError(
            f"could not write to {layout.root} (disk full or a file-size limit? {type(exc).__name__}: {detail}); "
            "nothing was removed: free space and run the same command again"
        ) from exc
    summary.seconds = time.perf_counter() - started
    return summary


def _targets(session: Session, names: list[str]) -> dict[str, _Target]:
    found: dict[str, _Target] = {}
    for chunk in _chunks(names):
        rows = session.execute(
            select(Image.id, Image.name, Image.sha256, Image.x, Image.y, Image.run_id, Image.shard_id,
                   FeatureShard.filename, Image.vector_shard_id, VectorShard.filename)
            .join(FeatureShard, Image.shard_id == FeatureShard.id)
            .outerjoin(VectorShard, Image.vector_shard_id == VectorShard.id)
            .where(Image.name.in_(chunk))
        ).all()
        found.update((row[1], _Target(*row)) for row in rows)
    return found


def _remove_locked(db: Database, wanted: list[str], arguments: dict[str, Any]) -> RemoveSummary:
    root = db.layout.root
    started_at = utcnow()
    published: list[str] = []
    try:
        with db.session() as session, session.begin():
            state = db.state(session)
            found = _targets(session, wanted)
            if not found:
                example = f" (e.g. {wanted[0]!r})" if len(wanted) > 1 else f" ({wanted[0]!r})"
                raise GluelocError(f"none of the {len(wanted)} name(s) given is indexed in {root}{example}: nothing removed")
            total = session.scalar(select(func.count()).select_from(Image)) or 0
            if len(found) >= total:
                raise GluelocError(
                    f"refusing to remove all {total} image(s) of {root}: a database needs at least one image to "
                    "localise against; index the new images first, or start a new database with another --db")
            leftovers = collect_garbage(db, session)  # before publishing: it would take our new file for garbage
            if leftovers:
                logger.info("removed %d leftover file(s) of interrupted runs", leftovers)
            targets = [found[name] for name in wanted if name in found]
            not_found = [name for name in wanted if name not in found]
            faiss = None if state is None else _faiss_without(
                db, state.faiss_file, state.faiss_count, [t.id for t in targets if t.vector_shard_id is not None])
            if faiss is not None:
                published.append(faiss[0])
            # Every image has a vector in the retrieval model's index once the model exists.
            model_faiss = None if state is None or state.model_id is None else _faiss_without(
                db, state.model_faiss_file, state.model_faiss_count, [t.id for t in targets])
            if model_faiss is not None:
                published.append(model_faiss[0])
            # Vote segments holding any target are replaced by ones without it (before the rows go).
            segments_added, _ = vote_index.rewrite_without(db, session, [t.id for t in targets])
            published += segments_added
            retired = _retire(session, targets)
            shards = _collect_rows(session, FeatureShard, Image.shard_id, {t.shard_id for t in targets})
            vector_shards = _collect_rows(session, VectorShard, Image.vector_shard_id,
                                          {t.vector_shard_id for t in targets if t.vector_shard_id is not None})
            if faiss is not None:
                assert state is not None
                state.faiss_file, state.faiss_count = faiss
            if model_faiss is not None:
                assert state is not None
                state.model_faiss_file, state.model_faiss_count = model_faiss
            outcome = "completed_with_rejections" if not_found else "completed"
            message = (f"removed {len(targets)} image(s); {len(not_found)} name(s) not indexed; collected "
                       f"{shards} feature shard(s) and {vector_shards} vector shard(s)")
            run = IndexRun(command=REMOVE_COMMAND, arguments={**arguments, "names": wanted, RETIRED_KEY: retired},
                           images_dir=None, started_at=started_at, finished_at=utcnow(), rejected=len(not_found),
                           outcome=outcome, message=message, glueloc_version=__version__)
            session.add(run)
            session.flush()
            session.add_all(Rejection(run_id=run.id, name=name, reason=f"{name}: not indexed in {root}")
                            for name in not_found)
            faiss_file = state.faiss_file if state is not None else None
        # Committed: the removal is complete. What the catalogue no longer names goes now.
    except BaseException:
        _discard_unless_current(db, published)
        raise
    with db.session() as session, session.begin():
        collect_garbage(db, session)
    for name in not_found:
        logger.info("not indexed: %s", name)
    logger.info("run %d: %s", run.id, message)
    return RemoveSummary(run_id=run.id, removed=len(targets), not_found=not_found, shards_collected=shards,
                         vector_shards_collected=vector_shards, faiss_file=faiss_file)


def _faiss_without(db: Database, faiss_file: str | None, faiss_count: int, image_ids: list[int]) -> tuple[str, int] | None:
    """Publish a new FAISS file without the vectors of ``image_ids``; (its name, its count), or None if unchanged."""
    ids = np.array(image_ids, dtype=np.int64)
    if faiss_file is None or not len(ids):
        return None  # no vectors yet (the first codebook is not trained): FAISS has nothing of them
    path = db.layout.vectors_dir / faiss_file
    try:
        index = VectorIndex.load(path)
    except RuntimeError as exc:
        raise DatabaseError(f"FAISS file {path.name} is unreadable ({str(exc).splitlines()[0]}); "
                            "run `glueloc audit --repair` first") from None
    if index.count != faiss_count:
        raise DatabaseError(f"FAISS file {path.name} does not match the catalogue; run `glueloc audit --repair` first")
    ids = ids[np.isin(ids, index.ids())]  # the others are pending, never merged into it (storage.pending)
    if not len(ids):
        return None
    before = index.count
    smaller = index.remove(ids)  # the exact index in place, HNSW rebuilt
    if smaller.count != before - len(ids):
        raise DatabaseError(f"FAISS kept {smaller.count} of {before} vectors after removing {len(ids)}")
    return smaller.save_new(db.layout.vectors_dir), smaller.count


def _retire(session: Session, targets: list[_Target]) -> list[dict[str, Any]]:
    """Delete the targets' rows; returns their records for the run (what the audit trail keeps)."""
    changes: dict[int, list[dict[str, Any]]] = {}
    ids = [t.id for t in targets]
    for chunk in _chunks(ids):
        for change in session.scalars(select(CoordinateChange).where(CoordinateChange.image_id.in_(chunk))
                                      .order_by(CoordinateChange.id)):
            changes.setdefault(change.image_id, []).append({
                "run_id": change.run_id, "from": [change.old_x, change.old_y], "to": [change.new_x, change.new_y],
                "at": change.changed_at.isoformat(timespec="seconds")})
        session.execute(delete(CoordinateChange).where(CoordinateChange.image_id.in_(chunk)))
        session.execute(delete(Image).where(Image.id.in_(chunk)), execution_options={"synchronize_session": False})
    return [{"id": t.id, "name": t.name, "sha256": t.sha256, "x": t.x, "y": t.y, "run_id": t.run_id,
             "shard": t.shard, "vector_shard": t.vector_shard, "coordinate_changes": changes.get(t.id, [])}
            for t in targets]


def _collect_rows(session: Session, model: type[FeatureShard] | type[VectorShard], column: Any,
                  shard_ids: set[int]) -> int:
    """Drop the rows of the shards among ``shard_ids`` that no image points to any more."""
    emptied = [sid for sid in sorted(shard_ids)
               if session.scalar(select(Image.id).where(column == sid).limit(1)) is None]
    for chunk in _chunks(emptied):
        session.execute(delete(model).where(model.id.in_(chunk)), execution_options={"synchronize_session": False})
    return len(emptied)


def _discard_unless_current(db: Database, published: list[str]) -> None:
    """After a failure, delete the FAISS file this run published unless the catalogue names it.

    Only a commit that went through can name it; then it must stay. If the catalogue
    cannot be read now, the file is left for the next writer, which deletes it as garbage.
    """
    if not published:
        return
    try:
        with db.session() as session:
            state = db.state(session)
            current = {state.faiss_file, state.model_faiss_file} if state is not None else set()
            current |= set(session.scalars(select(VoteSegment.filename)))
    except Exception as exc:
        logger.warning("could not check the catalogue after a failed remove (%s); leaving %s for the next writer",
                       exc, ", ".join(published))
        return
    for name in published:
        if name not in current:
            (db.layout.vectors_dir / name).unlink(missing_ok=True)
