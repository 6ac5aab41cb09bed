"""``glueloc audit --repair``: rebuild what is derivable, delete leftovers, list the rest.

The audit itself (``storage.audit``) only reads; repairing needs the indexer's own steps —
re-extracting a damaged shard's features from the image files, rebuilding vectors and
FAISS — so it lives here, above both.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from glueloc.core.version import __version__
from glueloc.indexer import vote_index
from glueloc.indexer.refeature import rebuild_damaged_shards
from glueloc.indexer.reindex import rebuild_global_vectors
from glueloc.indexer.train import rebuild_model_vectors, train_retrieval_model
from glueloc.storage.audit import AuditReport, audit
from glueloc.storage.database import Database, open_database
from glueloc.storage.garbage import collect_garbage
from glueloc.storage.layout import Layout
from glueloc.storage.lock import WriterLock
from glueloc.storage.models import FeatureShard, Image, IndexRun, utcnow

logger = logging.getLogger(__name__)

FEATURE_CODES = {"shard-missing", "shard-changed", "shard-unreadable", "features-missing", "features-bad",
                 "features-orphan", "shard-unregistered"}
CODEBOOK_CODES = {"codebook-missing", "codebook-unreadable", "codebook-changed", "codebook-dim"}
#: The current retrieval model's own file is damaged: it is trained again (deterministic).
MODEL_CODES = {"model-missing", "model-unreadable", "model-changed"}
#: Its FAISS file disagrees with the rows: re-projected from the stored embeddings.
MODEL_FAISS_CODES = {"model-faiss-missing", "model-faiss-unreadable", "model-faiss-count", "model-faiss-dim",
                     "model-faiss-orphan", "model-faiss-stale"}

#: The vote codec is damaged: a new one is trained and every image re-encoded.
VOTE_CODEC_CODES = {"vote-codec-missing", "vote-codec-changed", "vote-codec-unreadable", "vote-codec-cells",
                    "vote-codec-unregistered", "vote-segment-stale"}
#: Some segments are damaged or missing: they are forgotten and their images encoded again.
VOTE_SEGMENT_CODES = {"vote-segment-images", "vote-segment-count", "vote-segment-missing", "vote-segment-truncated",
                      "vote-segment-changed", "vote-segment-unreadable", "vote-segment-ids", "vote-segment-unregistered",
                      "votes-missing"}


def repair(layout: Layout) -> list[str]:
    """Rebuild what is derivable and delete leftovers; returns what was done and what was not.

    Local features derive from the image files (``indexer.refeature``) while those are
    where their run found them, unchanged; global vectors derive from the local features
    and the codebook, and FAISS from the vectors. So damaged shards are re-extracted
    first, then every vector and the index are rebuilt (the codebook retrained only if
    its own file is damaged); the retrieval model's vectors are re-projected from the
    stored embeddings, and the model itself retrained only if its file is damaged. What cannot be derived — features whose image files are
    gone or changed — is listed and left as it is.
    """
    actions: list[str] = []
    with WriterLock(layout):
        db = open_database(layout)
        try:
            before = audit(layout, deep=True)
            with db.session() as session, session.begin():
                removed = collect_garbage(db, session)
                if removed:
                    actions.append(f"removed {removed} unreferenced file(s)")
                run = IndexRun(command="repair", arguments={}, outcome="running", glueloc_version=__version__)
                session.add(run)
            codes = {f.code for f in before.errors}
            rebuilt_features = False
            rebuilt: list[str] = []  # the new shards' files
            if codes & FEATURE_CODES:
                for fixed in rebuild_damaged_shards(db, run.id):
                    if fixed.rebuilt_as:
                        rebuilt_features = True
                        rebuilt.append(fixed.rebuilt_as)
                        actions.append(f"re-extracted the features of {fixed.images} image(s) of shard {fixed.shard} "
                                       f"({fixed.reason}) from their files into {fixed.rebuilt_as}")
                    else:
                        actions.append(f"not derivable, left as is: shard {fixed.shard}: {fixed.reason}")
                now = audit(layout, deep=True)
                codes = {f.code for f in now.errors} | (codes - FEATURE_CODES)
                remaining = [f for f in now.errors if f.code in FEATURE_CODES]
            else:
                remaining = []
            features_ok = not (codes & FEATURE_CODES)
            model_codes = codes & (MODEL_CODES | MODEL_FAISS_CODES)
            codes -= MODEL_CODES | MODEL_FAISS_CODES | VOTE_CODEC_CODES | VOTE_SEGMENT_CODES
            if features_ok and model_codes & MODEL_CODES:
                trained = train_retrieval_model(db, run.id)
                actions.append(f"retrained the retrieval model as {trained.model_id} ({trained.method}) from the "
                               f"stored embeddings, and rebuilt its FAISS index")
            elif features_ok and (model_codes or rebuilt_features):
                if rebuild_model_vectors(db):
                    actions.append("rebuilt the retrieval model's FAISS index from the stored embeddings")
            if features_ok and (codes or rebuilt_features):
                retrain = bool(codes & CODEBOOK_CODES)
                result = rebuild_global_vectors(db, run.id, retrain=retrain)
                actions.append(f"rebuilt {result.images} global vectors and the FAISS index from the local features"
                               + (f" (codebook retrained as {result.codebook_id})" if retrain else ""))
            if features_ok:
                if rebuilt_features:
                    actions += _reencode_rebuilt(db, run.id, rebuilt)
                actions += _repair_votes(db, run.id, before)
            for finding in remaining:
                actions.append(f"not derivable, left as is: {finding.message}")
            with db.session() as session, session.begin():
                live = session.get(IndexRun, run.id)
                assert live is not None
                live.outcome, live.finished_at, live.message = "completed", utcnow(), "; ".join(actions)[:2000]
        finally:
            db.close()
    return actions


def _repair_votes(db: Database, run_id: int, before: AuditReport) -> list[str]:
    """Rebuild the descriptor-vote index where the audit found it damaged, missing or pending."""
    found = {f.code for f in before.findings}
    if found & VOTE_CODEC_CODES:
        result = vote_index.rebuild(db, run_id)
        return [f"trained vote codec {result.codec_id} and re-encoded the descriptors of {result.encoded} image(s)"]
    if found & VOTE_SEGMENT_CODES:
        damaged = [f.message.split()[2] for f in before.errors if f.code in VOTE_SEGMENT_CODES
                   and f.message.startswith("vote segment ")]
        forgotten = vote_index.drop_damaged(db, damaged)
        result = vote_index.ensure(db, run_id)
        encoded = 0 if result is None else result.encoded
        return [f"re-encoded the descriptors of {encoded} image(s) into new vote segments"
                + (f" (replacing {forgotten} damaged segment(s))" if forgotten else "")]
    if "votes-pending" in found:
        result = vote_index.ensure(db, run_id)
        if result is not None:
            return [f"built the descriptor-vote index: vote codec {result.codec_id}, {result.encoded} image(s)"]
    return []


def _reencode_rebuilt(db: Database, run_id: int, shards: list[str]) -> list[str]:
    """The images of re-extracted shards get their descriptors encoded again: their vote
    codes were made from the features the damaged shard held."""
    with db.session() as session, session.begin():
        ids = list(session.scalars(select(Image.id).join(FeatureShard, Image.shard_id == FeatureShard.id)
                                   .where(FeatureShard.filename.in_(shards))))
        _, dropped = vote_index.rewrite_without(db, session, ids)
    for name in dropped:
        (db.layout.vectors_dir / name).unlink(missing_ok=True)
    result = vote_index.ensure(db, run_id) if dropped else None
    return [] if result is None else [f"re-encoded the descriptors of {result.encoded} image(s) of re-extracted shards "
                                      "into new vote segments"]
