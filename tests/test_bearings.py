"""glueloc.query.bearings: the direction of a verified candidate's camera, seen from the query."""

from __future__ import annotations

import math

import numpy as np
import pytest

from glueloc.vision.extractors import load_extractor
from glueloc.vision.matchers import load_matcher
from glueloc.synthetic import CAMERA_HEIGHT, HFOV_RADIANS, Pose, Scene
from glueloc.query.bearings import InlierPoints, bearing, focal_length
from glueloc.query.verify import verify_pair

SIZE = (640, 480)


def true_bearing(query: Pose, other: Pose) -> float:
    """Radians to the right of the query's axis at which ``other`` stands (synthetic.Pose axes: y up)."""
    forward = np.array([math.cos(query.heading), math.sin(query.heading)])
    right = np.array([math.sin(query.heading), -math.cos(query.heading)])
    offset = np.array([other.x - query.x, other.y - query.y])
    return math.atan2(offset @ right, offset @ forward)


def project(points: np.ndarray, pose: Pose, fov_degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole projection of world points (x, y, height) into a level camera; also which lie in front."""
    forward = np.array([math.cos(pose.heading), math.sin(pose.heading)])
    right = np.array([math.sin(pose.heading), -math.cos(pose.heading)])
    relative = points[:, :2] - (pose.x, pose.y)
    x, z = relative @ right, relative @ forward
    y = CAMERA_HEIGHT - points[:, 2]  # image rows grow downwards
    f = focal_length(SIZE[0], fov_degrees)
    pixels = np.stack([f * x / z + SIZE[0] / 2, f * y / z + SIZE[1] / 2], 1)
    inside = (z > 0.5) & (np.abs(pixels[:, 0] - SIZE[0] / 2) < SIZE[0] / 2) & (np.abs(pixels[:, 1] - SIZE[1] / 2) < SIZE[1] / 2)
    return pixels, inside


@pytest.mark.parametrize("other", [Pose(1.5, 0.8, 0.9), Pose(-1.0, 2.0, -0.2), Pose(0.3, -1.2, 0.4)])
def test_bearing_of_projected_points_is_the_true_direction(other: Pose) -> None:
    rng = np.random.default_rng(0)
    query = Pose(0.0, 0.0, 0.3)
    # points on "walls" 4-9 units ahead of both cameras, at any height in the room
    points = np.column_stack([rng.uniform(3, 9, 400) * math.cos(0.3) + rng.uniform(-3, 3, 400),
                              rng.uniform(3, 9, 400) * math.sin(0.3) + rng.uniform(-3, 3, 400) + 2,
                              rng.uniform(0, 3, 400)])
    in_query, seen_q = project(points, query, 70.0)
    in_other, seen_o = project(points, other, 70.0)
    both = seen_q & seen_o
    assert both.sum() > 50
    noise = rng.normal(0, 0.3, (int(both.sum()), 2))
    pair = InlierPoints(in_query[both] + noise, in_other[both], SIZE, SIZE)
    angle = bearing(pair, 70.0)
    assert angle is not None
    assert math.degrees(abs(angle - true_bearing(query, other))) < 1.0


def test_too_few_or_degenerate_points_give_no_bearing() -> None:
    few = InlierPoints(np.zeros((5, 2)), np.zeros((5, 2)), SIZE, SIZE)
    assert bearing(few, 70.0) is None
    same = np.random.default_rng(1).uniform(0, 400, (40, 2))
    # identical images (no translation) may give no pose or any direction, but never an error
    result = bearing(InlierPoints(same, same, SIZE, SIZE), 70.0)
    assert result is None or -math.pi <= result <= math.pi


def test_field_of_view_must_be_a_real_angle() -> None:
    assert focal_length(640, 90.0) == pytest.approx(320.0)
    for fov in (0.0, 180.0, -5.0):
        with pytest.raises(ValueError, match="field of view"):
            focal_length(640, fov)


def test_bearing_from_rendered_views_matched_by_the_real_pipeline() -> None:
    """Render two views of the synthetic room, verify them as a query would, and read the direction."""
    scene = Scene.from_seed(0)
    query, other = Pose(4.0, 3.0, math.radians(60)), Pose(5.2, 3.4, math.radians(80))
    extractor, matcher = load_extractor("sift"), load_matcher("nn")
    features = [extractor.extract(scene.render(p, *SIZE)) for p in (query, other)]
    check = verify_pair(features[0], features[1], matcher)
    assert check.inliers > 50
    kept = check.correspondences.indices[check.inlier_mask]
    pair = InlierPoints(features[0].keypoints[kept[:, 0]], features[1].keypoints[kept[:, 1]], SIZE, SIZE)
    angle = bearing(pair, math.degrees(HFOV_RADIANS))
    assert angle is not None
    assert math.degrees(abs(angle - true_bearing(query, other))) < 5.0
