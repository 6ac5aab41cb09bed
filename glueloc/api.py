"""The Python API: index labelled photos and place new ones from a program.

The CLI is one user of these calls; a service or a notebook is another. Each call opens
what it needs and closes it again; for many queries keep one :class:`Localizer` open
(``with Localizer(Layout.at(db)) as localizer: localizer.locate(path)``), which takes
one snapshot of the database and answers every query from it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from glueloc.core.errors import BadImageError, DatabaseError, GluelocError
from glueloc.core.labels import LabelRow, read_labels
from glueloc.indexer.pipeline import IndexOptions, IndexRunner, IndexSummary
from glueloc.indexer.repair import repair
from glueloc.query.calibrate import CalibrationOptions, CalibrationResult, calibrate
from glueloc.query.localizer import Localizer, Location, QueryOptions
from glueloc.query.retrieval import FUSED
from glueloc.storage.audit import AuditReport, audit
from glueloc.storage.layout import Layout

logger = logging.getLogger(__name__)


def index(db: Path, labels_csv: Path, images_dir: Path, options: IndexOptions | None = None) -> IndexSummary:
    """Add the labelled images of ``labels_csv`` (``name,x,y``) to the database at ``db``."""
    rows = read_labels(labels_csv, images_dir)
    return IndexRunner(Layout.at(db), options or IndexOptions()).run(
        rows, images_dir, {"labels": str(labels_csv), "images": str(images_dir), "api": True})


def calibrate_database(db: Path, options: CalibrationOptions | None = None, retrieval: str = FUSED,
                       progress: Callable[[int, int], None] | None = None) -> CalibrationResult:
    """Fit and record the database's calibration on its own held-out places (``glueloc calibrate``).

    Held-out places are queried with the longest shortlist compared and ranked by inliers
    alone (the calibration being fitted cannot rank its own evidence); ``retrieval`` is the
    shortlist the calibration is for, and ``progress(done, total)`` follows the places.
    """
    options = options or CalibrationOptions()
    query = QueryOptions(k=options.k_max, estimator="best", retrieval=retrieval, match_keypoints=options.match_keypoints)
    with Localizer(Layout.at(db), query) as localizer:
        return calibrate(localizer, options, progress=progress)


def locate(db: Path, photo: Path, options: QueryOptions | None = None) -> Location:
    """Where ``photo`` was taken, how sure glueloc is, and the evidence (one query)."""
    with Localizer(Layout.at(db), options) as localizer:
        return localizer.locate(photo)


__all__ = ["AuditReport", "BadImageError", "CalibrationOptions", "CalibrationResult", "DatabaseError",
           "GluelocError", "IndexOptions", "IndexSummary", "LabelRow", "Layout", "Localizer", "Location",
           "QueryOptions", "audit", "calibrate_database", "index", "locate", "read_labels", "repair"]
