"""The raw image embeddings of every indexed photo, read from the feature shards in id order.

Written by the index run beside each photo's local features (``storage.features``);
read whole by what is derived from all of them at once: training the retrieval model
(``indexer.train``) and the deep audit of its FAISS file (``storage.audit``).
"""

from __future__ import annotations

import logging

import numpy as np
from sqlalchemy import select

from glueloc.storage.database import Database
from glueloc.storage.features import FeatureReader
from glueloc.storage.models import FeatureShard, Image

logger = logging.getLogger(__name__)


def image_rows(db: Database) -> list[tuple[int, str, float, float, str]]:
    """(id, name, x, y, shard file) of every indexed image, by id."""
    with db.session() as session:
        return [tuple(r) for r in session.execute(  # type: ignore[misc]
            select(Image.id, Image.name, Image.x, Image.y, FeatureShard.filename)
            .join(FeatureShard, Image.shard_id == FeatureShard.id).order_by(Image.id)).all()]


def stored_embeddings(db: Database) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image ids, positions (N, 2), raw embeddings (N, D)) of every indexed image, by id.

    A damaged shard raises the reader's one-line ``DatabaseError``.
    """
    rows = image_rows(db)
    with FeatureReader(db.layout.features_dir) as reader:
        raw = [reader.embedding(shard, name) for _, name, _, _, shard in rows]
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    xy = np.array([(r[2], r[3]) for r in rows], dtype=np.float64).reshape(-1, 2)
    return ids, xy, (np.stack(raw) if raw else np.zeros((0, 0), np.float32))
