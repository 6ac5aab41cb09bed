"""The index run: labelled images -> features -> stores, incrementally and crash-safely.

A run reads the whole CSV first (a bad CSV changes nothing), sorts its rows into
*skip* (same name and content already indexed; a file whose size and mtime are those
recorded when it was hashed is not read again unless ``rehash``), *update* (same content, new
coordinates, only with ``update_coordinates``), *reject* and *new*, and then adds the
new images in batches. Each batch is one unit of work that either lands whole or not at
all:

1. decode + extract every image of the batch, and embed it with the database's image
   embedder from the same pixels (bad images are rejected one by one) — in this process,
   or with ``IndexOptions.ray`` in Ray workers that also write step 2's feature shard
   (indexer.distributed), this process staying the one committer;
2. write the batch's features and raw embeddings to a new immutable HDF5 shard, and its
   global vectors (VLAD with the database's codebook) to a vector shard (temp file,
   fsync, rename);
3. in one SQLite transaction: insert the image rows, write new FAISS files that hold
   the old vectors plus the new ones — VLAD's, and the retrieval model's projections of
   the new embeddings (temp, fsync, rename) —, point ``store_state`` at them, write the
   batch's descriptor-vote segment and name it (indexer.vote_index), update the run's
   counters — and commit; then merge small vote segments, each merge its own commit.

A new database has no codebook and no retrieval model yet: its first run commits local
features and embeddings only, then trains the codebook on them and publishes every
vector in one more commit (``indexer.reindex``), then trains the descriptor-vote codec and
publishes every image's vote segment in another (``indexer.vote_index``), then learns
the retrieval model from the labels and publishes it in another (``indexer.train``).
Killed before any of them, the next run finds it missing and trains it.

SQLite's commit is the single commit point. Killed before it, the batch left only
unreferenced files, which the next run deletes before it starts; killed after it, the
batch is complete and the next run skips it. Nothing already committed is ever
rewritten, so nothing committed can be lost.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from glueloc.core.version import __version__
from glueloc.core.errors import BadImageError, DatabaseError, GluelocError, StorageWriteError
from glueloc.vision.embedders import Embedder, load_embedder, load_recorded_embedder
from glueloc.vision.extractors import Extractor, load_extractor
from glueloc.vision.images import DEFAULT_MAX_PIXELS, DecodedImage, load_image, sha256_file
from glueloc.vision.matchers import load_matcher
from glueloc.vision.pipelines import get_pipeline
from glueloc.vision import vlad
from glueloc.core.labels import LabelRow
from glueloc.indexer import vote_index
from glueloc.indexer.distributed import RayExtraction, RayOptions, as_spec
from glueloc.indexer.extraction import ExtractedBatch, ExtractedImage, extract_image
from glueloc.indexer.reindex import rebuild_global_vectors
from glueloc.indexer.train import train_retrieval_model
from glueloc.storage.database import Database, open_database
from glueloc.storage.features import write_shard
from glueloc.storage.garbage import collect_garbage
from glueloc.storage.globals import read_codebook, read_model, write_vectors
from glueloc.storage.layout import Layout
from glueloc.storage.lock import WriterLock
from glueloc.storage.pending import add_missing_projections, add_missing_vectors, vector_rows
from glueloc.storage.models import (Codebook, CoordinateChange, FeatureShard, Image, IndexRun, Rejection, RetrievalModel,
                                    StoreState, VectorShard, VoteCodec, utcnow)
from glueloc.vision.projection import Projection
from glueloc.storage.vectors import DEFAULT_EXACT_LIMIT, VectorIndex

logger = logging.getLogger(__name__)

#: A new database's extractor: XFeat + LighterGlue separated true from false neighbours best
#: of the pipelines measured on Getty (ROC AUC 0.744) and extracts fastest (bench/matchers.py).
DEFAULT_EXTRACTOR = "xfeat"
#: A new database's image embedder (the retrieval signal that is not XFeat's); "none" for none.
DEFAULT_EMBEDDER = "effnet-lite0-gem"
NO_EMBEDDER = "none"
#: Vectors not yet in the FAISS files that make a merge worth it even in a small database.
MERGE_AT_LEAST = 1024

@dataclass(frozen=True)
class IndexOptions:
    extractor: str | None = None  # None: the database's extractor, or DEFAULT_EXTRACTOR for a new one
    extractor_conf: dict | None = None
    matcher: str | None = None  # None: the database's, or the extractor's pipeline default
    batch_size: int = 32
    update_coordinates: bool = False
    vlad_conf: dict | None = None  # VLAD options of a new database's codebook (see indexer.vlad)
    exact_limit: int = DEFAULT_EXACT_LIMIT  # FAISS stays exact up to this many vectors, then HNSW
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode_workers: int = 2
    embedder: str | None = None  # None: the database's, or DEFAULT_EMBEDDER for a new one; "none": no embeddings
    train_model: bool = True  # a run that ends without a retrieval model (a new database's first) learns one
    rehash: bool = False  # hash every indexed file again, even those whose size and mtime are unchanged
    ray: RayOptions | None = None  # extract on a Ray cluster (indexer.distributed); None: in this process


@dataclass
class IndexSummary:
    run_id: int
    total: int
    added: int = 0
    skipped: int = 0
    updated: int = 0
    rejections: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    outcome: str = "running"
    codebook_trained: int | None = None  # id of the codebook this run trained, if any
    model_trained: int | None = None  # id of the retrieval model this run trained, if any
    model_note: str | None = None  # why a first run did not train one (e.g. too few capture points)
    vote_codec_trained: int | None = None  # id of the vote codec this run trained (indexer.vote_index), if any

    @property
    def rejected(self) -> int:
        return len(self.rejections)

    @property
    def images_per_second(self) -> float:
        return self.added / self.seconds if self.seconds > 0 else 0.0


def _open_embedder(state: StoreState, options: IndexOptions) -> Embedder | None:
    """The database's image embedder, refusing another one (its embeddings would not compare)."""
    if state.embedder is None:
        if options.embedder not in (None, NO_EMBEDDER):
            raise DatabaseError(f"database was indexed without image embeddings; refusing to add {options.embedder!r} "
                                "ones to some images (index into a new --db)")
        return None
    if options.embedder not in (None, state.embedder):
        raise DatabaseError(f"database embeds images with {state.embedder!r}, not {options.embedder!r}")
    return load_recorded_embedder(state.embedder, state.embedder_version or "", state.embedder_config or {})


def _open_state(db: Database, session: Session, options: IndexOptions) -> tuple[StoreState, Extractor, Embedder | None]:
    """The database's extractor and embedder (or a new database's), refusing to mix either."""
    state = db.state(session)
    if state is None:
        embedder_name = options.embedder or DEFAULT_EMBEDDER
        embedder = None if embedder_name == NO_EMBEDDER else load_embedder(embedder_name)
        extractor = load_extractor(options.extractor or DEFAULT_EXTRACTOR, options.extractor_conf)
        default = get_pipeline(extractor.name)
        if options.matcher and options.matcher != default.matcher:
            matcher = load_matcher(options.matcher)
        else:
            matcher = load_matcher(default.matcher, default.matcher_conf)
        if extractor.name not in matcher.extractors:
            raise DatabaseError(f"matcher {matcher.name!r} cannot match {extractor.name!r} features")
        state = StoreState(
            id=1,
            extractor=extractor.name,
            extractor_version=extractor.version,
            extractor_config=extractor.conf,
            matcher=matcher.name,
            matcher_config=matcher.conf,
            global_descriptor=vlad.KIND,
            global_dim=0,  # known once the codebook is trained
            global_config=vlad.vlad_conf(options.vlad_conf),
            codebook_id=None,
            faiss_file=None,
            faiss_count=0,
            embedder=None if embedder is None else embedder.name,
            embedder_version=None if embedder is None else embedder.version,
            embedder_config=None if embedder is None else dict(embedder.conf),
            model_faiss_count=0,
        )
        session.add(state)
        return state, extractor, embedder
    wanted = options.extractor or state.extractor
    conf = dict(state.extractor_config)
    if options.extractor_conf:
        conf.update(options.extractor_conf)
    extractor = load_extractor(wanted, conf if wanted == state.extractor else options.extractor_conf)
    if (extractor.name, extractor.version, extractor.conf) != (state.extractor, state.extractor_version, state.extractor_config):
        raise DatabaseError(
            f"database holds {state.extractor} v{state.extractor_version} features {state.extractor_config}; "
            f"refusing to add {extractor.name} v{extractor.version} {extractor.conf} (use another --db)"
        )
    if options.matcher and options.matcher != state.matcher:
        raise DatabaseError(f"database was indexed for matcher {state.matcher!r}, not {options.matcher!r}")
    if options.vlad_conf:
        raise DatabaseError("VLAD options are fixed by the database's codebook: change them with `glueloc reindex --retrain`")
    return state, extractor, _open_embedder(state, options)


def _decoded(rows: list[LabelRow], max_pixels: int, workers: int) -> Iterator[tuple[LabelRow, DecodedImage | BadImageError]]:
    """Decode images in a small thread pool (Pillow releases the GIL), in CSV order."""
    window = max(4, workers * 4)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: list[tuple[LabelRow, Future[DecodedImage]]] = []
        queue = iter(rows)
        for row in queue:
            pending.append((row, pool.submit(load_image, row.path, max_pixels)))
            if len(pending) >= window:
                break
        while pending:
            row, future = pending.pop(0)
            nxt = next(queue, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(load_image, nxt.path, max_pixels)))
            try:
                yield row, future.result()
            except BadImageError as exc:
                yield row, exc.named(row.name)  # the CSV's name, not the file's (symlinks, subfolders)


_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO})
# How the libraries underneath say it when they do not pass errno on: SQLite (through
# sqlite3/SQLAlchemy; a write refused for size is its generic "disk I/O error") and HDF5
# (through h5py) put the condition in the message.
_WRITE_MESSAGES = ("database or disk is full", "disk i/o error", "no space left on device", "file too large",
                   "disk quota exceeded", "input/output error")


def write_failed(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says a write to disk failed for want of room or I/O."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _WRITE_ERRNOS:
            return True
        if any(text in str(current).lower() for text in _WRITE_MESSAGES):
            return True
        current = current.__cause__ or current.__context__
    return False


class IndexRunner:
    """Runs one ``glueloc index`` against one database directory."""

    def __init__(self, layout: Layout, options: IndexOptions, progress: Callable[[int], None] | None = None) -> None:
        self.layout = layout
        self.options = options
        self.progress = progress or (lambda n: None)
        self.cluster: RayExtraction | None = None  # the Ray workers while a --ray run extracts

    def run(self, rows: list[LabelRow], images_dir: Path, arguments: dict) -> IndexSummary:
        try:
            self.layout.make_dirs()
            with WriterLock(self.layout):
                db = open_database(self.layout, create=True)
                try:
                    return self._run_locked(db, rows, images_dir, arguments)
                finally:
                    db.close()
        except Exception as exc:
            if isinstance(exc, StorageWriteError) or not write_failed(exc):
                raise
            # Every batch commits whole or not at all (see the module docstring), so a full
            # disk is a clean stop like Ctrl-C: nothing half-written, a re-run resumes.
            detail = " ".join(str(exc).split())[:160]
            raise StorageWriteError(
                f"could not write to {self.layout.root} (disk full or a file-size limit? {type(exc).__name__}: "
                f"{detail}); committed batches are kept: free space and run the same command again"
            ) from exc

    def _run_locked(self, db: Database, rows: list[LabelRow], images_dir: Path, arguments: dict) -> IndexSummary:
        started = time.perf_counter()
        with db.session() as session, session.begin():
            state, extractor, embedder = _open_state(db, session, self.options)
            removed = collect_garbage(db, session)
            run = IndexRun(
                command="index",
                arguments=arguments,
                images_dir=str(images_dir.resolve()),
                outcome="running",
                glueloc_version=__version__,
            )
            session.add(run)
        if removed:
            logger.info("removed %d leftover file(s) of interrupted runs", removed)
        summary = IndexSummary(run_id=run.id, total=len(rows))
        try:
            new_rows = self._triage(db, run, rows, summary)
            self.progress(summary.skipped + summary.updated + summary.rejected)
            codebook = self._load_codebook(db, state)
            vectors = self._load_vectors(db, state) if codebook is not None else None
            model = self._load_model(db, state)
            with db.session() as session:
                votes = vote_index.load_codec(db, session)
            for ready in self._extracted(new_rows, state, extractor, embedder):
                for row, reason in ready.rejections:
                    self._reject(db, run, summary, row.name, reason)
                    self.progress(1)
                if ready.images:
                    vectors, model = self._commit_batch(db, run, state, codebook, vectors, model, votes, ready,
                                                        summary)
                    self.progress(len(ready.images))
            self._merge_faiss(db, state, vectors, model)
            if codebook is None and self._has_images(db):
                result = rebuild_global_vectors(db, run.id, retrain=True, exact_limit=self.options.exact_limit)
                summary.codebook_trained = result.codebook_id
            if self._has_images(db):
                voted = vote_index.ensure(db, run.id)
                summary.vote_codec_trained = voted.codec_id if voted is not None and voted.trained else None
            if embedder is not None and model is None and self.options.train_model and self._has_images(db):
                self._first_model(db, run, summary)
            summary.outcome = "completed_with_rejections" if summary.rejections else "completed"
        except BaseException as exc:  # KeyboardInterrupt / SIGTERM included: record, then re-raise
            summary.outcome = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            try:
                self._finish(db, run, summary, started, message=f"{type(exc).__name__}: {exc}"[:500])
            except Exception as finish_error:  # e.g. the disk is still full: the run row stays "running"
                logger.warning("could not record the run's outcome: %s", finish_error)
            raise
        self._finish(db, run, summary, started)
        return summary

    def _extracted(self, rows: list[LabelRow], state: StoreState, extractor: Extractor,
                   embedder: Embedder | None) -> Iterator[ExtractedBatch]:
        """The new rows, extracted in CSV order, batch by batch: here, or on a Ray cluster."""
        if self.options.ray is None:
            yield from self._extracted_here(rows, extractor, embedder)
            return
        embedder_spec = None if embedder is None else as_spec(embedder.name, embedder.version, embedder.conf)
        with RayExtraction(self.options.ray, as_spec(state.extractor, state.extractor_version, state.extractor_config),
                           embedder_spec, self.layout.features_dir, self.options.max_pixels) as cluster:
            self.cluster = cluster
            try:
                yield from cluster.batches(rows, self.options.batch_size)
            finally:
                self.cluster = None

    def _extracted_here(self, rows: list[LabelRow], extractor: Extractor,
                        embedder: Embedder | None) -> Iterator[ExtractedBatch]:
        """Decoding in a small thread pool, extraction in this process; a bad image is its own
        rejection at once, and a batch is ``batch_size`` good images."""
        batch: list[ExtractedImage] = []
        for row, decoded in _decoded(rows, self.options.max_pixels, self.options.decode_workers):
            if isinstance(decoded, BadImageError):
                yield ExtractedBatch([], [(row, str(decoded))])
                continue
            batch.append(extract_image(row, decoded, extractor, embedder))
            if len(batch) >= self.options.batch_size:
                yield ExtractedBatch(batch, [])
                batch = []
        if batch:
            yield ExtractedBatch(batch, [])

    def _triage(self, db: Database, run: IndexRun, rows: list[LabelRow], summary: IndexSummary) -> list[LabelRow]:
        """Split rows into skipped / updated / rejected (recorded now) and new (returned)."""
        with db.session() as session:
            known = {name: (image_id, sha, x, y, size, mtime) for image_id, name, sha, x, y, size, mtime in session.execute(
                select(Image.id, Image.name, Image.sha256, Image.x, Image.y, Image.file_size, Image.file_mtime_ns)
            )}
        new_rows: list[LabelRow] = []
        changes: list[tuple[int, LabelRow, float, float]] = []
        hashed: list[tuple[int, int, int]] = []  # (image id, size, mtime) of files hashed again and unchanged
        for row in rows:
            if row.name not in known:
                new_rows.append(row)
                continue
            image_id, sha, x, y, size, mtime = known[row.name]
            try:
                status = row.path.stat()
                if not self.options.rehash and (status.st_size, status.st_mtime_ns) == (size, mtime):
                    current = sha  # same name, size and mtime as when it was hashed: not read again
                else:
                    current = sha256_file(row.path)
                    if current == sha:
                        hashed.append((image_id, status.st_size, status.st_mtime_ns))
            except OSError:
                summary.rejections.append((row.name, f"{row.name}: indexed before, but the file is missing now"))
                continue
            if current != sha:
                summary.rejections.append(
                    (row.name, f"{row.name}: content changed since it was indexed (sha256 {sha[:12]} -> {current[:12]})")
                )
            elif (row.x, row.y) == (x, y):
                summary.skipped += 1
            elif self.options.update_coordinates:
                changes.append((image_id, row, x, y))
            else:
                summary.rejections.append((
                    row.name,
                    f"{row.name}: indexed at ({x:g}, {y:g}), CSV says ({row.x:g}, {row.y:g}); "
                    "pass --update-coordinates to change it",
                ))
        with db.session() as session, session.begin():
            for image_id, size, mtime in hashed:  # so the next run need not read them either
                session.execute(update(Image).where(Image.id == image_id).values(file_size=size, file_mtime_ns=mtime))
            for image_id, row, old_x, old_y in changes:
                image = session.get(Image, image_id)
                assert image is not None
                image.x, image.y = row.x, row.y
                session.add(CoordinateChange(image_id=image_id, run_id=run.id, old_x=old_x, old_y=old_y, new_x=row.x, new_y=row.y))
            summary.updated = len(changes)
            session.add_all(Rejection(run_id=run.id, name=name, reason=reason) for name, reason in summary.rejections)
            self._write_counts(session, run.id, summary)
        for name, reason in summary.rejections:
            logger.info("rejected %s", reason)
        return new_rows

    def _load_vectors(self, db: Database, state: StoreState) -> VectorIndex:
        """The VLAD FAISS index with every committed vector: the file's, and those not merged yet."""
        index = (VectorIndex.empty(state.global_dim) if state.faiss_file is None
                 else self._load_index(state.faiss_file, state.faiss_count))
        with db.session() as session:
            rows = vector_rows(session)
        return add_missing_vectors(self.layout.vectors_dir, index, rows, self.options.exact_limit)[0]

    def _load_index(self, filename: str | None, count: int) -> VectorIndex:
        """A FAISS file the catalogue names, checked against the count it records."""
        path = self.layout.vectors_dir / (filename or "")
        try:
            index = VectorIndex.load(path)
        except RuntimeError as exc:
            raise DatabaseError(f"FAISS file {path.name} is unreadable ({exc}); run `glueloc audit --repair`") from None
        if index.count != count:
            raise DatabaseError(f"FAISS file {path.name} holds {index.count} vectors, expected {count}; "
                                "run `glueloc audit --repair`")
        return index

    def _load_codebook(self, db: Database, state: StoreState) -> tuple[vlad.VLADCodebook, str] | None:
        """The current codebook and its file name (vector shards record the name), or None."""
        if state.codebook_id is None:
            return None
        with db.session() as session:
            row = session.get(Codebook, state.codebook_id)
            assert row is not None
        try:
            return read_codebook(self.layout.vectors_dir / row.filename), row.filename
        except (OSError, KeyError) as exc:
            raise DatabaseError(f"codebook {row.filename} is unreadable ({exc}); run `glueloc audit`") from None

    def _load_model(self, db: Database, state: StoreState) -> tuple[Projection, VectorIndex] | None:
        """The current retrieval model and the FAISS index of its vectors, or None."""
        if state.model_id is None:
            return None
        with db.session() as session:
            row = session.get(RetrievalModel, state.model_id)
            assert row is not None
        try:
            projection = read_model(self.layout.vectors_dir / row.filename)
        except (OSError, KeyError, ValueError) as exc:
            raise DatabaseError(f"retrieval model file {row.filename} is unreadable ({exc}); "
                                "run `glueloc audit --repair`") from None
        index = self._load_index(state.model_faiss_file, state.model_faiss_count)
        with db.session() as session:
            rows = session.execute(select(Image.id, Image.name, FeatureShard.filename).join(FeatureShard)).all()
        return projection, add_missing_projections(self.layout.features_dir, projection, index, rows,
                                                   self.options.exact_limit)[0]

    def _first_model(self, db: Database, run: IndexRun, summary: IndexSummary) -> None:
        """A new database's retrieval model, trained like its codebook at the end of the first run
        (or of the next one, if the first was stopped before).

        A map too small to learn from (fewer than three capture points, none near
        another) still answers from VLAD and votes; the run says why there is no model.
        """
        try:
            summary.model_trained = train_retrieval_model(db, run.id, exact_limit=self.options.exact_limit).model_id
        except GluelocError as exc:
            if isinstance(exc, StorageWriteError):
                raise
            summary.model_note = f"no retrieval model trained: {exc} (`glueloc train` once the map has more places)"
            logger.info(summary.model_note)

    @staticmethod
    def _has_images(db: Database) -> bool:
        with db.session() as session:
            return session.scalar(select(Image.id).limit(1)) is not None

    def _commit_batch(self, db: Database, run: IndexRun, state: StoreState,
                      codebook: tuple[vlad.VLADCodebook, str] | None, vectors: VectorIndex | None,
                      model: tuple[Projection, VectorIndex] | None, votes: tuple[VoteCodec, Any] | None,
                      ready: ExtractedBatch, summary: IndexSummary) -> tuple[VectorIndex | None, tuple[Projection, VectorIndex] | None]:
        """Publish one batch (see the module docstring); returns the FAISS indexes to continue with.

        Its shard is written here, unless a Ray worker already published it."""
        batch = ready.images
        shard = ready.shard or write_shard(self.layout.features_dir, [item.entry for item in batch])
        globals_: dict[str, np.ndarray] = {}
        vector_shard = None
        if codebook is not None:
            vlad_codebook, codebook_file = codebook
            globals_ = {item.row.name: vlad_codebook.aggregate(item.entry.features.descriptors) for item in batch}
            vector_shard = write_vectors(self.layout.vectors_dir, codebook_file, globals_)
        with db.session() as session, session.begin():
            shard_row = FeatureShard(filename=shard.filename, sha256=shard.sha256, num_images=len(batch), run_id=run.id)
            session.add(shard_row)
            vector_row = None
            if vector_shard is not None:
                vector_row = VectorShard(filename=vector_shard.filename, sha256=vector_shard.sha256,
                                         codebook_id=state.codebook_id, num_images=len(batch), run_id=run.id)
                session.add(vector_row)
            session.flush()
            images = [
                Image(
                    name=item.row.name, sha256=item.sha256, width=item.width, height=item.height,
                    x=item.row.x, y=item.row.y, extractor=state.extractor, extractor_version=state.extractor_version,
                    file_size=item.file_size, file_mtime_ns=item.file_mtime_ns,
                    num_keypoints=len(item.entry.features), status="indexed", shard_id=shard_row.id,
                    vector_shard_id=vector_row.id if vector_row is not None else None, run_id=run.id,
                )
                for item in batch
            ]
            session.add_all(images)
            session.flush()
            if votes is not None:
                # Keyed by the ids the flush just gave the rows, published before the commit names it.
                segment = vote_index.batch_segment(db, votes[1], [(image.id, item.entry.features.descriptors)
                                                                  for image, item in zip(images, batch)])
                vote_index.register_segment(session, db.layout.vectors_dir, votes[0].id, run.id, segment,
                                            [image.id for image in images])
            if vectors is not None:
                vectors = vectors.add(np.array([image.id for image in images]),
                                      np.stack([globals_[image.name] for image in images]), self.options.exact_limit)
            if model is not None:
                projection, model_index = model
                # Projected as stored (float16), so these vectors equal what a repair re-derives.
                raw = np.stack([item.entry.embedding for item in batch]).astype(np.float16).astype(np.float32)  # type: ignore[misc]
                model = projection, model_index.add(np.array([image.id for image in images]), projection.project(raw),
                                                    self.options.exact_limit)
            summary.added += len(batch)
            self._write_counts(session, run.id, summary)
        if votes is not None:
            vote_index.compact(db, run.id)
        # The FAISS files are merged when the vectors not in them are as many as those in
        # them (storage.pending): bytes written over a build stay a small multiple of its size.
        merged = state.faiss_count if vectors is not None else state.model_faiss_count
        held = vectors.count if vectors is not None else (model[1].count if model is not None else 0)
        if held - merged >= max(MERGE_AT_LEAST, merged):
            self._merge_faiss(db, state, vectors, model)
        return vectors, model

    def _merge_faiss(self, db: Database, state: StoreState, vectors: VectorIndex | None,
                     model: tuple[Projection, VectorIndex] | None) -> None:
        """Publish the in-memory FAISS indexes (every committed vector) and name them in one commit."""
        if (vectors is None or vectors.count == state.faiss_count) and (
                model is None or model[1].count == state.model_faiss_count):
            return
        old = [state.faiss_file, state.model_faiss_file]
        new_faiss = vectors.save_new(self.layout.vectors_dir) if vectors is not None else state.faiss_file
        new_model = model[1].save_new(self.layout.vectors_dir) if model is not None else state.model_faiss_file
        with db.session() as session, session.begin():
            live = session.get(StoreState, 1)
            assert live is not None
            if vectors is not None:
                live.faiss_file, live.faiss_count = new_faiss, vectors.count
            if model is not None:
                live.model_faiss_file, live.model_faiss_count = new_model, model[1].count
        if vectors is not None:
            state.faiss_file, state.faiss_count = new_faiss, vectors.count
        if model is not None:
            state.model_faiss_file, state.model_faiss_count = new_model, model[1].count
        for name in old:
            if name is not None and name not in (new_faiss, new_model):
                (self.layout.vectors_dir / name).unlink(missing_ok=True)

    def _reject(self, db: Database, run: IndexRun, summary: IndexSummary, name: str, reason: str) -> None:
        summary.rejections.append((name, reason))
        logger.info("rejected %s", reason)
        with db.session() as session, session.begin():
            session.add(Rejection(run_id=run.id, name=name, reason=reason))
            self._write_counts(session, run.id, summary)

    @staticmethod
    def _write_counts(session: Session, run_id: int, summary: IndexSummary) -> None:
        live = session.get(IndexRun, run_id)
        assert live is not None
        live.added, live.skipped, live.updated, live.rejected = summary.added, summary.skipped, summary.updated, summary.rejected

    def _finish(self, db: Database, run: IndexRun, summary: IndexSummary, started: float, message: str | None = None) -> None:
        summary.seconds = time.perf_counter() - started
        with db.session() as session, session.begin():
            live = session.get(IndexRun, run.id)
            assert live is not None
            live.outcome, live.finished_at, live.message = summary.outcome, utcnow(), message
            self._write_counts(session, run.id, summary)
