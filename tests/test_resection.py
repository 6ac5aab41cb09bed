"""glueloc.query.resection and its use in query.position: the position from directions to known places."""

from __future__ import annotations

import math

import numpy as np
import pytest

from glueloc.query.evidence import Estimate, Neighbour
from glueloc.query.sightings import BearingsConf, resected
from glueloc.query.resection import Sighting, resect

TRUTH = (3.0, -2.0)
HEADING = math.radians(35)
PLACES = [(6.0, 1.0), (1.0, 2.0), (7.0, -4.0), (4.0, 3.5)]


def seen_from(where: tuple[float, float], heading: float, places, axes: str = "y-up", weight: float = 100.0):
    """The sightings a camera at ``where`` looking along ``heading`` makes (angles right of its axis)."""
    turn = -1.0 if axes == "y-up" else 1.0
    out = []
    for x, y in places:
        direction = math.atan2(y - where[1], x - where[0])
        angle = math.remainder((direction - heading) / turn, math.tau)
        out.append(Sighting(x, y, angle, weight))
    return out


@pytest.mark.parametrize("axes", ["y-up", "y-down"])
def test_resection_recovers_position_and_heading(axes: str) -> None:
    radius = 4.0
    solution = resect(seen_from(TRUTH, HEADING, PLACES, axes), (4.5, -1.0), radius, axes)
    step = 2 * radius / 64
    assert solution is not None and solution.places == 4
    assert abs(solution.x - TRUTH[0]) <= step and abs(solution.y - TRUTH[1]) <= step
    assert abs(math.remainder(solution.heading - HEADING, math.tau)) < math.radians(2)
    assert solution.residual < 1e-3


def test_the_wrong_axes_do_not_fit() -> None:
    """Mirrored directions explain the sightings worse: the map axes are measurable."""
    sightings = seen_from(TRUTH, HEADING, PLACES, "y-up")
    right = resect(sightings, (4.5, -1.0), 4.0, "y-up")
    wrong = resect(sightings, (4.5, -1.0), 4.0, "y-down")
    assert right is not None and wrong is not None and wrong.residual > 10 * right.residual + 1e-3


def test_fewer_than_three_places_fix_nothing() -> None:
    two = seen_from(TRUTH, HEADING, PLACES[:2]) * 3  # many sightings, but of two places only
    assert resect(two, (4.5, -1.0), 4.0) is None
    with pytest.raises(ValueError, match="map axes"):
        resect(two, (0, 0), 4.0, "sideways")


def test_a_wrong_light_sighting_barely_moves_the_answer() -> None:
    sightings = seen_from(TRUTH, HEADING, PLACES) + [Sighting(5.0, -5.0, 2.5, 5.0)]  # far off its true angle
    solution = resect(sightings, (4.5, -1.0), 4.0)
    assert solution is not None
    light = abs(solution.x - TRUTH[0]) + abs(solution.y - TRUTH[1])
    heavy = resect(sightings[:-1] + [Sighting(5.0, -5.0, 2.5, 400.0)], (4.5, -1.0), 4.0)
    assert light < 1.0  # 0.6 measured
    assert heavy is not None and abs(heavy.x - TRUTH[0]) + abs(heavy.y - TRUTH[1]) > light  # weights do matter


def neighbour(i: int, x: float, y: float, inliers: int) -> Neighbour:
    return Neighbour(i, f"db{i}.jpg", x, y, 0.5, inliers + 10, inliers, 0.5)


def test_resected_moves_only_verified_answers_and_keeps_far_lookalikes_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """glueloc.query.position.resected: sightings from near verified neighbours place the answer; the
    bearings it used are written on the neighbours; an unverified answer stays put."""
    near = [neighbour(i, x, y, 120) for i, (x, y) in enumerate(PLACES)]
    far = neighbour(9, 60.0, 60.0, 300)  # a look-alike 60 units away: never a sighting
    weak = neighbour(8, 5.0, 0.0, 3)  # below min_inliers: never a sighting
    neighbours = near + [far, weak]
    angles = {(s.x, s.y): s.angle for s in seen_from(TRUTH, HEADING, PLACES)}
    asked = []

    def fake_bearing(pair, fov):  # the pair stands for its neighbour here: bearings are tested on their own
        asked.append(pair)
        return angles[pair]

    monkeypatch.setattr("glueloc.query.sightings.bearing", fake_bearing)
    pairs = [(n.x, n.y) for n in neighbours]
    answer = Estimate(5.0, 0.0, 0.8, 1.0, True, near[:1])
    moved, annotated, placed = resected(answer, neighbours, pairs, BearingsConf(70.0, "y-up"), radius=4.0)
    assert placed and abs(moved.x - TRUTH[0]) + abs(moved.y - TRUTH[1]) < 0.2
    assert sorted(asked) == sorted(PLACES)
    assert [n.bearing is not None for n in annotated] == [True] * 4 + [False, False]
    assert annotated[0].bearing == pytest.approx(math.degrees(angles[PLACES[0]]), abs=0.01)

    unverified = Estimate(5.0, 0.0, 0.0, 1.0, False, near[:1])
    same, _, placed = resected(unverified, neighbours, pairs, BearingsConf(70.0, "y-up"), radius=4.0)
    assert not placed and (same.x, same.y) == (5.0, 0.0)
    assert np.isfinite(moved.confidence)
