"""One global vector per image, for retrieval.

This is the interim descriptor the foundation ships so retrieval works end to end: the
L2-normalised mean of the image's L2-normalised local descriptors. It is cheap and
real, but weak (it forgets where features came from); the NetVLAD-style aggregation
replaces it, and ``store_state.global_descriptor`` records which one a database holds
so the two are never mixed.
"""

from __future__ import annotations

import logging

import numpy as np

from glueloc.extractors.base import Features

logger = logging.getLogger(__name__)

NAME = "mean-descriptor:1"


def mean_descriptor(features: Features, dim: int) -> np.ndarray:
    """L2-normalised mean of unit-normalised descriptors; zeros for an image without any."""
    if len(features) == 0:
        return np.zeros(dim, np.float32)
    desc = features.descriptors / np.maximum(np.linalg.norm(features.descriptors, axis=1, keepdims=True), 1e-12)
    mean = desc.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm > 0 else mean).astype(np.float32)
