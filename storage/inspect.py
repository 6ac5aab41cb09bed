"""What a person asks of a database: counts, extent, extractor, recent runs, one record."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from glueloc.core.errors import GluelocError
from glueloc.storage.database import Database, calibration_retrieval
from glueloc.storage.features import FeatureReader
from glueloc.storage.models import (Calibration, Codebook, CoordinateChange, FeatureShard, Image, IndexRun,
                                    RetrievalModel, StoreState, VectorShard, VoteCodec, VoteSegment)

logger = logging.getLogger(__name__)


def _run_dict(run: IndexRun) -> dict[str, Any]:
    return {
        "id": run.id, "command": run.command, "started_at": run.started_at.isoformat(timespec="seconds"),
        "finished_at": run.finished_at.isoformat(timespec="seconds") if run.finished_at else None,
        "outcome": run.outcome, "added": run.added, "skipped": run.skipped, "rejected": run.rejected,
        "updated": run.updated, "arguments": run.arguments,
    }


def _codebook_dict(session: Session, codebook_id: int | None) -> dict[str, Any] | None:
    if codebook_id is None:
        return None
    row = session.get(Codebook, codebook_id)
    if row is None:
        return None
    return {"id": row.id, "kind": row.kind, "clusters": row.num_clusters, "dim": row.dim,
            "assignment": row.config.get("assignment"), "pca_dim": row.config.get("pca_dim"),
            "trained_images": row.trained_images, "trained_descriptors": row.trained_descriptors,
            "created_at": row.created_at.isoformat(timespec="seconds"), "file": row.filename}


def _calibration_dict(db: Database, session: Session, codebook_id: int | None,
                      model_id: int | None) -> dict[str, Any] | None:
    """The newest calibration of the current codebook and retrieval model (queries drawing
    their shortlist as it was drawn use it)."""
    row = None if codebook_id is None else db.calibration(session, codebook_id, model_id=model_id)
    if row is None:
        return None
    rule = row.options.get("rule_name")
    return {"id": row.id, "created_at": row.created_at.isoformat(timespec="seconds"), "rule": rule,
            "k": row.options.get("k"), "retrieval": calibration_retrieval(row), "held_out": row.held_out,
            "images_then": row.images,
            "near_radius": row.metrics.get("radius"),
            "cross_validated": row.metrics.get("variants", {}).get(row.options.get("variant")),
            # the camera queries resect with (None: the rule alone did better, or fitted before resection)
            "resection": row.options.get("bearings"),
            # the strongest keypoints of each image a pair matches (None: all of them)
            "match_keypoints": row.options.get("match_keypoints")}


def summary(db: Database, last_runs: int = 5) -> dict[str, Any]:
    with db.session() as session:
        state = db.state(session)
        count, xmin, xmax, ymin, ymax, keypoints = session.execute(
            select(func.count(Image.id), func.min(Image.x), func.max(Image.x), func.min(Image.y), func.max(Image.y),
                   func.avg(Image.num_keypoints))
        ).one()
        places = session.scalar(select(func.count()).select_from(select(Image.x, Image.y).distinct().subquery()))
        runs = session.scalars(select(IndexRun).order_by(IndexRun.id.desc()).limit(last_runs)).all()
        return {
            "database": str(db.layout.root),
            "catalogue": db.layout.display_url if db.layout.is_server else str(db.layout.sqlite_path),
            "images": count,
            "distinct_positions": places,
            "shards": session.scalar(select(func.count()).select_from(FeatureShard)),
            "extent": None if not count else {"x": [xmin, xmax], "y": [ymin, ymax]},
            "mean_keypoints": round(float(keypoints), 1) if keypoints is not None else None,
            "extractor": None if state is None else {
                "name": state.extractor, "version": state.extractor_version, "config": state.extractor_config},
            "matcher": None if state is None else {"name": state.matcher, "config": state.matcher_config},
            "global_descriptor": None if state is None else {"name": state.global_descriptor, "dim": state.global_dim,
                                                             "codebook": _codebook_dict(session, state.codebook_id)},
            "codebooks_trained": session.scalar(select(func.count()).select_from(Codebook)),
            "faiss": None if state is None else {"file": state.faiss_file, "vectors": state.faiss_count},
            "embedder": None if state is None or state.embedder is None else {
                "name": state.embedder, "version": state.embedder_version, "config": state.embedder_config},
            "retrieval_model": None if state is None else _model_dict(session, state),
            "vote_index": None if state is None else _votes_dict(session, state),
            "calibration": None if state is None else _calibration_dict(db, session, state.codebook_id, state.model_id),
            "calibrations_fitted": session.scalar(select(func.count()).select_from(Calibration)),
            "runs": [_run_dict(r) for r in runs],
        }


def _model_dict(session: Session, state: StoreState) -> dict[str, Any] | None:
    """The current retrieval model: what it learned from, how long it took, why this method."""
    row = session.get(RetrievalModel, state.model_id) if state.model_id is not None else None
    if row is None:
        return None
    return {"id": row.id, "method": row.method, "dim": row.dim, "file": row.filename,
            "trained_images": row.trained_images, "positives": row.positives, "near_radius": round(row.radius, 3),
            "seconds": row.seconds, "peak_rss_mb": row.peak_rss_mb, "held_out_images": row.held_out_images,
            "held_out_recall": row.held_out, "faiss": {"file": state.model_faiss_file,
                                                       "vectors": state.model_faiss_count},
            "created_at": row.created_at.isoformat(timespec="seconds")}


def _votes_dict(session: Session, state: StoreState) -> dict[str, Any] | None:
    """The persisted descriptor-vote index: its codec (why this many cells) and its segments."""
    row = session.get(VoteCodec, state.vote_codec_id) if state.vote_codec_id is not None else None
    if row is None:
        return None
    segments, descriptors, size = session.execute(
        select(func.count(VoteSegment.id), func.sum(VoteSegment.num_descriptors), func.sum(VoteSegment.size_bytes))
        .where(VoteSegment.codec_id == row.id)).one()
    return {"codec": {"id": row.id, "file": row.filename, "cells": row.cells, "code": row.config.get("code"),
                      "trained_descriptors": row.trained_descriptors,
                      "database_descriptors": row.database_descriptors, "seconds": row.seconds},
            "segments": segments, "descriptors": int(descriptors or 0), "bytes": int(size or 0)}


def _vector_shard(session: Session, shard_id: int | None) -> dict[str, Any] | None:
    row = session.get(VectorShard, shard_id) if shard_id is not None else None
    return None if row is None else {"file": row.filename, "codebook": row.codebook_id}


def _vote_segment(session: Session, segment_id: int | None) -> str | None:
    row = session.get(VoteSegment, segment_id) if segment_id is not None else None
    return None if row is None else row.filename


def image_record(db: Database, name: str) -> dict[str, Any]:
    with db.session() as session:
        image = session.scalars(select(Image).where(Image.name == name)).one_or_none()
        if image is None:
            raise GluelocError(f"no image named {name!r} in {db.layout.root}")
        shard = session.get(FeatureShard, image.shard_id)
        changes = session.scalars(select(CoordinateChange).where(CoordinateChange.image_id == image.id)).all()
        record: dict[str, Any] = {
            "id": image.id, "name": image.name, "x": image.x, "y": image.y, "width": image.width,
            "height": image.height, "sha256": image.sha256, "status": image.status,
            "extractor": f"{image.extractor} v{image.extractor_version}", "num_keypoints": image.num_keypoints,
            "shard": shard.filename if shard else None, "run_id": image.run_id,
            "vector_shard": _vector_shard(session, image.vector_shard_id),
            "vote_segment": _vote_segment(session, image.vote_segment_id),
            "created_at": image.created_at.isoformat(timespec="seconds"),
            "updated_at": image.updated_at.isoformat(timespec="seconds"),
            "coordinate_changes": [
                {"run_id": c.run_id, "from": [c.old_x, c.old_y], "to": [c.new_x, c.new_y],
                 "at": c.changed_at.isoformat(timespec="seconds")} for c in changes],
        }
    if shard is not None:
        try:
            with FeatureReader(db.layout.features_dir) as reader:
                record["stored_keypoints"] = len(reader.features(shard.filename, image.name))
        except (OSError, KeyError) as exc:
            record["stored_keypoints"] = f"unreadable ({exc})"
    return record


@dataclass(frozen=True)
class CalibrationStatus:
    """Whether queries of the database's current state answer calibrated (``glueloc calibrate``)."""

    images: int  # images the database holds now
    calibration_id: int | None  # the calibration queries drawing ``retrieval`` shortlists use; None: none
    fitted_on: int | None  # images the database held when that calibration was fitted

    @property
    def current(self) -> bool:
        """Fitted on exactly the images there are now (a later index run makes it stale but still used)."""
        return self.calibration_id is not None and self.fitted_on == self.images


def calibration_status(db: Database, retrieval: str) -> CalibrationStatus:
    """What a user needs to know after indexing: is the database calibrated for what it now holds?"""
    with db.session() as session:
        state = db.state(session)
        images = session.scalar(select(func.count()).select_from(Image)) or 0
        row = None if state is None or state.codebook_id is None else db.calibration(session, state.codebook_id, retrieval, state.model_id)
        return CalibrationStatus(images, None if row is None else row.id, None if row is None else row.images)
