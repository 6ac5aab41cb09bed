"""Mutual nearest-neighbour matching with Lowe's ratio test: the weight-free matcher.

It pairs with SIFT (or any float descriptor) and needs nothing but numpy; it is the
baseline every learned matcher has to beat.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from glueloc.vision.extractors.base import Features
from glueloc.vision.matchers.base import Matcher, Matches

logger = logging.getLogger(__name__)


class NearestNeighbor(Matcher):
    name: ClassVar[str] = "nn"
    version: ClassVar[str] = "1"
    extractors: ClassVar[tuple[str, ...]] = ("sift", "aliked", "xfeat", "superpoint")
    default_conf: ClassVar[dict[str, Any]] = {
        "ratio": 0.85,  # Lowe's ratio: best distance < ratio * second best (on L2 distances)
        "mutual": True,  # keep only pairs that are each other's nearest neighbour
    }

    def match(self, features0: Features, features1: Features) -> Matches:
        d0, d1 = features0.descriptors, features1.descriptors
        if len(d0) < 2 or len(d1) < 2:
            return Matches.empty()
        # Squared L2 distances via the dot product; descriptors need not be unit norm.
        dist = (d0 * d0).sum(1)[:, None] + (d1 * d1).sum(1)[None, :] - 2.0 * d0 @ d1.T
        np.maximum(dist, 0.0, out=dist)
        order = np.argpartition(dist, 1, axis=1)[:, :2]
        rows = np.arange(len(d0))
        first, second = dist[rows, order[:, 0]], dist[rows, order[:, 1]]
        swap = first > second
        best = np.where(swap, order[:, 1], order[:, 0])
        first, second = np.minimum(first, second), np.maximum(first, second)
        ratio = np.sqrt(first) / np.maximum(np.sqrt(second), 1e-12)
        keep = ratio < self.conf["ratio"]
        if self.conf["mutual"]:
            keep &= dist.argmin(axis=0)[best] == rows
        idx0 = rows[keep]
        indices = np.stack([idx0, best[keep]], axis=1).astype(np.int64)
        scores = (1.0 - ratio[keep]).astype(np.float32)
        return Matches(indices, scores)
