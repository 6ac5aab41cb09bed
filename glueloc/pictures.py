"""Pictures of an answer: the query beside a verified neighbour, with the matches drawn.

Drawing is presentation, so it sits on top of the query path instead of inside it: the
Localizer answers, and this module re-runs the one verification it is asked to show.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from glueloc.core.errors import GluelocError
from glueloc.query.localizer import Localizer
from glueloc.query.verify import verify_pair
from glueloc.vision.images import load_image
from glueloc.viz import draw_matches

logger = logging.getLogger(__name__)


def match_picture(localizer: Localizer, path: Path, image_id: int) -> np.ndarray:
    """The query at ``path`` and the database image ``image_id`` side by side with their matches
    (``query --viz``, ``serve``'s ``/match.png``)."""
    db_image = localizer.images[image_id]
    if db_image.path is None or not db_image.path.is_file():
        raise GluelocError(f"{db_image.name}: the database image is no longer at {db_image.path}; cannot draw it")
    query = load_image(path, localizer.options.max_pixels)
    other = load_image(db_image.path, localizer.options.max_pixels)
    features = localizer.extractor.extract(query.rgb)
    db_features = localizer.reader.features(db_image.shard, db_image.name)
    check = verify_pair(features, db_features, localizer.matcher, localizer.options.geometry)
    pairs = check.correspondences
    text = [f"{path.name} | {db_image.name} ({db_image.x:.2f}, {db_image.y:.2f})",
            f"{check.matches} matches, {check.inliers} inliers"]
    return draw_matches(query.rgb, other.rgb, features.keypoints[pairs.indices[:, 0]],
                        db_features.keypoints[pairs.indices[:, 1]], pairs.scores, check.inlier_mask, text)
