"""When the persisted descriptor-vote index (storage.vote_segments) is written, and what commits it.

* **A batch** of an index run encodes its images' descriptors into one new segment, named
  in the batch's own commit (:func:`batch_segment`), so a query opened after that commit
  finds every committed image in a segment.
* **After each batch and at the end of a run** small segments are merged
  (:func:`compact`): whenever :data:`FANOUT` segments share a size tier (tier = how many
  times ``FANOUT`` divides their size), they become one, in a commit of its own. Each
  descriptor is then rewritten about log_FANOUT(segments) times over a build instead of
  once per batch, and a query probes a few segments, not hundreds.
* **At the end of a run** (:func:`ensure`): a database without a codec (a new one, or one
  migrated from revision 0004) or one grown :data:`~glueloc.storage.vote_segments.GROWTH`
  times past its codec's training gets a new codec, with cells for its size, and every
  image re-encoded in one commit; images that no segment holds (a first run stopped
  after its batches) are encoded into new segments.

Every file is written and published before the commit that names it; files a commit
stops naming are deleted after it (a query that mapped them keeps its mapping). Killed
anywhere, the catalogue names complete segments only, and the next writer deletes the
rest (storage.garbage).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from glueloc.core.errors import DatabaseError
from glueloc.storage.database import Database
from glueloc.storage.features import FeatureReader
from glueloc.storage.models import FeatureShard, Image, StoreState, VoteCodec, VoteSegment
from glueloc.storage.vote_segments import (CODEC_PREFIX, SEGMENT_PREFIX, cells_for, codec_conf, encode, merge_segments,
                                           outgrown, read_codec, train_codec, train_size, write_index)

logger = logging.getLogger(__name__)

#: Segments of one size tier merged together (see the module docstring).
FANOUT = 4
#: Segments are not merged past this many descriptors (about 2.4 GB in memory while a
#: merge writes it), and a full rebuild writes segments of at most this many.
MAX_SEGMENT_DESCRIPTORS = 1 << 25


@dataclass(frozen=True)
class VoteIndexResult:
    codec_id: int
    trained: bool  # a new codec was trained (and every image re-encoded)
    encoded: int  # images encoded into new segments
    seconds: float


def load_codec(db: Database, session: Session) -> tuple[VoteCodec, faiss.IndexIVF] | None:
    """The current codec row and its trained index, or None when the database has none."""
    state = db.state(session)
    if state is None or state.vote_codec_id is None:
        return None
    row = session.get(VoteCodec, state.vote_codec_id)
    assert row is not None
    try:
        return row, read_codec(db.layout.vectors_dir / row.filename)
    except RuntimeError as exc:
        raise DatabaseError(f"vote codec file {row.filename} is unreadable ({str(exc).splitlines()[0][:120]}); "
                            "run `glueloc audit --repair`") from None


def batch_segment(db: Database, codec: faiss.IndexIVF,
                  images: Sequence[tuple[int, np.ndarray]]) -> tuple[str, str, int]:
    """Encode one batch's descriptors into a new published segment: (file, sha256, descriptors)."""
    return _publish(db, encode(codec, images))


def _publish(db: Database, segment: faiss.IndexIVF) -> tuple[str, str, int]:
    """Write a segment to its content-named file: (file, sha256, descriptors)."""
    published = write_index(db.layout.vectors_dir, SEGMENT_PREFIX, segment)
    return published.filename, published.sha256, int(segment.ntotal)


def register_segment(session: Session, db_dir: Path, codec_id: int, run_id: int, published: tuple[str, str, int],
                     image_ids: Sequence[int]) -> VoteSegment:
    """Name a published segment in the caller's transaction and point its images at it."""
    filename, sha, descriptors = published
    row = VoteSegment(filename=filename, sha256=sha, codec_id=codec_id, num_images=len(image_ids),
                      num_descriptors=descriptors, size_bytes=(db_dir / filename).stat().st_size, run_id=run_id)
    session.add(row)
    session.flush()
    for chunk in _chunks(list(image_ids), 900):
        session.execute(update(Image).where(Image.id.in_(chunk)).values(vote_segment_id=row.id))
    return row


def ensure(db: Database, run_id: int, conf: dict[str, Any] | None = None) -> VoteIndexResult | None:
    """Give every image a segment of a codec fit for the database's size (module docstring)."""
    started = time.perf_counter()
    with db.session() as session:
        state = db.state(session)
        if state is None or session.scalar(select(Image.id).limit(1)) is None:
            return None
        total = int(session.scalar(select(func.sum(Image.num_keypoints))) or 0)
        current = session.get(VoteCodec, state.vote_codec_id) if state.vote_codec_id is not None else None
        waiting = session.scalar(select(func.count()).select_from(Image).where(Image.vote_segment_id.is_(None))) or 0
    if total == 0:  # featureless photos only (blank walls): nothing to vote with yet
        return None
    if current is None or outgrown(current.cells, current.database_descriptors, total, current.config):
        return rebuild(db, run_id, conf if current is None else {**current.config, **(conf or {})})
    if waiting:
        with db.session() as session:
            codec = load_codec(db, session)
        assert codec is not None
        encoded = _encode_waiting(db, run_id, codec)
        compact(db, run_id)
        return VoteIndexResult(current.id, False, encoded, time.perf_counter() - started)
    compact(db, run_id)
    return VoteIndexResult(current.id, False, 0, time.perf_counter() - started)


def rebuild(db: Database, run_id: int, conf: dict[str, Any] | None = None) -> VoteIndexResult:
    """Train a new codec for the database's size and re-encode every image, in one commit."""
    started = time.perf_counter()
    conf = codec_conf(conf)
    members = _images_by_shard(db)
    total = sum(n for items in members.values() for _, _, n in items)
    if not members:
        raise DatabaseError(f"database {db.layout.root} holds no images yet")
    written: list[str] = []
    try:
        with FeatureReader(db.layout.features_dir) as reader:
            cells = cells_for(total, conf)
            sample = _sample(reader, members, total, train_size(cells, conf), int(conf["seed"]))
            codec = train_codec(sample, cells, conf)
            codec_file = write_index(db.layout.vectors_dir, CODEC_PREFIX, codec)
            written.append(codec_file.filename)
            logger.info("vote codec: %d cells trained on %d of %d descriptors", codec.nlist, len(sample), total)
            segments: list[tuple[tuple[str, str, int], list[int]]] = []
            for chunk in _segment_chunks(members):
                published = batch_segment(db, codec, [(i, reader.descriptors(s, n)) for s, i, n in chunk])
                written.append(published[0])
                segments.append((published, [i for _, i, _ in chunk]))
        with db.session() as session, session.begin():
            old = list(session.scalars(select(VoteSegment.filename)))
            old_codecs = list(session.scalars(select(VoteCodec.filename)))
            # Trained again on the same descriptors, a codec is the same file (content-named): its row stays.
            row = session.scalar(select(VoteCodec).where(VoteCodec.filename == codec_file.filename))
            if row is None:
                row = VoteCodec(filename=codec_file.filename, sha256=codec_file.sha256, config=dict(conf),
                                cells=codec.nlist, trained_descriptors=len(sample), database_descriptors=total,
                                seconds=round(time.perf_counter() - started, 2), run_id=run_id)
                session.add(row)
                session.flush()
            session.execute(update(Image).values(vote_segment_id=None))
            session.execute(delete(VoteSegment))
            for published, image_ids in segments:
                register_segment(session, db.layout.vectors_dir, row.id, run_id, published, image_ids)
            live = session.get(StoreState, 1)
            assert live is not None
            live.vote_codec_id = row.id
            codec_id = row.id
    except BaseException:
        for name in written:  # never named by a commit: nobody can be reading them
            (db.layout.vectors_dir / name).unlink(missing_ok=True)
        raise
    _unlink(db, [name for name in old + old_codecs if name not in written])
    encoded = sum(len(ids) for _, ids in segments)
    logger.info("vote index: %d images in %d segment(s), %.1f s", encoded, len(segments), time.perf_counter() - started)
    return VoteIndexResult(codec_id, True, encoded, time.perf_counter() - started)


def compact(db: Database, run_id: int) -> int:
    """Merge segments tier by tier while any tier holds :data:`FANOUT` of them; returns merges made."""
    merges = 0
    while True:
        with db.session() as session:
            state = db.state(session)
            if state is None or state.vote_codec_id is None:
                return merges
            rows = list(session.scalars(select(VoteSegment).where(VoteSegment.codec_id == state.vote_codec_id)))
            group = _mergeable(rows)
            if not group:
                return merges
            codec = load_codec(db, session)
            assert codec is not None
        names = [row.filename for row in group]
        published = _publish(db, merge_segments(codec[1], [db.layout.vectors_dir / name for name in names]))
        try:
            with db.session() as session, session.begin():
                ids = list(session.scalars(select(Image.id).where(Image.vote_segment_id.in_([r.id for r in group]))))
                register_segment(session, db.layout.vectors_dir, codec[0].id, run_id, published, ids)
                session.flush()
                session.execute(delete(VoteSegment).where(VoteSegment.id.in_([r.id for r in group])))
        except BaseException:
            (db.layout.vectors_dir / published[0]).unlink(missing_ok=True)
            raise
        _unlink(db, names)
        merges += 1
        logger.debug("merged %d vote segments (%d descriptors)", len(group), published[2])


def rewrite_without(db: Database, session: Session, image_ids: Sequence[int]) -> tuple[list[str], list[str]]:
    """In the caller's transaction (``glueloc remove``), replace each segment holding any of
    ``image_ids`` by one without them; returns (files now named, files no longer named)."""
    segment_ids = set(session.scalars(select(Image.vote_segment_id).where(Image.id.in_(list(image_ids)),
                                                                         Image.vote_segment_id.is_not(None))))
    if not segment_ids:
        return [], []
    codec = load_codec(db, session)
    assert codec is not None
    drop = np.asarray(sorted(image_ids), dtype=np.int64)
    added: list[str] = []
    dropped: list[str] = []
    for segment in session.scalars(select(VoteSegment).where(VoteSegment.id.in_(segment_ids))).all():
        kept = list(session.scalars(select(Image.id).where(Image.vote_segment_id == segment.id,
                                                           Image.id.not_in(list(image_ids)))))
        merged = merge_segments(codec[1], [db.layout.vectors_dir / segment.filename], drop)
        dropped.append(segment.filename)
        session.execute(update(Image).where(Image.vote_segment_id == segment.id).values(vote_segment_id=None))
        session.delete(segment)
        session.flush()
        if kept:
            published = _publish(db, merged)
            added.append(published[0])
            register_segment(session, db.layout.vectors_dir, codec[0].id, segment.run_id, published, kept)
    return added, dropped


def drop_damaged(db: Database, filenames: Iterable[str]) -> int:
    """Forget damaged segments (``audit --repair``), and any segment id no row registers:
    their images wait to be encoded again (:func:`ensure`)."""
    names = list(filenames)
    with db.session() as session, session.begin():
        rows = list(session.scalars(select(VoteSegment).where(VoteSegment.filename.in_(names))))
        for row in rows:
            session.execute(update(Image).where(Image.vote_segment_id == row.id).values(vote_segment_id=None))
            session.delete(row)
        session.flush()
        session.execute(update(Image).where(Image.vote_segment_id.is_not(None),
                                            Image.vote_segment_id.not_in(select(VoteSegment.id)))
                        .values(vote_segment_id=None))
    return len(rows)


def _mergeable(rows: Sequence[VoteSegment]) -> list[VoteSegment]:
    """The :data:`FANOUT` smallest segments of the lowest tier that has that many, or none."""
    tiers: dict[int, list[VoteSegment]] = defaultdict(list)
    for row in rows:
        if row.num_descriptors < MAX_SEGMENT_DESCRIPTORS:
            tiers[_tier(row.num_descriptors)].append(row)
    for tier in sorted(tiers):
        group = sorted(tiers[tier], key=lambda r: (r.num_descriptors, r.id))
        if len(group) >= FANOUT:
            return group[:FANOUT]
    return []


def _tier(descriptors: int) -> int:
    tier, size = 0, max(1, descriptors)
    while size >= FANOUT:
        size //= FANOUT
        tier += 1
    return tier


def _encode_waiting(db: Database, run_id: int, codec: tuple[VoteCodec, faiss.IndexIVF]) -> int:
    """Encode the images no segment holds into new segments, each in its own commit."""
    members = _images_by_shard(db, waiting_only=True)
    encoded = 0
    with FeatureReader(db.layout.features_dir) as reader:
        for chunk in _segment_chunks(members):
            published = batch_segment(db, codec[1], [(i, reader.descriptors(s, n)) for s, i, n in chunk])
            try:
                with db.session() as session, session.begin():
                    register_segment(session, db.layout.vectors_dir, codec[0].id, run_id, published, [i for _, i, _ in chunk])
            except BaseException:
                (db.layout.vectors_dir / published[0]).unlink(missing_ok=True)
                raise
            encoded += len(chunk)
    return encoded


def _images_by_shard(db: Database, waiting_only: bool = False) -> dict[str, list[tuple[int, str, int]]]:
    """Per feature shard file, its images as (image id, name, descriptors), in id order."""
    query = (select(FeatureShard.filename, Image.id, Image.name, Image.num_keypoints).join(FeatureShard)
             .order_by(Image.id))
    if waiting_only:
        query = query.where(Image.vote_segment_id.is_(None))
    grouped: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    with db.session() as session:
        for filename, image_id, name, keypoints in session.execute(query):
            grouped[filename].append((image_id, name, int(keypoints)))
    return grouped


def _segment_chunks(members: dict[str, list[tuple[int, str, int]]]) -> Iterable[list[tuple[str, int, str]]]:
    """(shard, id, name) triples in runs of at most :data:`MAX_SEGMENT_DESCRIPTORS` descriptors."""
    chunk: list[tuple[str, int, str]] = []
    size = 0
    for shard, items in members.items():
        for image_id, name, keypoints in items:
            if chunk and size + keypoints > MAX_SEGMENT_DESCRIPTORS:
                yield chunk
                chunk, size = [], 0
            chunk.append((shard, image_id, name))
            size += keypoints
    if chunk:
        yield chunk


def _sample(reader: FeatureReader, members: dict[str, list[tuple[int, str, int]]], total: int, wanted: int,
            seed: int) -> np.ndarray:
    """Up to ``wanted`` stored descriptors, drawn evenly from the images (seeded)."""
    rng = np.random.default_rng(seed)
    flat = [(shard, name, n) for shard, items in members.items() for _, name, n in items if n]
    share = min(1.0, wanted / max(1, total))
    images = flat if share >= 1.0 else [flat[i] for i in sorted(rng.choice(len(flat), size=min(
        len(flat), max(1, int(round(len(flat) * share * 4)))), replace=False))]
    per_image = max(1, wanted // max(1, len(images)))
    rows = []
    for shard, name, _ in images:
        descriptors = reader.descriptors(shard, name)
        if len(descriptors) > per_image:
            descriptors = descriptors[np.sort(rng.choice(len(descriptors), size=per_image, replace=False))]
        rows.append(descriptors)
    return np.concatenate(rows)[:wanted]


def _unlink(db: Database, names: Iterable[str]) -> None:
    for name in names:
        (db.layout.vectors_dir / name).unlink(missing_ok=True)


def _chunks(items: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
