"""One consistent view of a database for queries: the rows and the files they name, read together.

A query running beside an index run must answer only from images committed before it
began. So the store state, the image rows, the calibration and the FAISS files that the
state names (read in one real read transaction, ``Database.read_snapshot``) (the global vectors', and the retrieval model's) and the descriptor-vote
segments it names are read and opened in one transaction; a writer that replaced a file
between the read and the open makes us read again. (Segment files are memory-mapped: one a
writer deletes later stays readable through the mapping.) Every later step of the query path works
from this snapshot alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import faiss
from sqlalchemy import select

from glueloc.core.errors import DatabaseError
from glueloc.storage.database import Database
from glueloc.storage.globals import read_codebook, read_model
from glueloc.storage.models import (Calibration, Codebook, FeatureShard, Image, IndexRun, RetrievalModel, StoreState,
                                    VoteCodec, VoteSegment)
from glueloc.storage.pending import add_missing_projections, add_missing_vectors, vector_rows
from glueloc.storage.vote_segments import open_segment, read_codec
from glueloc.storage.vectors import VectorIndex
from glueloc.vision.projection import Projection
from glueloc.vision.vlad import VLADCodebook

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DbImage:
    id: int
    name: str
    x: float
    y: float
    shard: str
    images_dir: str | None  # where its index run found the file (for pictures)
    vote_segment: int | None = None  # the vote segment holding its descriptors; None: indexed in memory at open

    @property
    def path(self) -> Path | None:
        return Path(self.images_dir) / self.name if self.images_dir else None


@dataclass(frozen=True)
class ImageModel:
    """The learned image ranking: the model row, its projection and the FAISS index of its vectors."""

    row: RetrievalModel
    projection: Projection
    index: VectorIndex


@dataclass(frozen=True)
class VoteParts:
    """The vote codec and the memory-mapped segments the snapshot's catalogue names."""

    codec: faiss.IndexIVF
    segments: list[faiss.IndexIVF]
    segment_ids: frozenset[int]
    files: tuple[str, ...]


@dataclass(frozen=True)
class Snapshot:
    """What a query may see: the committed images, their vectors' index and the codebook."""

    state: StoreState
    codebook: VLADCodebook
    index: VectorIndex
    images: dict[int, DbImage]
    calibration: Calibration | None  # the newest row fitted for this codebook and retrieval (query.decide reads it)
    model: "ImageModel | None" = None  # the retrieval model and its vectors; None: the database has none
    votes: "VoteParts | None" = None  # the persisted descriptor-vote index; None: the database has no vote codec

    @property
    def unvoted(self) -> list[DbImage]:
        """Images no mapped vote segment holds (indexed in memory when votes are needed), by id."""
        held = set() if self.votes is None else self.votes.segment_ids
        return sorted((i for i in self.images.values() if i.vote_segment not in held), key=lambda i: i.id)

    @property
    def positions(self) -> dict[int, tuple[float, float]]:
        return {i: (image.x, image.y) for i, image in self.images.items()}


def open_snapshot(db: Database, retrieval: str, attempts: int = 3) -> Snapshot:
    """Read the snapshot; ``retrieval`` selects the calibration fitted on that kind of shortlist."""
    for _ in range(attempts):
        with db.read_snapshot() as session:
            state = db.state(session)
            if state is None or state.faiss_file is None:
                raise DatabaseError(f"database {db.layout.root} holds no indexed images")
            if state.codebook_id is None:
                raise DatabaseError(f"database {db.layout.root} has no trained codebook: run `glueloc reindex --retrain`")
            codebook_row = session.get(Codebook, state.codebook_id)
            calibration = db.calibration(session, state.codebook_id, retrieval, state.model_id)
            rows = session.execute(
                select(Image.id, Image.name, Image.x, Image.y, FeatureShard.filename, IndexRun.images_dir,
                       Image.vote_segment_id)
                .join(FeatureShard, Image.shard_id == FeatureShard.id).join(IndexRun, Image.run_id == IndexRun.id)
            ).all()
            with_vectors = vector_rows(session)
            segments = list(session.execute(select(VoteSegment.id, VoteSegment.filename, VoteSegment.size_bytes).where(
                VoteSegment.codec_id == state.vote_codec_id)).all()) if state.vote_codec_id is not None else []
            codec_row = session.get(VoteCodec, state.vote_codec_id) if state.vote_codec_id is not None else None
            model_row = session.get(RetrievalModel, state.model_id) if state.model_id is not None else None
            try:
                index = VectorIndex.load(db.layout.vectors_dir / state.faiss_file)
                model_index = (VectorIndex.load(db.layout.vectors_dir / state.model_faiss_file)
                               if model_row is not None and state.model_faiss_file else None)
                votes = _vote_parts(db, codec_row, segments)
            except (RuntimeError, FileNotFoundError):
                continue  # a writer replaced a file between our read and open: read again
        images = {r[0]: DbImage(*r) for r in rows}
        if index.count != state.faiss_count:
            raise DatabaseError(f"FAISS file {state.faiss_file} holds {index.count} vectors, the catalogue records "
                                f"{state.faiss_count}: run `glueloc audit --repair`")
        # Vectors committed since the FAISS file was last merged come from their shards (storage.pending).
        index, added = add_missing_vectors(db.layout.vectors_dir, index, with_vectors)
        if index.count != len(images):
            raise DatabaseError(f"FAISS holds {index.count} vectors for {len(images)} images: run `glueloc audit`")
        if added:
            logger.info("%d vector(s) not merged into the FAISS file yet, read from their shards", added)
        codebook = read_codebook(db.layout.vectors_dir / codebook_row.filename)
        return Snapshot(state, codebook, index, images, calibration, _image_model(db, model_row, model_index, images),
                        votes)
    raise DatabaseError("the FAISS index kept changing while opening; try again")


def _vote_parts(db: Database, codec: VoteCodec | None, segments: list[tuple[int, str, int]]) -> VoteParts | None:
    """Map the named segments (FileNotFoundError if a writer's merge deleted one meanwhile: read again).

    A segment's size is checked before it is mapped: a truncated mapped file would kill the
    process when a query reads past its end, instead of saying what is wrong.
    """
    if codec is None:
        return None
    opened = []
    for _, name, size in segments:
        path = db.layout.vectors_dir / name
        if path.stat().st_size != size:
            raise DatabaseError(f"vote segment {name} holds {path.stat().st_size} bytes, the catalogue records {size}: "
                                "run `glueloc audit --repair`")
        opened.append(open_segment(path))
    return VoteParts(read_codec(db.layout.vectors_dir / codec.filename), opened,
                     frozenset(i for i, _, _ in segments), tuple(name for _, name, _ in segments))


def unreadable_model(filename: str, exc: Exception) -> DatabaseError:
    """The one-line error for a retrieval model file that cannot be read, whichever part failed."""
    return DatabaseError(f"retrieval model file {filename} is missing or unreadable ({type(exc).__name__}); "
                         "run `glueloc audit --repair`")


def _image_model(db: Database, row: RetrievalModel | None, index: VectorIndex | None,
                 images: dict[int, DbImage]) -> ImageModel | None:
    if row is None:
        return None
    try:
        projection = read_model(db.layout.vectors_dir / row.filename)
    except (OSError, KeyError, ValueError) as exc:
        raise unreadable_model(row.filename, exc) from None
    if index is not None:
        # Projections of images committed since the model's FAISS file was last merged.
        index = add_missing_projections(db.layout.features_dir, projection, index,
                                        [(i.id, i.name, i.shard) for i in images.values()])[0]
    if index is None or index.count != len(images):
        held = "no FAISS file" if index is None else f"{index.count} vectors"
        raise DatabaseError(f"the retrieval model's index holds {held} for {len(images)} images: "
                            "run `glueloc audit --repair`")
    return ImageModel(row, projection, index)
