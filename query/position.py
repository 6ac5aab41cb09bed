"""From verified neighbours to a position, a confidence and an uncertainty.

Three estimators, selectable because which one wins depends on the database
(compare them with ``bench/estimators.py``):

* ``best`` — copy the position of the neighbour with the most RANSAC inliers. On the
  Getty dev queries this had the lowest MAE of the three (10.11, against 10.66 and 12.43),
  so it is the default.
* ``weighted-mean`` — inlier-weighted mean of the ``top_n`` verified neighbours: finer
  than one photo when they agree, dragged away when one of them is another room.
* ``cluster`` — group verified neighbours lying within ``radius`` of each other; the
  group with the most inliers in total wins and its inlier-weighted mean is the answer,
  so a strong match far from where the others agree (a repeated artwork, another floor)
  cannot drag the estimate.

A neighbour is *verified* with at least ``min_inliers`` inliers. With none, the answer
is the best retrieval candidate, flagged unverified with confidence 0. ``confidence``
grows with the winning evidence and shrinks with the share of verified inliers that
point elsewhere; ``uncertainty`` is the inlier-weighted spread (mean |dx| + |dy|) of the
verified neighbours that agree with the estimate — a description of the evidence, not a
calibrated error bound. A calibrated database (``glueloc calibrate``) answers through
:func:`estimate_ranked` instead, whose confidence is a fitted probability, and, when its
calibration fitted a camera, :func:`resected` then places the query within the chosen
place from the directions in which it sees the verified neighbours there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from query.bearings import InlierPoints, bearing
from query.resection import MAP_AXES, Sighting, resect

logger = logging.getLogger(__name__)

ESTIMATORS = ("best", "weighted-mean", "cluster")
#: Rules that turn a calibrated model's probabilities into a position (query.calibrate picks one).
RANKED_RULES = ("inliers", "copy", "mean", "median", "inliers-mean")


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


def _l1(n: Neighbour, x: float, y: float) -> float:
    return abs(n.x - x) + abs(n.y - y)


def _weighted(members: list[Neighbour]) -> tuple[float, float]:
    w = np.array([m.inliers for m in members], float)
    xy = np.array([(m.x, m.y) for m in members])
    x, y = (w[:, None] * xy).sum(0) / w.sum()
    return float(x), float(y)


def estimate(neighbours: list[Neighbour], method: str = "best", min_inliers: int = 15, radius: float = 5.0,
             top_n: int = 3) -> Estimate | None:
    """The position estimate from verified neighbours; None when there are no neighbours at all."""
    if method not in ESTIMATORS:
        raise ValueError(f"unknown estimator {method!r} ({', '.join(ESTIMATORS)})")
    if not neighbours:
        return None
    verified = sorted((n for n in neighbours if n.inliers >= min_inliers), key=lambda n: -n.inliers)
    if not verified:
        top = max(neighbours, key=lambda n: n.similarity)
        spread = float(np.mean([_l1(n, top.x, top.y) for n in neighbours]))
        return Estimate(top.x, top.y, 0.0, round(spread, 3), False, [top])
    if method == "best":
        used = verified[:1]
    elif method == "weighted-mean":
        used = verified[:top_n]
    else:
        groups = [[m for m in verified if _l1(m, seed.x, seed.y) <= radius] for seed in verified]
        used = max(groups, key=lambda g: sum(m.inliers for m in g))
    x, y = _weighted(used)
    agreeing = [n for n in verified if _l1(n, x, y) <= radius]
    weights = np.array([n.inliers for n in agreeing], float)
    spread = float((weights * [_l1(n, x, y) for n in agreeing]).sum() / weights.sum()) if agreeing else radius
    total = sum(n.inliers for n in verified)
    support = sum(n.inliers for n in agreeing)
    strength = support / (support + 2.0 * min_inliers)
    confidence = strength * support / total
    return Estimate(x, y, round(confidence, 3), round(spread, 3), True, used)


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The smallest value at which the cumulative weight reaches half the total."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2.0)])


def estimate_ranked(neighbours: list[Neighbour], probabilities: np.ndarray, rule: str = "copy",
                    sharpness: float = 1.0, radius: float = 5.0, min_inliers: int = 15) -> Estimate | None:
    """A position from calibrated per-candidate probabilities (query.rerank).

    * ``inliers`` — the position of the candidate with the most inliers (the uncalibrated
      rule), with the model's probability as its confidence.
    * ``copy`` — the position of the most probable candidate.
    * ``mean`` — the ``p ** sharpness``-weighted mean of the candidates within ``radius`` of
      the most probable one: a position *between* neighbouring capture points when several
      of them verify, instead of the nearest photo's.
    * ``median`` — the coordinate-wise weighted median of the candidates' positions,
      weights ``p ** sharpness``. The error metric is |dx| + |dy|, and the weighted median
      minimises its expectation when the weights are where the query could be: when two
      places are about equally likely, the answer hedges between them instead of betting.
    * ``inliers-mean`` — the candidate with the most inliers chooses the place, as with
      ``inliers``; the answer is the ``inliers ** sharpness``-weighted mean of the verified
      candidates within ``radius`` of it: the query usually stands between capture points
      that all see what it sees, and a far look-alike cannot pull (it is outside the radius).

    ``confidence`` is the chosen (for ``median``: the most probable) candidate's probability
    of lying within ``radius`` of the query, which is what the model was fitted to
    predict; ``uncertainty`` the
    probability-weighted mean distance of the candidates from the estimate.
    """
    if rule not in RANKED_RULES:
        raise ValueError(f"unknown rule {rule!r} ({', '.join(RANKED_RULES)})")
    if not neighbours:
        return None
    p = np.asarray(probabilities, float)
    by_inliers = rule in ("inliers", "inliers-mean")
    best = int(np.argmax([n.inliers for n in neighbours])) if by_inliers else int(np.argmax(p))
    xy = np.array([(n.x, n.y) for n in neighbours], float)
    if rule in ("inliers", "copy"):
        x, y = neighbours[best].x, neighbours[best].y
    elif rule in ("mean", "inliers-mean"):
        if rule == "mean":
            weight = p ** sharpness
        else:
            inliers = np.array([n.inliers for n in neighbours], float)
            weight = inliers ** sharpness * (inliers >= min_inliers)
        w = weight * (np.abs(xy - xy[best]).sum(1) <= radius)
        x, y = (w[:, None] * xy).sum(0) / w.sum() if w.sum() > 0 else xy[best]
    else:
        w = p ** sharpness
        x, y = weighted_median(xy[:, 0], w), weighted_median(xy[:, 1], w)
    distance = np.array([_l1(n, x, y) for n in neighbours])
    uncertainty = float((p * distance).sum() / max(p.sum(), 1e-12))
    used = [neighbours[i] for i in np.argsort(-p, kind="stable") if distance[i] <= radius] or [neighbours[best]]
    verified = neighbours[best].inliers >= min_inliers
    return Estimate(float(x), float(y), round(float(p[best]), 3), round(uncertainty, 3), verified, used)


@dataclass(frozen=True)
class BearingsConf:
    """How to place the query between capture points by resection (fitted by ``glueloc calibrate``)."""

    fov: float  # horizontal field of view of the database's (and queries') camera, degrees
    axes: str  # which way the labels' y axis points (query.resection.MAP_AXES)

    def __post_init__(self) -> None:
        if not 0.0 < self.fov < 180.0:
            raise ValueError(f"field of view {self.fov} is not an angle between 0 and 180 degrees")
        if self.axes not in MAP_AXES:
            raise ValueError(f"unknown map axes {self.axes!r} ({', '.join(MAP_AXES)})")


def sightings(answer: Estimate, neighbours: Sequence[Neighbour], pairs: Sequence[InlierPoints], fov: float,
              radius: float, min_inliers: int = 15) -> list[tuple[int, Sighting]]:
    """The directions to the answer's place that the verified neighbours give, by neighbour index.

    Only neighbours within ``2 * radius`` of the answer count (a far look-alike says nothing
    about where the query stands in this place), weighted by inliers squared as in
    ``inliers-mean``. An unverified answer has none: there is no place to stand in.
    """
    if not answer.verified:
        return []
    seen = []
    for i, (n, pair) in enumerate(zip(neighbours, pairs)):
        if n.inliers < min_inliers or _l1(n, answer.x, answer.y) > 2.0 * radius:
            continue
        angle = bearing(pair, fov)
        if angle is not None:
            seen.append((i, Sighting(n.x, n.y, angle, float(n.inliers) ** 2)))
    return seen


def resected(answer: Estimate, neighbours: Sequence[Neighbour], pairs: Sequence[InlierPoints],
             conf: BearingsConf, radius: float, min_inliers: int = 15) -> tuple[Estimate, list[Neighbour], bool]:
    """Move a verified answer to where the directions to its neighbours say the query stands.

    The rule already chose the place; this only places the query *within* it: the search
    stays within ``radius`` of the answer (query.resection). With fewer than three distinct
    places in sight the answer is left as it is. Returns the answer, the neighbours carrying
    the bearings computed (degrees), and whether resection placed it.
    """
    seen = sightings(answer, neighbours, pairs, conf.fov, radius, min_inliers)
    out = list(neighbours)
    for i, sighting in seen:
        out[i] = replace(out[i], bearing=round(float(np.degrees(sighting.angle)), 2))
    solution = resect([s for _, s in seen], (answer.x, answer.y), radius, conf.axes)
    if solution is None:
        return answer, out, False
    return replace(answer, x=solution.x, y=solution.y), out, True
