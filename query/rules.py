"""Calibrated rules: per-candidate probabilities (``query.rerank``) -> a position.

``glueloc calibrate`` fits the probabilities and picks the rule and its sharpness by
cross-validated MAE on held-out database places; a calibrated query then answers with
:func:`estimate_ranked`. Its confidence is the fitted probability that the chosen
candidate lies within the near radius of the query, not a heuristic.
"""

from __future__ import annotations

import logging

import numpy as np

from glueloc.query.evidence import Estimate, Neighbour, l1

logger = logging.getLogger(__name__)

#: Rules that turn a calibrated model's probabilities into a position (query.calibrate picks one).
RANKED_RULES = ("inliers", "copy", "mean", "median", "inliers-mean")


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
    distance = np.array([l1(n, x, y) for n in neighbours])
    uncertainty = float((p * distance).sum() / max(p.sum(), 1e-12))
    used = [neighbours[i] for i in np.argsort(-p, kind="stable") if distance[i] <= radius] or [neighbours[best]]
    verified = neighbours[best].inliers >= min_inliers
    return Estimate(float(x), float(y), round(float(p[best]), 3), round(uncertainty, 3), verified, used)
