"""The contract every local-feature extractor follows.

An extractor turns one decoded RGB image into keypoints, scores and descriptors. The
contract, written once here (glue-factory style) so that SIFT, ALIKED, XFeat and
SuperPoint are interchangeable behind the indexer and the query path:

* ``name`` and ``version`` identify the model; ``version`` changes whenever the same
  image would give different features, so a database never mixes incompatible ones.
* ``default_conf`` documents every option with its default; unknown options fail.
* :meth:`Extractor.extract` receives the full-size RGB image, resizes it so its longer
  side is at most ``conf["max_side"]`` (decode once, resize once), runs the model, and
  returns keypoints in the *original* image's pixel coordinates (hloc's convention),
  so stored features do not depend on the resize.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np

from glueloc.core.config import merge_conf

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Features:
    """Local features of one image, in original-image pixel coordinates."""

    keypoints: np.ndarray  # (N, 2) float32, x then y
    scores: np.ndarray  # (N,) float32, higher is more reliable
    descriptors: np.ndarray  # (N, D) float32
    image_size: tuple[int, int]  # (width, height) of the original image

    def __post_init__(self) -> None:
        n = len(self.keypoints)
        if self.keypoints.shape != (n, 2) or self.scores.shape != (n,) or self.descriptors.shape[0] != n:
            raise ValueError(
                f"inconsistent feature shapes: keypoints {self.keypoints.shape}, "
                f"scores {self.scores.shape}, descriptors {self.descriptors.shape}"
            )

    def __len__(self) -> int:
        return len(self.keypoints)

    def strongest(self, count: int | None) -> "Features":
        """The ``count`` highest-scoring keypoints (all when None or when there are no more),
        best first: how a query gives the matcher fewer points, since a learned matcher's cost
        grows faster than linearly with them (docs/SCALE.md)."""
        if count is None or count >= len(self):
            return self
        if count < 1:
            raise ValueError(f"a keypoint budget must be positive, got {count}")
        order = np.argsort(-self.scores, kind="stable")[:count]
        return Features(self.keypoints[order], self.scores[order], self.descriptors[order], self.image_size)


class Extractor(ABC):
    """Base class of local-feature extractors (see the module docstring for the contract)."""

    name: ClassVar[str]
    version: ClassVar[str]
    descriptor_dim: ClassVar[int]
    default_conf: ClassVar[dict[str, Any]] = {
        "max_side": 640,  # longer image side after resizing, in pixels
        "max_keypoints": 1024,  # keypoint budget per image
    }

    def __init__(self, conf: Mapping[str, Any] | None = None) -> None:
        self.conf = merge_conf(self.default_conf, conf, f"extractor {self.name!r}")

    @property
    def identity(self) -> dict[str, Any]:
        """What the database records: name, version and the full configuration."""
        return {"name": self.name, "version": self.version, "config": self.conf}

    def config_json(self) -> str:
        """Canonical JSON of the configuration, comparable across runs."""
        return json.dumps(self.conf, sort_keys=True)

    def extract(self, rgb: np.ndarray) -> Features:
        """Extract features from a full-size (H, W, 3) uint8 RGB image."""
        height, width = rgb.shape[:2]
        scale = min(1.0, self.conf["max_side"] / max(height, width))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            resized = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        else:
            resized = rgb
        keypoints, scores, descriptors = self._extract(resized)
        if len(keypoints):
            # Map pixel centres back to the original image (hloc: (k + .5) * s - .5).
            sx = width / resized.shape[1]
            sy = height / resized.shape[0]
            keypoints = (keypoints + 0.5) * np.array([sx, sy], dtype=np.float32) - 0.5
        return Features(
            keypoints=np.asarray(keypoints, dtype=np.float32).reshape(-1, 2),
            scores=np.asarray(scores, dtype=np.float32).reshape(-1),
            descriptors=np.asarray(descriptors, dtype=np.float32).reshape(len(keypoints), self.descriptor_dim),
            image_size=(width, height),
        )

    @abstractmethod
    def _extract(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run the model on an already-resized RGB image: (keypoints, scores, descriptors)."""
