"""Files no committed row refers to: what interrupted writers leave behind.

A batch killed before its SQLite commit leaves a published-but-unregistered shard, a
FAISS file that was never made current, or a temporary file. None of them is reachable
from the catalogue, so they are harmless; the next writer (which holds the lock, so no
one is still writing them) deletes them, and runs still marked ``running`` are marked
``interrupted``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from glueloc.storage.database import Database
from glueloc.storage.layout import Layout
from glueloc.storage.models import (Codebook, FeatureShard, IndexRun, RetrievalModel, StoreState, VectorShard,
                                    VoteCodec, VoteSegment)

logger = logging.getLogger(__name__)


def find_garbage(layout: Layout, session: Session) -> list[Path]:
    """Files in the stores' folders that the committed catalogue does not reference."""
    registered = set(session.scalars(select(FeatureShard.filename)))
    state = session.get(StoreState, 1)
    kept = (set(session.scalars(select(VectorShard.filename))) | set(session.scalars(select(Codebook.filename)))
            | set(session.scalars(select(RetrievalModel.filename)))
            | set(session.scalars(select(VoteSegment.filename))))
    if state is not None:
        kept |= {name for name in (state.faiss_file, state.model_faiss_file) if name}
        if state.vote_codec_id is not None:  # older codecs' rows stay as history; their files go
            kept |= set(session.scalars(select(VoteCodec.filename).where(VoteCodec.id == state.vote_codec_id)))
    garbage: list[Path] = []
    if layout.features_dir.is_dir():
        garbage += [p for p in layout.features_dir.iterdir() if p.name not in registered]
    if layout.vectors_dir.is_dir():
        garbage += [p for p in layout.vectors_dir.iterdir() if p.name not in kept]
    return sorted(garbage)


def collect_garbage(db: Database, session: Session) -> int:
    """Delete unreferenced files and close out interrupted runs. Call only under the writer lock."""
    garbage = find_garbage(db.layout, session)
    for path in garbage:
        logger.debug("removing unreferenced %s", path)
        if path.is_dir():
            continue  # glueloc never creates folders here; leave a person's folder alone
        path.unlink(missing_ok=True)
    session.execute(update(IndexRun).where(IndexRun.outcome == "running").values(outcome="interrupted"))
    return len(garbage)
