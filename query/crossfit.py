"""Calibration's learned image ranking, from projections that never saw the held-out place.

``glueloc calibrate`` asks the real query path, for a held-out capture point, which
database photos look like it. The VLAD and vote rankings can answer that honestly: they
were not fitted on which photos are near which. The learned image ranking was — its
projection was trained on exactly the database's near pairs — so ranked by it, a held-out
photo finds its near photos far more often than a user's photo would (in `glueloc demo`'s
160-photo room: 96 % against 77 % at R@10), and calibration would fit how far to trust
the shortlist on an exam it had the answers to.

The model file also holds the method refitted once per fold of capture points
(``vision.projection.CrossFit``, written by ``indexer.train``). A held-out place is ranked
with its fold's projection over the stored raw embeddings of every database photo, as a
new photo is ranked by a model trained without it. A place the model was not trained on
(indexed after it) is ranked by the model itself, which never saw it either.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from glueloc.core.threads import single_threaded
from glueloc.query.localizer import ImageRanker, Localizer
from glueloc.query.snapshot import unreadable_model
from glueloc.storage.globals import read_cross_fit
from glueloc.vision.projection import CrossFit

logger = logging.getLogger(__name__)


@dataclass
class CrossFitRanking:
    """Per-fold image rankings of the database a localizer holds (its snapshot's images)."""

    cross_fit: CrossFit
    ids: np.ndarray  # (N,) image ids, the rows of ``raw``
    raw: np.ndarray  # (N, D) stored raw embeddings
    _fold: int | None = field(default=None, repr=False)
    _vectors: np.ndarray | None = field(default=None, repr=False)  # the database projected by ``_fold``

    @classmethod
    def of(cls, localizer: Localizer) -> CrossFitRanking | None:
        """The cross-fitted ranking of the localizer's retrieval model; None: it has no model,
        or a model trained without folds (the caller says so: ranking is then in-sample)."""
        if localizer.model is None:
            return None
        path = localizer.db.layout.vectors_dir / localizer.model.row.filename
        try:
            cross_fit = read_cross_fit(path)
        except (OSError, KeyError, ValueError) as exc:
            raise unreadable_model(path.name, exc) from None
        if cross_fit is None:
            return None
        images = sorted(localizer.images.values(), key=lambda i: i.id)
        raw = np.stack([localizer.reader.embedding(i.shard, i.name) for i in images]).astype(np.float32)
        return cls(cross_fit, np.array([i.id for i in images], dtype=np.int64), raw)

    @property
    def folds(self) -> int:
        return len(self.cross_fit.projections)

    def fold_of(self, x: float, y: float) -> int | None:
        return self.cross_fit.fold_of(x, y)

    def ranker(self, fold: int) -> ImageRanker:
        """Ranks by the projection fitted without ``fold`` (keep one fold's places together:
        the database is projected again whenever the fold changes)."""
        return lambda embedding, excluded: self._rank(fold, embedding, excluded)

    def _rank(self, fold: int, embedding: np.ndarray, excluded: list[int]) -> np.ndarray:
        projection = self.cross_fit.projections[fold]
        if self._fold != fold or self._vectors is None:
            self._vectors, self._fold = projection.project(self.raw), fold
        query = projection.project(embedding)[0]
        with single_threaded():
            sims = self._vectors @ query
        keep = ~np.isin(self.ids, np.asarray(excluded, dtype=np.int64))
        order = np.argsort(-sims[keep], kind="stable")
        return self.ids[keep][order]
