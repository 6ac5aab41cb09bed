"""Uncalibrated estimators: verified neighbours -> a position, a confidence and an uncertainty.

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
calibrated error bound.
A calibrated database answers through ``query.rules`` instead.
"""

from __future__ import annotations

import logging

import numpy as np

from glueloc.query.evidence import Estimate, Neighbour, inlier_weighted, l1

logger = logging.getLogger(__name__)

ESTIMATORS = ("best", "weighted-mean", "cluster")


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
        spread = float(np.mean([l1(n, top.x, top.y) for n in neighbours]))
        return Estimate(top.x, top.y, 0.0, round(spread, 3), False, [top])
    if method == "best":
        used = verified[:1]
    elif method == "weighted-mean":
        used = verified[:top_n]
    else:
        groups = [[m for m in verified if l1(m, seed.x, seed.y) <= radius] for seed in verified]
        used = max(groups, key=lambda g: sum(m.inliers for m in g))
    x, y = inlier_weighted(used)
    agreeing = [n for n in verified if l1(n, x, y) <= radius]
    weights = np.array([n.inliers for n in agreeing], float)
    spread = float((weights * [l1(n, x, y) for n in agreeing]).sum() / weights.sum()) if agreeing else radius
    total = sum(n.inliers for n in verified)
    support = sum(n.inliers for n in agreeing)
    strength = support / (support + 2.0 * min_inliers)
    confidence = strength * support / total
    return Estimate(x, y, round(confidence, 3), round(spread, 3), True, used)
