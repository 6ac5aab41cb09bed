"""Vectors committed but not yet merged into a FAISS file, added back where an index is opened.

Why: rewriting the whole FAISS file in every batch's commit (revision 0004 and before)
wrote bytes that grow with N² over a build — hundreds of gigabytes for 100k images. Now
a batch commits its images with their vectors in immutable shards (the VLAD vector in a
vector shard, the raw embedding in the feature shard) and leaves the FAISS files as they
are; an index run merges the new vectors into new FAISS files only when they are as many
as those the files already hold, and at its end (indexer.pipeline), so the bytes written
stay within a small multiple of the final size.

The catalogue records how many vectors each FAISS file holds (``store_state.faiss_count``,
``model_faiss_count``); every FAISS id is an image, and an image whose id the file lacks is
*pending*: whoever opens the index (a query's snapshot, the next index run) adds its
vector from the shards, so every reader still sees exactly the committed images.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from glueloc.core.errors import DatabaseError
from glueloc.storage.features import FeatureReader
from glueloc.storage.globals import read_vectors
from glueloc.storage.models import Image, VectorShard
from glueloc.storage.vectors import DEFAULT_EXACT_LIMIT, VectorIndex
from glueloc.vision.projection import Projection

logger = logging.getLogger(__name__)


def vector_rows(session: Session) -> list[tuple[int, str, str]]:
    """(image id, name, vector shard file) of every image with a global vector: what the
    VLAD FAISS index should hold (the rows :func:`add_missing_vectors` takes)."""
    return [tuple(row) for row in session.execute(  # type: ignore[misc]
        select(Image.id, Image.name, VectorShard.filename).join(VectorShard, Image.vector_shard_id == VectorShard.id))]


def missing(index: VectorIndex, rows: Iterable[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    """The ``rows`` — (image id, name, shard file) — whose id ``index`` does not hold, by id."""
    held = set(index.ids().tolist())
    return sorted((row for row in rows if row[0] not in held), key=lambda row: row[0])


def add_missing_vectors(vectors_dir: Path, index: VectorIndex, rows: Iterable[tuple[int, str, str]],
                        exact_limit: int = DEFAULT_EXACT_LIMIT) -> tuple[VectorIndex, int]:
    """``index`` with the VLAD vectors of the images it lacks, read from their vector shards.

    ``rows``: (image id, name, vector shard file) of every image that should be in it.
    Returns the index to use (a new one past ``exact_limit``) and how many were added.
    """
    wanted = missing(index, rows)
    if not wanted:
        return index, 0
    by_shard: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for image_id, name, shard in wanted:
        by_shard[shard].append((image_id, name))
    ids: list[int] = []
    vectors: list[np.ndarray] = []
    for shard, members in by_shard.items():
        try:
            _, stored = read_vectors(vectors_dir / shard)
        except (OSError, KeyError) as exc:
            raise DatabaseError(f"vector shard {shard} is missing or unreadable ({type(exc).__name__}); "
                                "run `glueloc audit --repair`") from None
        for image_id, name in members:
            if name not in stored:
                raise DatabaseError(f"vector shard {shard} holds no vector of {name}; run `glueloc audit --repair`")
            ids.append(image_id)
            vectors.append(stored[name])
    return index.add(np.array(ids, dtype=np.int64), np.stack(vectors), exact_limit), len(ids)


def add_missing_projections(features_dir: Path, projection: Projection, index: VectorIndex,
                            rows: Iterable[tuple[int, str, str]],
                            exact_limit: int = DEFAULT_EXACT_LIMIT) -> tuple[VectorIndex, int]:
    """``index`` with the retrieval model's vectors of the images it lacks, projected from the
    raw embeddings their feature shards hold. ``rows``: (image id, name, feature shard file)."""
    wanted = missing(index, rows)
    if not wanted:
        return index, 0
    with FeatureReader(features_dir) as reader:
        raw = np.stack([reader.embedding(shard, name) for _, name, shard in wanted])
    ids = np.array([image_id for image_id, _, _ in wanted], dtype=np.int64)
    return index.add(ids, projection.project(raw), exact_limit), len(ids)
