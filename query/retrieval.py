"""The shortlist: nearest database images by global vector."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from storage.vectors import VectorIndex

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    image_id: int
    similarity: float


def retrieve(index: VectorIndex, vector: np.ndarray, k: int) -> list[Candidate]:
    """Top-``k`` database images by inner product with ``vector`` (best first)."""
    if index.count == 0:
        return []
    similarities, ids = index.search(vector[None, :], k)
    return [Candidate(int(i), float(s)) for s, i in zip(similarities[0], ids[0]) if i >= 0]
