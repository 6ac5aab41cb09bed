"""Match two image files end to end: what ``glueloc match`` shows a person.

Useful on its own to judge a matcher on one's own photos, and the same code path the
benchmark times: decode -> extract -> match -> RANSAC.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from glueloc.vision.extractors import Features, load_extractor
from glueloc.vision.images import DecodedImage, load_image
from glueloc.vision.matchers import Matches, load_matcher
from glueloc.vision.pipelines import Pipeline
from glueloc.query.verify import Verification, ransac_inliers

logger = logging.getLogger(__name__)


@dataclass
class PairResult:
    images: tuple[DecodedImage, DecodedImage]
    features: tuple[Features, Features]
    matches: Matches
    verification: Verification
    seconds: dict[str, float] = field(default_factory=dict)

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        return (self.features[0].keypoints[self.matches.indices[:, 0]],
                self.features[1].keypoints[self.matches.indices[:, 1]])


def match_files(path0: Path, path1: Path, pipeline: Pipeline, geometry: str = "fundamental") -> PairResult:
    extractor = load_extractor(pipeline.extractor, pipeline.extractor_conf)
    matcher = load_matcher(pipeline.matcher, pipeline.matcher_conf)
    images = (load_image(path0), load_image(path1))
    clock = time.perf_counter()
    features = (extractor.extract(images[0].rgb), extractor.extract(images[1].rgb))
    seconds = {"extract": (time.perf_counter() - clock) / 2}
    clock = time.perf_counter()
    matches = matcher.match(*features)
    seconds["match"] = time.perf_counter() - clock
    points0 = features[0].keypoints[matches.indices[:, 0]].astype(np.float64)
    points1 = features[1].keypoints[matches.indices[:, 1]].astype(np.float64)
    clock = time.perf_counter()
    mask = ransac_inliers(points0, points1, geometry)
    seconds["ransac"] = time.perf_counter() - clock
    inliers = int(mask.sum())
    verification = Verification(len(matches), inliers, inliers / len(matches) if len(matches) else 0.0, mask, matches)
    return PairResult(images, features, matches, verification, {k: round(v, 4) for k, v in seconds.items()})
