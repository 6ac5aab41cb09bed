"""From verified neighbours to a position, a confidence and an uncertainty.

The foundation's estimator is deliberately simple and honest: the position of the
candidate with the most RANSAC inliers, if that is at least ``min_inliers``; otherwise
the best retrieval candidate with zero confidence, flagged as unverified. The query
issue replaces it with a robust estimator over several neighbours.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Estimate:
    x: float
    y: float
    confidence: float  # 0 = nothing verified, towards 1 = strong geometric evidence
    verified: bool
    used: list[Neighbour]


def best_verified(neighbours: list[Neighbour], min_inliers: int = 15) -> Estimate | None:
    """Copy the position of the most-inlier neighbour; None when there are no neighbours."""
    if not neighbours:
        return None
    best = max(neighbours, key=lambda n: (n.inliers, n.similarity))
    if best.inliers < min_inliers:
        top = max(neighbours, key=lambda n: n.similarity)
        return Estimate(top.x, top.y, 0.0, False, [top])
    confidence = best.inliers / (best.inliers + 2.0 * min_inliers)
    return Estimate(best.x, best.y, round(confidence, 3), True, [best])
