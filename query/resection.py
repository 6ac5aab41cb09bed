"""The query's position from the directions in which it sees known capture points.

Each verified neighbour near the chosen place gives a *sighting*: the capture point's
known (x, y) and the horizontal direction in which the query sees it (query.bearings),
relative to the query's unknown heading. Position (2 unknowns) and heading (1) follow
from three or more sightings of distinct places — the classic resection from bearings.

The search is deliberately local and exhaustive: a grid of positions within ``radius``
of the prior answer (the calibrated rule's, which already chose the right place), and
for each the heading that best explains the sightings in closed form (the weighted
circular mean of the implied headings). The cost, sum of w (1 - cos(residual)), is
robust by construction — a wrong sighting costs at most 2 w however wrong it is — and the
grid cannot fall into the local minima an iterative solver meets near capture points,
where a direction changes fast with position.

Which way a turn to the right goes on the map depends on the labels' axes: ``y-up``
(x to the right, y up, as on a map: a right turn is clockwise) or ``y-down`` (as image
rows: a right turn is counter-clockwise). ``glueloc calibrate`` chooses on held-out places.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

MAP_AXES = ("y-up", "y-down")
MIN_PLACES = 3  # two directions leave a circle of positions; three fix one
GRID_STEPS = 65  # positions per side of the search grid (odd: the prior itself is on it)


@dataclass(frozen=True)
class Sighting:
    x: float  # the capture point seen
    y: float
    angle: float  # radians, positive to the right of the query's optical axis (query.bearings)
    weight: float  # how much evidence stands behind it (e.g. inliers squared)


@dataclass(frozen=True)
class Resection:
    x: float
    y: float
    heading: float  # radians on the map: the direction the query camera looked
    residual: float  # weighted mean of 1 - cos(angle error): 0 = every sighting agrees, 2 = opposite
    places: int  # distinct capture points the answer rests on


def resect(sightings: Sequence[Sighting], prior: tuple[float, float], radius: float,
           axes: str = "y-up", steps: int = GRID_STEPS) -> Resection | None:
    """The position within ``radius`` (L-inf) of ``prior`` that best explains the sightings;
    None with fewer than :data:`MIN_PLACES` distinct places (the position would not be fixed)."""
    if axes not in MAP_AXES:
        raise ValueError(f"unknown map axes {axes!r} ({', '.join(MAP_AXES)})")
    if radius <= 0:
        raise ValueError(f"the search radius must be positive, not {radius}")
    usable = [s for s in sightings if s.weight > 0 and np.isfinite(s.angle)]
    places = len({(s.x, s.y) for s in usable})
    if places < MIN_PLACES:
        return None
    turn = -1.0 if axes == "y-up" else 1.0  # map angle of a direction seen `angle` to the right
    offsets = np.linspace(-radius, radius, steps)
    xs, ys = np.meshgrid(prior[0] + offsets, prior[1] + offsets)
    pull = np.zeros(xs.shape, complex)  # sum of w * exp(i * implied heading)
    total = 0.0
    for s in usable:
        direction = np.arctan2(s.y - ys, s.x - xs)  # map angle from the grid position to the place
        pull += s.weight * np.exp(1j * (direction - turn * s.angle))
        total += s.weight
    cost = total - np.abs(pull)  # = min over the heading of sum w (1 - cos(residual))
    best = np.unravel_index(int(np.argmin(cost)), cost.shape)
    return Resection(float(xs[best]), float(ys[best]), float(np.angle(pull[best])),
                     float(cost[best] / total), places)
