"""The records of verified evidence every position step reads and writes.

A :class:`Neighbour` is one verified candidate (its place, retrieval similarity, matches
and RANSAC inliers, and later its calibrated probability and bearing); an
:class:`Estimate` is a position with its confidence, its uncertainty and the neighbours
it rests on. The uncalibrated estimators (``query.estimators``), the calibrated rules
(``query.rules``) and resection (``query.sightings``) all speak in these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Neighbour:
    image_id: int
    name: str
    x: float
    y: float
    similarity: float
    matches: int
    inliers: int
    inlier_ratio: float
    probability: float | None = None  # of lying within the near radius, when the database is calibrated
    bearing: float | None = None  # degrees right of the query's axis where its camera stands (query.bearings), when resected


@dataclass(frozen=True)
class Estimate:
    x: float
    y: float
    confidence: float  # 0 = nothing verified, towards 1 = strong, undisputed geometric evidence
    uncertainty: float  # inlier-weighted spread of the agreeing neighbours, in position units
    verified: bool
    used: list[Neighbour]


def l1(n: Neighbour, x: float, y: float) -> float:
    return abs(n.x - x) + abs(n.y - y)


def inlier_weighted(members: list[Neighbour]) -> tuple[float, float]:
    w = np.array([m.inliers for m in members], float)
    xy = np.array([(m.x, m.y) for m in members])
    x, y = (w[:, None] * xy).sum(0) / w.sum()
    return float(x), float(y)
