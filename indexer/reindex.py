"""(Re)build every global vector: train a codebook, aggregate, publish — as one commit.

Runs at the end of the first index run of a database (the codebook is trained on the
images that run indexed), and on demand as ``glueloc reindex [--retrain]`` — which, in
a database that embeds images, retrains its retrieval model too (``indexer.train``). Everything
new is written to fresh immutable files first (codebook, vector shards, FAISS); a single
SQLite transaction then makes them current and drops the old vector shards' rows, whose
files the next writer deletes. Killed at any point, the database still serves the
previous vectors (or, on a first run, has rows that the next run completes).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import delete, select, update

from glueloc.core.errors import DatabaseError
from glueloc.vision import vlad
from glueloc.indexer.runs import audited_run
from glueloc.indexer.train import train_retrieval_model
from glueloc.storage.database import Database
from glueloc.storage.layout import Layout
from glueloc.storage.features import FeatureReader
from glueloc.storage.globals import read_codebook, write_codebook, write_vectors
from glueloc.storage.models import Codebook, FeatureShard, Image, StoreState, VectorShard
from glueloc.storage.vectors import DEFAULT_EXACT_LIMIT, VectorIndex

logger = logging.getLogger(__name__)

VECTORS_PER_SHARD = 1024


@dataclass(frozen=True)
class ReindexSummary:
    codebook_id: int
    trained: bool
    images: int
    dim: int
    seconds: float = 0.0
    model_id: int | None = None  # the retrieval model --retrain trained too, if the database embeds images


def _images_by_shard(db: Database) -> dict[str, list[tuple[int, str]]]:
    with db.session() as session:
        rows = session.execute(select(Image.id, Image.name, FeatureShard.filename).join(FeatureShard)
                               .order_by(Image.id)).all()
    grouped: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for image_id, name, filename in rows:
        grouped[filename].append((image_id, name))
    return grouped


def _train(db: Database, reader: FeatureReader, grouped: dict[str, list[tuple[int, str]]],
           conf: dict[str, Any]) -> tuple[vlad.VLADCodebook, int, int]:
    members = [(filename, name) for filename, items in grouped.items() for _, name in items]
    rng = np.random.default_rng(int(conf["seed"]))
    chosen = rng.choice(len(members), size=min(int(conf["train_images"]), len(members)), replace=False)
    sets = [reader.descriptors(*members[i]) for i in sorted(chosen)]
    return vlad.train_codebook(sets, conf)


def rebuild_global_vectors(db: Database, run_id: int, retrain: bool = True,
                           conf_overrides: dict[str, Any] | None = None,
                           progress: Callable[[int], None] | None = None,
                           exact_limit: int = DEFAULT_EXACT_LIMIT) -> ReindexSummary:
    """Train (or reuse) the codebook and replace every global vector and the FAISS index."""
    layout = db.layout
    with db.session() as session:
        state = db.state(session)
        if state is None:
            raise DatabaseError(f"database {layout.root} holds no images yet")
        current = session.get(Codebook, state.codebook_id) if state.codebook_id else None
    grouped = _images_by_shard(db)
    total = sum(len(v) for v in grouped.values())
    if total == 0:
        raise DatabaseError(f"database {layout.root} holds no images yet")
    with FeatureReader(layout.features_dir) as reader:
        if retrain or current is None:
            base = current.config if current is not None else (state.global_config or {})
            conf = vlad.vlad_conf({**base, **(conf_overrides or {})})
            codebook, trained_images, trained_descriptors = _train(db, reader, grouped, conf)
            written = write_codebook(layout.vectors_dir, codebook)
            codebook_file, codebook_sha = written.filename, written.sha256
            logger.info("trained %s: K=%d, dim=%d on %d images", vlad.KIND, codebook.num_clusters, codebook.dim, trained_images)
        else:
            if conf_overrides:
                raise DatabaseError("VLAD options change the codebook: use --retrain")
            codebook = read_codebook(layout.vectors_dir / current.filename)
            codebook_file = current.filename
        ids: list[int] = []
        vectors: list[np.ndarray] = []
        shards: list[tuple[str, str, list[int]]] = []
        pending: dict[str, np.ndarray] = {}
        pending_ids: list[int] = []
        for filename, items in grouped.items():
            for image_id, name in items:
                vector = codebook.aggregate(reader.descriptors(filename, name))
                pending[name] = vector
                pending_ids.append(image_id)
                ids.append(image_id)
                vectors.append(vector)
                if len(pending) >= VECTORS_PER_SHARD:
                    shard = write_vectors(layout.vectors_dir, codebook_file, pending)
                    shards.append((shard.filename, shard.sha256, pending_ids))
                    pending, pending_ids = {}, []
            if progress:
                progress(len(items))
        if pending:
            shard = write_vectors(layout.vectors_dir, codebook_file, pending)
            shards.append((shard.filename, shard.sha256, pending_ids))
    index = VectorIndex.build(np.array(ids), np.stack(vectors), codebook.dim, exact_limit)
    faiss_file = index.save_new(layout.vectors_dir)
    with db.session() as session, session.begin():
        live = session.get(StoreState, 1)
        assert live is not None
        if retrain or current is None:
            row = Codebook(filename=codebook_file, sha256=codebook_sha, kind=vlad.KIND, config=dict(codebook.conf),
                           num_clusters=codebook.num_clusters, descriptor_dim=codebook.descriptor_dim, dim=codebook.dim,
                           trained_images=trained_images, trained_descriptors=trained_descriptors, run_id=run_id)
            session.add(row)
            session.flush()
            codebook_id = row.id
        else:
            codebook_id = current.id
        old_faiss = live.faiss_file
        old_shards = list(session.scalars(select(VectorShard.filename)))
        session.execute(update(Image).values(vector_shard_id=None))
        session.execute(delete(VectorShard))
        for filename, sha, members in shards:
            shard_row = VectorShard(filename=filename, sha256=sha, codebook_id=codebook_id, num_images=len(members),
                                    run_id=run_id)
            session.add(shard_row)
            session.flush()
            session.execute(update(Image).where(Image.id.in_(members)).values(vector_shard_id=shard_row.id))
        live.codebook_id, live.global_descriptor, live.global_dim = codebook_id, vlad.KIND, codebook.dim
        live.global_config = dict(codebook.conf)
        live.faiss_file, live.faiss_count = faiss_file, index.count
    # Now unreferenced; queries never read vector shards and hold their own FAISS copy.
    for old in [old_faiss, *old_shards]:
        if old and old != faiss_file:
            (layout.vectors_dir / old).unlink(missing_ok=True)
    return ReindexSummary(codebook_id=codebook_id, trained=retrain or current is None, images=total, dim=codebook.dim)


def reindex(layout: Layout, retrain: bool, conf_overrides: dict[str, Any] | None = None,
            exact_limit: int = DEFAULT_EXACT_LIMIT) -> ReindexSummary:
    """``glueloc reindex``: under the writer lock, as an audited run of its own."""
    started = time.perf_counter()

    def step(db: Database, run_id: int) -> ReindexSummary:
        result = rebuild_global_vectors(db, run_id, retrain=retrain, conf_overrides=conf_overrides,
                                        exact_limit=exact_limit)
        model_id = None
        if retrain and _embeds_images(db):
            model_id = train_retrieval_model(db, run_id, exact_limit=exact_limit).model_id
        return ReindexSummary(result.codebook_id, result.trained, result.images, result.dim,
                              time.perf_counter() - started, model_id)

    return audited_run(layout, "reindex", {"retrain": retrain, "conf": conf_overrides or {}}, step)


def _embeds_images(db: Database) -> bool:
    with db.session() as session:
        state = db.state(session)
        return state is not None and state.embedder is not None
