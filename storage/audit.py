"""Check every invariant across SQLite, HDF5 and FAISS — and repair what is derivable.

The invariants, with SQLite as the source of truth:

* the schema is at the latest revision and ``store_state`` exists once images do;
* every image row was made by the database's extractor and points to a registered shard;
* every registered shard file exists, opens, and holds exactly the groups of its rows,
  each with keypoints/scores/descriptors/image_size/global_descriptor of the recorded
  shapes (``--deep``: and the file's bytes still hash to the recorded sha256);
* the FAISS file named in ``store_state`` exists, has the recorded count and dimension,
  and holds exactly the image ids (``--deep``: with the vectors stored in HDF5);
* ``--deep``: every image file still on disk hashes to its recorded sha256.

Findings are *errors* (the stores disagree: exit 1) or *notes* (harmless facts an
auditor should see, such as leftovers of an interrupted run that the next writer
deletes). ``repair`` rebuilds the FAISS index from HDF5 and deletes leftovers; rows
whose features are gone are reported as not derivable.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from glueloc.errors import DatabaseError
from glueloc.images import sha256_file
from storage.database import Database, open_database
from storage.features import image_groups
from storage.garbage import collect_garbage, find_garbage
from storage.layout import Layout
from storage.lock import WriterLock, is_locked
from storage.models import FeatureShard, Image, IndexRun, StoreState
from storage.vectors import VectorIndex

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" or "note"
    code: str  # stable identifier, e.g. "shard-missing"
    message: str


@dataclass
class AuditReport:
    images: int = 0
    shards: int = 0
    vectors: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def clean(self) -> bool:
        return not self.errors

    def error(self, code: str, message: str) -> None:
        self.findings.append(Finding("error", code, message))

    def note(self, code: str, message: str) -> None:
        self.findings.append(Finding("note", code, message))

    def to_dict(self) -> dict:
        return {"clean": self.clean, "images": self.images, "shards": self.shards, "vectors": self.vectors,
                "findings": [asdict(f) for f in self.findings]}


def _check_shards(db: Database, session: Session, state: StoreState | None, report: AuditReport, deep: bool) -> dict[int, np.ndarray]:
    """Check shard files against rows; returns the global vectors read, by image id."""
    rows_by_shard: dict[int, list[Image]] = defaultdict(list)
    for image in session.scalars(select(Image)):
        rows_by_shard[image.shard_id].append(image)
    vectors: dict[int, np.ndarray] = {}
    for shard in session.scalars(select(FeatureShard).order_by(FeatureShard.id)):
        report.shards += 1
        rows = rows_by_shard.pop(shard.id, [])
        path = db.layout.features_dir / shard.filename
        if not path.exists():
            report.error("shard-missing", f"shard {shard.filename} is missing: {len(rows)} image(s) have no features")
            continue
        if deep and sha256_file(path) != shard.sha256:
            report.error("shard-changed", f"shard {shard.filename} no longer matches its recorded sha256")
        try:
            with h5py.File(path, "r", locking=False) as handle:
                groups = set(image_groups(handle))
                for image in rows:
                    if image.name not in groups:
                        report.error("features-missing", f"{image.name}: no features in shard {shard.filename}")
                        continue
                    problem = _check_group(handle[image.name], image, state)
                    if problem:
                        report.error("features-bad", f"{image.name}: {problem}")
                    else:
                        vectors[image.id] = handle[image.name]["global_descriptor"][()]
                for orphan in sorted(groups - {image.name for image in rows}):
                    report.error("features-orphan", f"shard {shard.filename} holds features of {orphan!r}, which no row owns")
        except (OSError, KeyError) as exc:
            report.error("shard-unreadable", f"shard {shard.filename} is unreadable ({exc}): {len(rows)} image(s) affected")
    for shard_id, rows in rows_by_shard.items():
        report.error("shard-unregistered", f"{len(rows)} image(s) point to shard id {shard_id}, which is not registered")
    return vectors


def _check_group(group: h5py.Group, image: Image, state: StoreState | None) -> str | None:
    try:
        n = image.num_keypoints
        if group["keypoints"].shape != (n, 2):
            return f"keypoints {group['keypoints'].shape}, expected ({n}, 2)"
        if group["scores"].shape != (n,):
            return f"scores {group['scores'].shape}, expected ({n},)"
        if group["descriptors"].ndim != 2 or group["descriptors"].shape[1] != n:
            return f"descriptors {group['descriptors'].shape}, expected (D, {n})"
        if tuple(group["image_size"][()]) != (image.width, image.height):
            return f"image_size {tuple(group['image_size'][()])}, expected ({image.width}, {image.height})"
        if state is not None and group["global_descriptor"].shape != (state.global_dim,):
            return f"global_descriptor {group['global_descriptor'].shape}, expected ({state.global_dim},)"
    except KeyError as exc:
        return f"dataset missing ({exc})"
    return None


def _check_faiss(db: Database, state: StoreState | None, image_ids: set[int], stored: dict[int, np.ndarray],
                 report: AuditReport, deep: bool) -> None:
    if state is None or state.faiss_file is None:
        if image_ids:
            report.error("faiss-missing", f"{len(image_ids)} images but no FAISS index is recorded")
        return
    path = db.layout.vectors_dir / state.faiss_file
    if not path.exists():
        report.error("faiss-missing", f"FAISS file {state.faiss_file} is missing (derivable: `glueloc audit --repair`)")
        return
    try:
        index = VectorIndex.load(path)
    except RuntimeError as exc:
        report.error("faiss-unreadable", f"FAISS file {state.faiss_file} is unreadable ({str(exc).splitlines()[0]})")
        return
    report.vectors = index.count
    ids = index.ids()
    if index.dim != state.global_dim:
        report.error("faiss-dim", f"FAISS dimension {index.dim}, expected {state.global_dim}")
    if index.count != state.faiss_count:
        report.error("faiss-count", f"FAISS holds {index.count} vectors, store_state records {state.faiss_count}")
    id_set = set(ids.tolist())
    if len(id_set) != len(ids):
        report.error("faiss-duplicate", f"FAISS holds {len(ids) - len(id_set)} duplicate id(s)")
    if id_set - image_ids:
        report.error("faiss-orphan", f"FAISS holds {len(id_set - image_ids)} id(s) with no image row")
    if image_ids - id_set:
        report.error("faiss-incomplete", f"{len(image_ids - id_set)} image(s) have no FAISS vector")
    if deep and index.count and index.dim == state.global_dim:
        matrix = index.vectors()
        wrong = [i for i, v in zip(ids.tolist(), matrix) if i in stored and not np.allclose(v, stored[i], atol=1e-5)]
        if wrong:
            report.error("faiss-stale", f"{len(wrong)} FAISS vector(s) differ from the HDF5 global descriptors")


def _check_image_files(session: Session, report: AuditReport) -> None:
    """Re-hash each image file still where its index run found it."""
    roots = dict(session.execute(select(IndexRun.id, IndexRun.images_dir)).all())
    missing = 0
    for image in session.scalars(select(Image)):
        root = roots.get(image.run_id)
        path = Path(root) / image.name if root else None
        if path is None or not path.is_file():
            missing += 1
            continue
        if sha256_file(path) != image.sha256:
            report.error("image-changed", f"{image.name}: file at {path} no longer matches the indexed content")
    if missing:
        report.note("image-absent", f"{missing} indexed image file(s) are no longer at their original path (not re-hashed)")


def audit(layout: Layout, deep: bool = False) -> AuditReport:
    """Check every invariant; never writes."""
    db = open_database(layout)
    report = AuditReport()
    try:
        with db.session() as session:
            state = db.state(session)
            report.images = session.scalar(select(func.count()).select_from(Image)) or 0
            if state is None and report.images:
                report.error("state-missing", "images exist but store_state is empty")
            if state is not None:
                other = session.scalar(select(func.count()).select_from(Image).where(
                    (Image.extractor != state.extractor) | (Image.extractor_version != state.extractor_version)))
                if other:
                    report.error("extractor-mixed", f"{other} image(s) were not made by {state.extractor} v{state.extractor_version}")
            stored = _check_shards(db, session, state, report, deep)
            image_ids = set(session.scalars(select(Image.id)))
            _check_faiss(db, state, image_ids, stored, report, deep)
            if deep:
                _check_image_files(session, report)
            writing = is_locked(layout.lock_path)
            garbage = find_garbage(layout, session)
            if garbage:
                when = "an index run is writing now" if writing else "left by an interrupted run"
                report.note("leftover-files", f"{len(garbage)} unreferenced file(s) ({when}); the next index run or `audit --repair` deletes them")
            running = session.scalars(select(IndexRun.id).where(IndexRun.outcome == "running")).all()
            if running and not writing:
                report.note("run-interrupted", f"index run(s) {', '.join(map(str, running))} stopped without finishing; their committed batches are complete")
    finally:
        db.close()
    return report


def repair(layout: Layout) -> list[str]:
    """Rebuild what is derivable (FAISS from HDF5, leftovers removed); returns what was done and what was not."""
    actions: list[str] = []
    with WriterLock(layout.lock_path):
        db = open_database(layout)
        try:
            before = audit(layout)
            with db.session() as session, session.begin():
                removed = collect_garbage(db, session)
                if removed:
                    actions.append(f"removed {removed} unreferenced file(s)")
            faiss_codes = {"faiss-missing", "faiss-unreadable", "faiss-dim", "faiss-count", "faiss-duplicate",
                           "faiss-orphan", "faiss-incomplete", "faiss-stale"}
            if any(f.code in faiss_codes for f in before.errors) or _faiss_stale(layout):
                actions.append(_rebuild_faiss(db))
            for finding in before.errors:
                if finding.code not in faiss_codes:
                    actions.append(f"not derivable, left as is: {finding.message}")
        finally:
            db.close()
    return actions


def _faiss_stale(layout: Layout) -> bool:
    return any(f.code == "faiss-stale" for f in audit(layout, deep=True).errors)


def _rebuild_faiss(db: Database) -> str:
    """A new FAISS file from the global vectors of every image whose features are readable."""
    with db.session() as session, session.begin():
        state = session.get(StoreState, 1)
        if state is None:
            raise DatabaseError("no store_state: nothing to rebuild from")
        index = VectorIndex.empty(state.global_dim)
        ids: list[int] = []
        vectors: list[np.ndarray] = []
        skipped = 0
        rows = session.execute(select(Image.id, Image.name, FeatureShard.filename).join(FeatureShard)).all()
        by_shard: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for image_id, name, filename in rows:
            by_shard[filename].append((image_id, name))
        for filename, members in by_shard.items():
            try:
                with h5py.File(db.layout.features_dir / filename, "r", locking=False) as handle:
                    for image_id, name in members:
                        try:
                            vectors.append(handle[name]["global_descriptor"][()].astype(np.float32))
                            ids.append(image_id)
                        except KeyError:
                            skipped += 1
            except OSError:
                skipped += len(members)
        if ids:
            index.add(np.array(ids), np.stack(vectors))
        old = state.faiss_file
        state.faiss_file = index.save_new(db.layout.vectors_dir)
        state.faiss_count = index.count
    if old and old != state.faiss_file:
        (db.layout.vectors_dir / old).unlink(missing_ok=True)
    note = f"; {skipped} image(s) without readable features left out" if skipped else ""
    return f"rebuilt FAISS index from HDF5: {index.count} vectors{note}"
