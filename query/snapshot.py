"""One consistent view of a database for queries: the rows and the files they name, read together.

A query running beside an index run must answer only from images committed before it
began. So the store state, the image rows, the calibration and the FAISS files that the
state names (the global vectors', and the retrieval model's) are read in one
transaction; a writer that replaced a FAISS file between the read and the open makes us
read again. Every later step of the query path works
from this snapshot alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from glueloc.core.errors import DatabaseError
from glueloc.storage.database import Database
from glueloc.storage.globals import read_codebook, read_model
from glueloc.storage.models import Calibration, Codebook, FeatureShard, Image, IndexRun, RetrievalModel, StoreState
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
class Snapshot:
    """What a query may see: the committed images, their vectors' index and the codebook."""

    state: StoreState
    codebook: VLADCodebook
    index: VectorIndex
    images: dict[int, DbImage]
    calibration: Calibration | None  # the newest row fitted for this codebook and retrieval (query.decide reads it)
    model: "ImageModel | None" = None  # the retrieval model and its vectors; None: the database has none

    @property
    def positions(self) -> dict[int, tuple[float, float]]:
        return {i: (image.x, image.y) for i, image in self.images.items()}


def open_snapshot(db: Database, retrieval: str, attempts: int = 3) -> Snapshot:
    """Read the snapshot; ``retrieval`` selects the calibration fitted on that kind of shortlist."""
    for _ in range(attempts):
        with db.session() as session, session.begin():
            state = db.state(session)
            if state is None or state.faiss_file is None:
                raise DatabaseError(f"database {db.layout.root} holds no indexed images")
            if state.codebook_id is None:
                raise DatabaseError(f"database {db.layout.root} has no trained codebook: run `glueloc reindex --retrain`")
            codebook_row = session.get(Codebook, state.codebook_id)
            calibration = db.calibration(session, state.codebook_id, retrieval, state.model_id)
            rows = session.execute(
                select(Image.id, Image.name, Image.x, Image.y, FeatureShard.filename, IndexRun.images_dir)
                .join(FeatureShard, Image.shard_id == FeatureShard.id).join(IndexRun, Image.run_id == IndexRun.id)
            ).all()
            model_row = session.get(RetrievalModel, state.model_id) if state.model_id is not None else None
            try:
                index = VectorIndex.load(db.layout.vectors_dir / state.faiss_file)
                model_index = (VectorIndex.load(db.layout.vectors_dir / state.model_faiss_file)
                               if model_row is not None and state.model_faiss_file else None)
            except RuntimeError:
                continue  # a writer replaced a file between our read and open: read again
        images = {r[0]: DbImage(*r) for r in rows}
        if index.count != len(images):
            raise DatabaseError(f"FAISS holds {index.count} vectors for {len(images)} images: run `glueloc audit`")
        codebook = read_codebook(db.layout.vectors_dir / codebook_row.filename)
        return Snapshot(state, codebook, index, images, calibration, _image_model(db, model_row, model_index, images))
    raise DatabaseError("the FAISS index kept changing while opening; try again")


def _image_model(db: Database, row: RetrievalModel | None, index: VectorIndex | None,
                 images: dict[int, DbImage]) -> ImageModel | None:
    if row is None:
        return None
    if index is None or index.count != len(images):
        held = "no FAISS file" if index is None else f"{index.count} vectors"
        raise DatabaseError(f"the retrieval model's index holds {held} for {len(images)} images: "
                            "run `glueloc audit --repair`")
    try:
        projection = read_model(db.layout.vectors_dir / row.filename)
    except (OSError, KeyError, ValueError) as exc:
        raise DatabaseError(f"retrieval model file {row.filename} is missing or unreadable ({type(exc).__name__}); "
                            "run `glueloc audit --repair`") from None
    return ImageModel(row, projection, index)
