"""From a verified pair to a direction: where does the database camera stand, seen from the query?

Copying neighbours' positions (or averaging them) can only answer *at* or *between*
capture points; the query usually stands somewhere else. The matches that verified a
candidate hold more than a count: the relative pose of the two cameras. Its rotation
needs the database camera's heading, which the labels lack, but its translation
direction does not — it says in which direction, *in the query's own frame*, the
candidate's camera stands. Three or more such directions to capture points at known
positions fix the query's position and heading (query.resection); no database heading
is needed.

The relative pose comes from the essential matrix of the RANSAC inliers, which needs
the cameras' focal length. Labels carry none, so the horizontal field of view is a
parameter (one for the database and its queries) that ``glueloc calibrate`` chooses on
held-out places. Only the horizontal direction is used: the positions are 2-D.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

logger = logging.getLogger(__name__)

MIN_POINTS = 8  # fewer inlier pairs do not determine a relative pose
#: Essential-matrix RANSAC threshold in pixels (converted with the focal length), and how
#: sure RANSAC must be. The points are already the fundamental-matrix inliers, so this
#: mostly removes the few that fit F but not a calibrated pose.
THRESHOLD_PX = 1.5
CONFIDENCE = 0.999


@dataclass(frozen=True)
class InlierPoints:
    """The verified correspondences of one query-candidate pair, in original-image pixels."""

    query: np.ndarray  # (N, 2) query keypoints
    candidate: np.ndarray  # (N, 2) the candidate's keypoints
    query_size: tuple[int, int]  # (width, height) of the query image
    candidate_size: tuple[int, int]  # (width, height) of the candidate image

    def __len__(self) -> int:
        return len(self.query)


def focal_length(width: int, fov_degrees: float) -> float:
    """Pixels of focal length of a pinhole camera ``width`` pixels wide seeing ``fov_degrees`` across."""
    if not 0.0 < fov_degrees < 180.0:
        raise ValueError(f"a horizontal field of view must lie strictly between 0 and 180 degrees, not {fov_degrees}")
    return (width / 2.0) / math.tan(math.radians(fov_degrees) / 2.0)


def _normalised(points: np.ndarray, size: tuple[int, int], fov_degrees: float) -> tuple[np.ndarray, float]:
    """Pixel coordinates -> normalised image coordinates (principal point at the centre)."""
    f = focal_length(size[0], fov_degrees)
    centre = np.array([size[0] / 2.0, size[1] / 2.0])
    return (np.asarray(points, np.float64) - centre) / f, f


def bearing(pair: InlierPoints, fov_degrees: float) -> float | None:
    """Horizontal direction (radians, positive to the right of the query's optical axis) in
    which the candidate's camera stands, or None when the inliers do not fix a relative pose."""
    if len(pair) < MIN_POINTS:
        return None
    q, fq = _normalised(pair.query, pair.query_size, fov_degrees)
    c, fc = _normalised(pair.candidate, pair.candidate_size, fov_degrees)
    identity = np.eye(3)
    try:
        essential, mask = cv2.findEssentialMat(q, c, identity, cv2.USAC_MAGSAC, CONFIDENCE,
                                               THRESHOLD_PX / min(fq, fc))
        if essential is None or essential.shape != (3, 3) or mask is None:
            return None
        kept, rotation, translation, _ = cv2.recoverPose(essential, q, c, identity, mask=mask.copy())
    except cv2.error:
        # Degenerate inlier sets make OpenCV raise instead of returning no model.
        return None
    if kept < MIN_POINTS:
        return None
    # x_candidate = R x_query + t, so the candidate's centre in the query frame is -R^T t
    # (x right, y down, z forward): its horizontal angle is atan2(x, z).
    centre = -rotation.T @ translation.ravel()
    return float(math.atan2(centre[0], centre[2]))
