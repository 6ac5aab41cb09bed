"""Train the database's retrieval model and publish its vectors — as one commit.

A step of the database's life like the codebook: it runs at the end of a database's
first index run (right after the codebook), as ``glueloc train`` (after the map grew,
or with other options) and within ``glueloc reindex --retrain``. It reads the raw image
embeddings the index stored with the features (no pixels needed, so it takes seconds to
minutes, not the embedding's tens of minutes), picks each photo's positives among the
near photos by matching their stored descriptors, learns the projection from the labels
(``indexer.learn``), and writes two new immutable files — the content-named model and a
FAISS file of every image's projected vector — before the single SQLite transaction
that registers the model row and points ``store_state`` at both. Killed at any point,
the database keeps serving the previous model (or none).
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select

from glueloc.core.errors import DatabaseError
from glueloc.core.places import near_radius
from glueloc.core.threads import single_threaded
from glueloc.indexer.learn import Learned, learn_conf, learn_projection, pairs_from_labels
from glueloc.indexer.runs import audited_run
from glueloc.storage.database import Database
from glueloc.storage.embeddings import image_rows, stored_embeddings
from glueloc.storage.features import FeatureReader
from glueloc.storage.globals import write_model
from glueloc.storage.layout import Layout
from glueloc.storage.models import RetrievalModel, StoreState
from glueloc.storage.vectors import DEFAULT_EXACT_LIMIT, VectorIndex
from glueloc.vision import projection as proj

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSummary:
    model_id: int
    method: str
    images: int
    dim: int
    held_out: dict[str, dict[str, float]]
    seconds: float


def mutual_matches(a: np.ndarray, b: np.ndarray) -> int:
    """Mutual nearest neighbours between two descriptor sets (rows L2-normalised or not)."""
    if len(a) == 0 or len(b) == 0:
        return 0
    sims = a @ b.T
    forward = sims.argmax(1)
    backward = sims.argmax(0)
    return int((backward[forward] == np.arange(len(a))).sum())


def verified_positives(db: Database, xy: np.ndarray, radius: float, keep: int,
                       keypoints: int) -> list[np.ndarray]:
    """Per image (in id order), the ``keep`` near photos of other points that share the most
    mutual nearest-neighbour matches with it — the matcher's word on which near photos
    show the same scene, at a cost a CPU can pay for every pair: only the ``keypoints``
    strongest descriptors of each photo are matched (Getty has about 45 near photos per
    photo, 100 000 pairs; all 1024 descriptors took about 5 ms a pair, 256 a sixteenth).

    A near photo with no mutual match at all is never a positive.
    """
    rows = image_rows(db)
    positives, _ = pairs_from_labels(xy, radius, far_factor=1.0)
    cache: dict[int, np.ndarray] = {}

    def descriptors(i: int) -> np.ndarray:
        if i not in cache:
            if len(cache) > 4096:
                cache.clear()
            image_id, name, _, _, shard = rows[i]
            features = reader.features(shard, name)
            strongest = np.argsort(-features.scores, kind="stable")[:keypoints]
            cache[i] = np.ascontiguousarray(features.descriptors[strongest])
        return cache[i]

    counts: dict[tuple[int, int], int] = {}
    chosen: list[np.ndarray] = []
    with FeatureReader(db.layout.features_dir) as reader, single_threaded():
        for i, near in enumerate(positives):
            scored = []
            for j in near.tolist():
                pair = (min(i, j), max(i, j))
                if pair not in counts:
                    counts[pair] = mutual_matches(descriptors(i), descriptors(j))
                scored.append((counts[pair], j))
            scored = sorted((s for s in scored if s[0] > 0), key=lambda s: (-s[0], s[1]))[:keep]
            chosen.append(np.array([j for _, j in scored], dtype=np.int64))
    return chosen


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_retrieval_model(db: Database, run_id: int, conf_overrides: Mapping[str, Any] | None = None,
                          exact_limit: int = DEFAULT_EXACT_LIMIT) -> TrainSummary:
    """Learn the projection on every indexed image and make it current (call under the writer lock)."""
    started = time.perf_counter()
    layout = db.layout
    with db.session() as session:
        state = db.state(session)
        if state is None:
            raise DatabaseError(f"database {layout.root} holds no images yet")
        if state.embedder is None:
            raise DatabaseError(f"database {layout.root} was indexed without image embeddings (before glueloc "
                                "0.2): re-index its photos into a new database to learn a retrieval model")
        embedder, embedder_version = state.embedder, state.embedder_version
    conf = learn_conf(conf_overrides)
    ids, xy, raw = stored_embeddings(db)
    if len(ids) == 0:
        raise DatabaseError(f"database {layout.root} holds no images yet")
    radius = near_radius(xy)
    positives = verified_positives(db, xy, radius, int(conf["best_positives"]), int(conf["verify_keypoints"]))
    learned: Learned = learn_projection(raw, xy, radius, conf, positives)
    model_conf = {**conf, "dim": learned.projection.dim}
    written = write_model(layout.vectors_dir, learned.projection, model_conf, learned.cross_fit)
    index = VectorIndex.build(ids, learned.projection.project(raw), learned.projection.dim, exact_limit)
    faiss_file = index.save_new(layout.vectors_dir)
    seconds = time.perf_counter() - started
    with db.session() as session, session.begin():
        live = session.get(StoreState, 1)
        assert live is not None
        row = session.scalar(select(RetrievalModel).where(RetrievalModel.filename == written.filename))
        if row is None:  # the same content trained again is the same model
            row = RetrievalModel(
                filename=written.filename, sha256=written.sha256, kind=proj.KIND, method=learned.chosen,
                embedder=embedder, embedder_version=embedder_version, config=model_conf,
                input_dim=learned.projection.input_dim, dim=learned.projection.dim, radius=radius,
                trained_images=learned.trained_images, positives=learned.positives,
                held_out_images=learned.held_out_images, held_out=learned.held_out, seconds=round(seconds, 2),
                peak_rss_mb=round(_peak_rss_mb(), 1), run_id=run_id)
            session.add(row)
            session.flush()
        old_faiss = live.model_faiss_file
        live.model_id, live.model_faiss_file, live.model_faiss_count = row.id, faiss_file, index.count
        model_id = row.id
    if old_faiss and old_faiss != faiss_file:
        (layout.vectors_dir / old_faiss).unlink(missing_ok=True)  # queries hold their own copy
    logger.info("retrieval model %d (%s, %d-d) on %d images in %.1f s; held-out %s", model_id, learned.chosen,
                learned.projection.dim, len(ids), seconds, learned.held_out.get(learned.chosen))
    return TrainSummary(model_id, learned.chosen, len(ids), learned.projection.dim, learned.held_out, seconds)


def rebuild_model_vectors(db: Database) -> int:
    """Re-project every stored embedding with the current model into a new FAISS file (repair)."""
    from glueloc.storage.globals import read_model

    layout = db.layout
    with db.session() as session:
        state = db.state(session)
        row = session.get(RetrievalModel, state.model_id) if state is not None and state.model_id else None
    if row is None:
        return 0
    model = read_model(layout.vectors_dir / row.filename)
    ids, _, raw = stored_embeddings(db)
    index = VectorIndex.build(ids, model.project(raw), model.dim)
    faiss_file = index.save_new(layout.vectors_dir)
    with db.session() as session, session.begin():
        live = session.get(StoreState, 1)
        assert live is not None
        old = live.model_faiss_file
        live.model_faiss_file, live.model_faiss_count = faiss_file, index.count
    if old and old != faiss_file:
        (layout.vectors_dir / old).unlink(missing_ok=True)
    return index.count


def train(layout: Layout, conf_overrides: Mapping[str, Any] | None = None) -> TrainSummary:
    """``glueloc train``: under the writer lock, as an audited run of its own."""
    return audited_run(layout, "train", {"conf": dict(conf_overrides or {})},
                       lambda db, run_id: train_retrieval_model(db, run_id, conf_overrides),
                       lambda result: f"model {result.model_id}: {result.method}")
