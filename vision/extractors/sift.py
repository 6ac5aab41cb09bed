"""OpenCV SIFT with RootSIFT descriptors: the weight-free extractor.

SIFT needs no learned weights, so it is always available and is what tests and the
synthetic demo run on. Descriptors are turned into RootSIFT (L1-normalise, square root),
which makes Euclidean matching behave like the Hellinger kernel and is a free, well-known
gain for both matching and aggregation into global vectors.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import cv2
import numpy as np

from glueloc.vision.extractors.base import Extractor

logger = logging.getLogger(__name__)


class SIFT(Extractor):
    name: ClassVar[str] = "sift"
    version: ClassVar[str] = "1"  # bump when the output for the same image changes
    descriptor_dim: ClassVar[int] = 128
    default_conf: ClassVar[dict[str, Any]] = {
        **Extractor.default_conf,
        "contrast_threshold": 0.02,  # lower than OpenCV's 0.04: indoor scenes are low-contrast
        "edge_threshold": 10.0,  # OpenCV's default
        "root_sift": True,  # RootSIFT descriptors (Arandjelovic & Zisserman 2012)
    }

    def __init__(self, conf: dict[str, Any] | None = None) -> None:
        super().__init__(conf)
        self._sift = cv2.SIFT_create(
            nfeatures=int(self.conf["max_keypoints"]),
            contrastThreshold=float(self.conf["contrast_threshold"]),
            edgeThreshold=float(self.conf["edge_threshold"]),
        )

    def _extract(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        keypoints, descriptors = self._sift.detectAndCompute(gray, None)
        if descriptors is None or not keypoints:
            return np.zeros((0, 2), np.float32), np.zeros((0,), np.float32), np.zeros((0, 128), np.float32)
        # OpenCV may return slightly more than nfeatures on ties; keep the strongest.
        order = np.argsort([-k.response for k in keypoints])[: int(self.conf["max_keypoints"])]
        points = np.array([keypoints[i].pt for i in order], dtype=np.float32)
        scores = np.array([keypoints[i].response for i in order], dtype=np.float32)
        desc = descriptors[order].astype(np.float32)
        if self.conf["root_sift"]:
            desc /= np.maximum(desc.sum(axis=1, keepdims=True), 1e-8)
            desc = np.sqrt(desc)
        return points, scores, desc
