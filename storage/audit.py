"""Check every invariant across SQLite, HDF5 and FAISS (the repair is ``indexer.repair``).

The invariants, with SQLite as the source of truth:

* the schema is at the latest revision and ``store_state`` exists once images do;
* every image row was made by the database's extractor and points to a registered shard;
* every registered shard file exists, opens, and holds exactly the groups of its rows,
  each with keypoints/scores/descriptors/image_size of the recorded shapes (``--deep``:
  and the file's bytes still hash to the recorded sha256) — and, since shards are never
  rewritten, the groups of images a ``glueloc remove`` run retired from that very file
  (the run lists them, see :func:`retired_groups`); any other group no row owns is an error;
* the current codebook's file exists and makes vectors of ``store_state.global_dim``;
  every image has a global vector in a vector shard of the *current* codebook (until the
  first codebook is trained, waiting images are a note), each shard holding exactly its
  images' vectors (and those retired from it, as for feature shards);
* the FAISS file named in ``store_state`` exists, has the recorded count and dimension,
  and holds only ids of images with vectors, once each (``--deep``: the same vectors as
  the vector shards); images it lacks were committed since the last merge (a note:
  readers add them from the vector shards, storage.pending);
* in a database that embeds images, every image group holds its raw embedding; the
  current retrieval model's file exists and reads (``--deep``: hashes to its sha256),
  its FAISS file exists with the recorded count and only the images' ids
  (``--deep``: the vectors the model makes of the stored embeddings);
* once the database has a vote codec, every image is in exactly one vote segment of the
  current codec, each segment file exists with its recorded size and descriptor count
  (``--deep``: its sha256, and exactly its images' ids); before the first codec, a note;
* ``--deep``: every image file still on disk hashes to its recorded sha256.

Findings are *errors* (the stores disagree: exit 1) or *notes* (harmless facts an
auditor should see, such as leftovers of an interrupted run that the next writer
deletes). The audit never writes; ``indexer.repair`` acts on its findings.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from glueloc.core.errors import DatabaseError
from glueloc.vision.images import sha256_file
from glueloc.storage.database import Database, open_database
from glueloc.storage.features import image_groups
from glueloc.storage.garbage import find_garbage
from glueloc.storage.layout import Layout
from glueloc.storage.lock import is_locked
from glueloc.storage.embeddings import stored_embeddings
from glueloc.storage.features import EMBEDDING
from glueloc.storage.globals import read_codebook, read_cross_fit, read_model, read_vector_shapes, read_vectors
from glueloc.storage.models import (Codebook, FeatureShard, Image, IndexRun, RetrievalModel, StoreState, VectorShard,
                                    VoteCodec, VoteSegment)
from glueloc.storage.vote_segments import open_segment, read_codec, segment_ids
from glueloc.storage.vectors import VectorIndex

logger = logging.getLogger(__name__)

#: ``IndexRun.command`` of a ``glueloc remove`` run (indexer.remove), and the key of its
#: arguments that lists the images it retired, each with its ``name`` and the ``shard``
#: and ``vector_shard`` files it was in.
REMOVE_COMMAND = "remove"
RETIRED_KEY = "retired"
#: Outcomes of a remove run; the run row is written by the commit that removes, so it
#: never has another (a remove killed before its commit leaves no row at all).
REMOVE_OUTCOMES = ("completed", "completed_with_rejections")


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


def retired_groups(session: Session) -> dict[str, set[str]]:
    """Per shard file (feature or vector shard), the image names remove runs retired from it.

    A shard is immutable, so removing some of its images leaves their groups in the file:
    those, and only those, may stay without a row. Keyed by file name (unique per file,
    never reused), so a name removed from one shard and indexed again into another is
    accepted only in the first. Reading it back is lenient about the JSON's shape: an
    entry that does not say both a name and a file accepts nothing.
    """
    retired: dict[str, set[str]] = defaultdict(set)
    runs = session.scalars(select(IndexRun.arguments).where(IndexRun.command == REMOVE_COMMAND,
                                                            IndexRun.outcome.in_(REMOVE_OUTCOMES)))
    for arguments in runs:
        entries = arguments.get(RETIRED_KEY) if isinstance(arguments, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str):
                continue
            for key in ("shard", "vector_shard"):
                if isinstance(entry.get(key), str):
                    retired[entry[key]].add(name)
    return retired


def shard_findings(features_dir: Path, shard: FeatureShard, rows: list[Image], deep: bool,
                   retired: Collection[str] = (), embedded: bool = False) -> list[Finding]:
    """What is wrong with one feature shard as the store of ``rows`` (empty: nothing).

    ``retired``: names whose groups the shard may still hold (``retired_groups``);
    ``embedded``: the database embeds images, so each group must hold its embedding.
    Shared by the audit and by ``audit --repair``'s re-extraction, which rebuilds a shard
    exactly when this finds something wrong with it.
    """
    found = AuditReport()
    path = features_dir / shard.filename
    if not path.exists():
        found.error("shard-missing", f"shard {shard.filename} is missing: {len(rows)} image(s) have no features")
        return found.findings
    if deep and sha256_file(path) != shard.sha256:
        found.error("shard-changed", f"shard {shard.filename} no longer matches its recorded sha256")
    try:
        with h5py.File(path, "r", locking=False) as handle:
            groups = set(image_groups(handle))
            for image in rows:
                if image.name not in groups:
                    found.error("features-missing", f"{image.name}: no features in shard {shard.filename}")
                    continue
                problem = _check_group(handle[image.name], image, embedded)
                if problem:
                    found.error("features-bad", f"{image.name}: {problem}")
            for orphan in sorted(groups - {image.name for image in rows} - set(retired)):
                found.error("features-orphan", f"shard {shard.filename} holds features of {orphan!r}, which no row owns")
    except (OSError, KeyError) as exc:
        found.error("shard-unreadable", f"shard {shard.filename} is unreadable ({exc}): {len(rows)} image(s) affected")
    return found.findings


def _check_shards(db: Database, session: Session, report: AuditReport, deep: bool) -> None:
    """Check feature shard files against the image rows."""
    rows_by_shard: dict[int, list[Image]] = defaultdict(list)
    for image in session.scalars(select(Image)):
        rows_by_shard[image.shard_id].append(image)
    retired = retired_groups(session)
    state = db.state(session)
    embedded = state is not None and state.embedder is not None
    for shard in session.scalars(select(FeatureShard).order_by(FeatureShard.id)):
        report.shards += 1
        report.findings.extend(shard_findings(db.layout.features_dir, shard, rows_by_shard.pop(shard.id, []), deep,
                                              retired.get(shard.filename, ()), embedded))
    for shard_id, rows in rows_by_shard.items():
        report.error("shard-unregistered", f"{len(rows)} image(s) point to shard id {shard_id}, which is not registered")


def _check_group(group: h5py.Group, image: Image, embedded: bool = False) -> str | None:
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
        if embedded and group[EMBEDDING].ndim != 1:
            return f"embedding {group[EMBEDDING].shape}, expected one vector"
    except KeyError as exc:
        return f"dataset missing ({exc})"
    return None


def _check_vectors(db: Database, session: Session, state: StoreState | None, report: AuditReport,
                   deep: bool, index: VectorIndex | None = None) -> None:
    """Check the codebook and the vector shards, one shard at a time.

    A plain audit reads each shard's names and shapes only; ``--deep`` reads its vectors and
    compares them with the FAISS ``index`` (when it opened) before the next shard, so
    neither keeps every vector in memory.
    """
    images = session.execute(select(Image.id, Image.name, Image.vector_shard_id)).all()
    if state is None:
        return
    in_index = set(index.ids().tolist()) if index is not None and deep else set()
    stale = 0
    codebook = session.get(Codebook, state.codebook_id) if state.codebook_id else None
    waiting = [i for i in images if i.vector_shard_id is None]
    if codebook is None:
        if images:
            report.note("vectors-pending", f"{len(images)} image(s) wait for the first codebook: the next "
                        "`glueloc index` or `glueloc reindex` trains it and adds their global vectors")
        return
    for row in session.scalars(select(Codebook)):
        path = db.layout.vectors_dir / row.filename
        if not path.exists():
            severity = report.error if row.id == codebook.id else report.note
            severity("codebook-missing", f"codebook {row.id} file {row.filename} is missing")
        elif deep and sha256_file(path) != row.sha256:
            report.error("codebook-changed", f"codebook {row.id} file {row.filename} no longer matches its sha256")
    try:
        model = read_codebook(db.layout.vectors_dir / codebook.filename)
        if model.dim != state.global_dim:
            report.error("codebook-dim", f"codebook {codebook.id} makes {model.dim}-d vectors, store_state says {state.global_dim}")
    except (OSError, KeyError):
        report.error("codebook-unreadable", f"current codebook {codebook.id} ({codebook.filename}) is unreadable")
    if waiting:
        report.error("vectors-missing", f"{len(waiting)} image(s) have no global vector of codebook {codebook.id}")
    by_shard: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for image_id, name, shard_id in images:
        if shard_id is not None:
            by_shard[shard_id].append((image_id, name))
    retired = retired_groups(session)
    for shard in session.scalars(select(VectorShard)):
        members = by_shard.pop(shard.id, [])
        if shard.codebook_id != codebook.id:
            report.error("vectors-stale", f"vector shard {shard.filename} was made by codebook {shard.codebook_id}, "
                         f"not the current {codebook.id}")
        path = db.layout.vectors_dir / shard.filename
        if not path.exists():
            report.error("vectors-shard-missing", f"vector shard {shard.filename} is missing ({len(members)} image(s))")
            continue
        if deep and sha256_file(path) != shard.sha256:
            report.error("vectors-shard-changed", f"vector shard {shard.filename} no longer matches its sha256")
        try:
            if deep:  # the vectors themselves, compared with FAISS below
                made_by, stored = read_vectors(path)
                shapes = {name: vector.shape for name, vector in stored.items()}
            else:
                (made_by, shapes), stored = read_vector_shapes(path), {}
        except (OSError, KeyError) as exc:
            report.error("vectors-shard-unreadable", f"vector shard {shard.filename} is unreadable ({exc})")
            continue
        if made_by != session.get(Codebook, shard.codebook_id).filename:  # type: ignore[union-attr]
            report.error("vectors-stale", f"vector shard {shard.filename} names codebook file {made_by!r}")
        for image_id, name in members:
            if name not in shapes:
                report.error("vectors-missing", f"{name}: no vector in {shard.filename}")
            elif shapes[name] != (state.global_dim,):
                report.error("vectors-bad", f"{name}: vector of shape {shapes[name]}, expected ({state.global_dim},)")
            elif image_id in in_index and index is not None and index.dim == state.global_dim:
                if not np.allclose(index.index.reconstruct(int(image_id)), stored[name], atol=1e-5):
                    stale += 1
        orphans = set(shapes) - {name for _, name in members} - retired.get(shard.filename, set())
        if orphans:
            report.error("vectors-orphan", f"vector shard {shard.filename} holds {len(orphans)} vector(s) no image row points to")
    for shard_id, members in by_shard.items():
        report.error("vectors-unregistered", f"{len(members)} image(s) point to vector shard id {shard_id}, which is not registered")
    if stale:
        report.error("faiss-stale", f"{stale} FAISS vector(s) differ from the HDF5 global descriptors")


def _check_faiss(db: Database, state: StoreState | None, image_ids: set[int], report: AuditReport) -> VectorIndex | None:
    """The global vectors' FAISS file against the rows; returns it (for the deep comparison
    with the vector shards, ``_check_vectors``) when it opened."""
    if state is None or state.faiss_file is None:
        if image_ids:
            report.error("faiss-missing", f"{len(image_ids)} images with vectors but no FAISS index is recorded")
        return None
    path = db.layout.vectors_dir / state.faiss_file
    if not path.exists():
        report.error("faiss-missing", f"FAISS file {state.faiss_file} is missing (derivable: `glueloc audit --repair`)")
        return None
    try:
        index = VectorIndex.load(path)
    except RuntimeError as exc:
        report.error("faiss-unreadable", f"FAISS file {state.faiss_file} is unreadable ({str(exc).splitlines()[0]})")
        return None
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
    if image_ids - id_set:  # committed since the last merge: readers add them from the vector shards
        report.note("faiss-pending", f"{len(image_ids - id_set)} image(s) have vectors not merged into the FAISS "
                    "file yet (queries add them from the vector shards; the next index run merges them)")
    return index


def _check_model(db: Database, session: Session, state: StoreState | None, report: AuditReport, deep: bool) -> None:
    """The retrieval models' files, and the current one's FAISS file against the image rows."""
    if state is None:
        return
    if state.model_id is not None and state.embedder is None:
        report.error("model-without-embeddings", f"retrieval model {state.model_id} is current, but the database "
                     "records no image embedder")
        return
    current = None
    for row in session.scalars(select(RetrievalModel)):
        path = db.layout.vectors_dir / row.filename
        is_current = row.id == state.model_id
        if not path.exists():
            (report.error if is_current else report.note)("model-missing", f"retrieval model {row.id} file "
                                                          f"{row.filename} is missing")
            continue
        if deep and sha256_file(path) != row.sha256:
            (report.error if is_current else report.note)("model-changed", f"retrieval model {row.id} file "
                                                          f"{row.filename} no longer matches its sha256")
        if is_current:
            try:
                current = read_model(path)
                read_cross_fit(path)
            except (OSError, KeyError, ValueError) as exc:
                report.error("model-unreadable", f"retrieval model {row.id} file {row.filename} is unreadable "
                             f"({type(exc).__name__})")
    if state.model_id is None:
        return
    if not state.model_faiss_file or not (db.layout.vectors_dir / state.model_faiss_file).exists():
        report.error("model-faiss-missing", f"the FAISS file of retrieval model {state.model_id} "
                     f"({state.model_faiss_file}) is missing (derivable: `glueloc audit --repair`)")
        return
    try:
        index = VectorIndex.load(db.layout.vectors_dir / state.model_faiss_file)
    except RuntimeError as exc:
        report.error("model-faiss-unreadable", f"FAISS file {state.model_faiss_file} is unreadable "
                     f"({str(exc).splitlines()[0]})")
        return
    image_ids = set(session.scalars(select(Image.id)))
    ids = set(index.ids().tolist())
    if index.count != state.model_faiss_count:
        report.error("model-faiss-count", f"model FAISS holds {index.count} vectors, store_state records "
                     f"{state.model_faiss_count}")
    if current is not None and index.dim != current.dim:
        report.error("model-faiss-dim", f"model FAISS dimension {index.dim}, the model makes {current.dim}")
        return
    if ids - image_ids:
        report.error("model-faiss-orphan", f"model FAISS holds {len(ids - image_ids)} id(s) with no image row")
    if image_ids - ids:  # committed since the last merge: readers project them from the stored embeddings
        report.note("model-faiss-pending", f"{len(image_ids - ids)} image(s) have no vector in the model FAISS "
                    "file yet (queries project their stored embeddings; the next index run merges them)")
    if deep and current is not None and index.count and not (ids - image_ids):
        try:
            stored_ids, _, raw = stored_embeddings(db)
        except DatabaseError:  # a damaged shard: the shard checks report it
            return
        where = {int(i): n for n, i in enumerate(stored_ids)}
        in_index_order = raw[[where[int(i)] for i in index.ids()]]
        if not np.allclose(index.vectors(), current.project(in_index_order), atol=1e-4):
            report.error("model-faiss-stale", "model FAISS vectors differ from the model's projections of the "
                         "stored embeddings")


def _check_votes(db: Database, session: Session, state: StoreState | None, report: AuditReport, deep: bool) -> None:
    """The descriptor-vote codec and segments (storage.vote_segments) against the image rows.

    A plain audit checks what the catalogue records of each file (present, size, count,
    images) and reads only the small codec; ``--deep`` also hashes every segment and reads
    the image ids it holds.
    """
    if state is None:
        return
    images = dict(session.execute(select(Image.id, Image.num_keypoints)).all())
    if state.vote_codec_id is None:
        if images and state.codebook_id is not None:
            report.note("votes-pending", f"{len(images)} image(s) have no persisted descriptor-vote index (queries "
                        "index them in memory): the next `glueloc index` or `glueloc audit --repair` builds it")
        return
    codec = session.get(VoteCodec, state.vote_codec_id)
    if codec is None:
        report.error("vote-codec-unregistered", f"store_state names vote codec {state.vote_codec_id}, which is not registered")
        return
    path = db.layout.vectors_dir / codec.filename
    if not path.exists():
        report.error("vote-codec-missing", f"vote codec file {codec.filename} is missing (derivable: `glueloc audit --repair`)")
    else:
        if deep and sha256_file(path) != codec.sha256:
            report.error("vote-codec-changed", f"vote codec file {codec.filename} no longer matches its sha256")
        try:
            trained = read_codec(path)
            if trained.nlist != codec.cells:
                report.error("vote-codec-cells", f"vote codec file {codec.filename} has {trained.nlist} cells, "
                             f"its row records {codec.cells}")
        except RuntimeError as exc:
            report.error("vote-codec-unreadable", f"vote codec file {codec.filename} is unreadable "
                         f"({str(exc).splitlines()[0][:120]})")
    members: dict[int, list[int]] = defaultdict(list)
    for image_id, segment_id in session.execute(select(Image.id, Image.vote_segment_id)):
        if segment_id is None:
            continue
        members[segment_id].append(image_id)
    waiting = len(images) - sum(len(ids) for ids in members.values())
    if waiting:
        report.error("votes-missing", f"{waiting} image(s) are in no descriptor-vote segment (derivable: "
                     "`glueloc audit --repair`)")
    for segment in session.scalars(select(VoteSegment).order_by(VoteSegment.id)):
        held = members.pop(segment.id, [])
        if segment.codec_id != codec.id:
            report.error("vote-segment-stale", f"vote segment {segment.filename} was encoded by codec {segment.codec_id}, "
                         f"not the current {codec.id}")
        if len(held) != segment.num_images:
            report.error("vote-segment-images", f"vote segment {segment.filename} records {segment.num_images} "
                         f"image(s), {len(held)} point to it")
        if sum(images[i] for i in held) != segment.num_descriptors:
            report.error("vote-segment-count", f"vote segment {segment.filename} records {segment.num_descriptors} "
                         f"descriptors, its images have {sum(images[i] for i in held)}")
        where = db.layout.vectors_dir / segment.filename
        if not where.exists():
            report.error("vote-segment-missing", f"vote segment {segment.filename} is missing ({len(held)} image(s); "
                         "derivable: `glueloc audit --repair`)")
            continue
        if where.stat().st_size != segment.size_bytes:
            report.error("vote-segment-truncated", f"vote segment {segment.filename} holds {where.stat().st_size} "
                         f"bytes, its row records {segment.size_bytes}")
            continue
        if deep and sha256_file(where) != segment.sha256:
            report.error("vote-segment-changed", f"vote segment {segment.filename} no longer matches its sha256")
            continue
        try:
            opened = open_segment(where)
        except RuntimeError as exc:
            report.error("vote-segment-unreadable", f"vote segment {segment.filename} is unreadable "
                         f"({str(exc).splitlines()[0][:120]})")
            continue
        if opened.ntotal != segment.num_descriptors:
            report.error("vote-segment-count", f"vote segment {segment.filename} holds {opened.ntotal} descriptors, "
                         f"its row records {segment.num_descriptors}")
        elif deep:
            ids = set(segment_ids(opened).tolist())
            described = {i for i in held if images[i]}
            if ids != described:
                report.error("vote-segment-ids", f"vote segment {segment.filename} holds descriptors of "
                             f"{len(ids - described)} image(s) not assigned to it and lacks {len(described - ids)}")
    for segment_id, held in members.items():
        report.error("vote-segment-unregistered", f"{len(held)} image(s) point to vote segment id {segment_id}, "
                     "which is not registered")


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
        with db.read_snapshot() as session:  # one committed state, even beside a writer
            state = db.state(session)
            report.images = session.scalar(select(func.count()).select_from(Image)) or 0
            if state is None and report.images:
                report.error("state-missing", "images exist but store_state is empty")
            if state is not None:
                other = session.scalar(select(func.count()).select_from(Image).where(
                    (Image.extractor != state.extractor) | (Image.extractor_version != state.extractor_version)))
                if other:
                    report.error("extractor-mixed", f"{other} image(s) were not made by {state.extractor} v{state.extractor_version}")
            _check_shards(db, session, report, deep)
            image_ids = set(session.scalars(select(Image.id).where(Image.vector_shard_id.is_not(None))))
            index = _check_faiss(db, state, image_ids, report)
            _check_vectors(db, session, state, report, deep, index)
            del index
            _check_model(db, session, state, report, deep)
            _check_votes(db, session, state, report, deep)
            if deep:
                _check_image_files(session, report)
            writing = is_locked(layout)
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
