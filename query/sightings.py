"""Resection wired to an answer: which neighbours give directions, and moving the answer by them.

The rule (``query.rules``) chooses the place; when the calibration fitted a camera
(:class:`BearingsConf`), the directions in which the query sees its verified neighbours
there (``query.bearings``) place it *within* that place (``query.resection``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from glueloc.query.bearings import InlierPoints, bearing
from glueloc.query.evidence import Estimate, Neighbour, l1
from glueloc.query.resection import MAP_AXES, Sighting, resect

logger = logging.getLogger(__name__)


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
        if n.inliers < min_inliers or l1(n, answer.x, answer.y) > 2.0 * radius:
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
