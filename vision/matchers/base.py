"""The contract every matcher follows.

A matcher takes the local features of two images and returns index pairs into their
keypoints with a confidence per pair. Like extractors, each matcher has a ``name``, a
``version`` and a documented ``default_conf`` that rejects unknown keys, and it declares
which extractors' descriptors it understands (``extractors``), so a database indexed
with one extractor is never matched with a model trained for another.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from glueloc.core.config import merge_conf
from glueloc.vision.extractors.base import Features

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Matches:
    """Correspondences between image 0 and image 1."""

    indices: np.ndarray  # (M, 2) int64: keypoint index in image 0, in image 1
    scores: np.ndarray  # (M,) float32 in [0, 1], higher is more confident

    def __len__(self) -> int:
        return len(self.indices)

    @staticmethod
    def empty() -> "Matches":
        return Matches(np.zeros((0, 2), np.int64), np.zeros((0,), np.float32))


class Matcher(ABC):
    """Base class of matchers (see the module docstring for the contract)."""

    name: ClassVar[str]
    version: ClassVar[str]
    extractors: ClassVar[tuple[str, ...]]  # extractor names whose features this accepts
    default_conf: ClassVar[dict[str, Any]] = {}

    def __init__(self, conf: Mapping[str, Any] | None = None) -> None:
        self.conf = merge_conf(self.default_conf, conf, f"matcher {self.name!r}")

    @abstractmethod
    def match(self, features0: Features, features1: Features) -> Matches:
        """Match two images' features. Safe to call from several threads at once: a query
        verifies pairs side by side on CPU (``query.verify``)."""

    @property
    def on_cpu(self) -> bool:
        """Whether matching runs on the CPU cores (a query then spreads pairs over them)."""
        return True
