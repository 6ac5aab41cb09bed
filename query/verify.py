"""Geometric verification: does a candidate really show what the query shows?

A matcher proposes correspondences; RANSAC keeps those consistent with one two-view
geometry. The inlier count is the evidence the position estimate weighs. The
fundamental matrix (OpenCV's USAC MAGSAC) fits any static scene seen from two
viewpoints; a homography is offered for mostly planar scenes.

Pairs are independent, so on a CPU they run side by side (:class:`PairThreads`): each
pair's attention layers are too small to keep two cores busy with two threads, and two
pairs with one thread each finish sooner (docs/SCALE.md has the measurement).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from glueloc.core.threads import torch_threads, usable_cores
from glueloc.vision.extractors.base import Features
from glueloc.vision.matchers.base import Matcher, Matches

logger = logging.getLogger(__name__)

MIN_MATCHES_FOR_MODEL = 8  # the 8-point minimum; fewer matches verify nothing


@dataclass(frozen=True)
class Verification:
    matches: int
    inliers: int
    inlier_ratio: float
    inlier_mask: np.ndarray  # (matches,) bool
    correspondences: Matches  # what the matcher proposed; inlier_mask says which RANSAC kept


def ransac_inliers(points0: np.ndarray, points1: np.ndarray, model: str = "fundamental",
                   threshold: float = 3.0, confidence: float = 0.999) -> np.ndarray:
    """Boolean inlier mask of the correspondences under one fitted model (all False if none)."""
    mask_none = np.zeros(len(points0), dtype=bool)
    if len(points0) < MIN_MATCHES_FOR_MODEL:
        return mask_none
    try:
        if model == "fundamental":
            _, mask = cv2.findFundamentalMat(points0, points1, cv2.USAC_MAGSAC, threshold, confidence, 10000)
        elif model == "homography":
            _, mask = cv2.findHomography(points0, points1, cv2.USAC_MAGSAC, threshold, confidence=confidence, maxIters=10000)
        else:
            raise ValueError(f"unknown geometric model {model!r} (fundamental or homography)")
    except cv2.error:
        # OpenCV raises on degenerate sets instead of returning no model: that is 0 inliers.
        return mask_none
    if mask is None:
        return mask_none
    return mask.ravel().astype(bool)


def verify_pair(query: Features, candidate: Features, matcher: Matcher, model: str = "fundamental") -> Verification:
    matches: Matches = matcher.match(query, candidate)
    if len(matches) == 0:
        return Verification(0, 0, 0.0, np.zeros(0, dtype=bool), matches)
    points0 = query.keypoints[matches.indices[:, 0]].astype(np.float64)
    points1 = candidate.keypoints[matches.indices[:, 1]].astype(np.float64)
    mask = ransac_inliers(points0, points1, model)
    inliers = int(mask.sum())
    return Verification(len(matches), inliers, inliers / len(matches), mask, matches)


#: More pairs at once than this only adds to the shortlist a stopping query verifies in vain.
MAX_WORKERS = 4


@dataclass(frozen=True)
class PairThreads:
    """How a query's pairs share the cores: ``workers`` pairs at once, ``threads`` torch threads each."""

    workers: int
    threads: int

    @staticmethod
    def for_matcher(matcher: Matcher, workers: int | None = None, cores: int | None = None) -> "PairThreads":
        """One pair per core, at most ``MAX_WORKERS`` at once, the cores split among them; a
        matcher on a GPU runs its pairs one after another (the device is shared anyway)."""
        cores = usable_cores() if cores is None else cores
        if not matcher.on_cpu:
            return PairThreads(1, cores)
        count = max(1, min(cores, MAX_WORKERS) if workers is None else workers)
        return PairThreads(count, max(1, cores // count))



def verify_candidates(query: Features, candidates: list[Features], matcher: Matcher,
                      model: str = "fundamental", threads: PairThreads | None = None) -> list[Verification]:
    """Verify every candidate against the query, in order: the one call query-time code makes."""
    if threads is None or threads.workers == 1 or len(candidates) < 2:
        return [verify_pair(query, candidate, matcher, model) for candidate in candidates]
    with torch_threads(threads.threads), ThreadPoolExecutor(min(threads.workers, len(candidates))) as pool:
        return list(pool.map(lambda candidate: verify_pair(query, candidate, matcher, model), candidates))
