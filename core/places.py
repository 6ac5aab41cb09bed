"""Capture points: how far apart a database's places are, which sets every "near".

Calibration's targets (a candidate is right when within the near radius), the
retrieval model's positives and its held-out recall all use this one radius, so the
model learns exactly the notion of "the same place" that the answer is judged by.
Distances are L1 (the sum of the coordinate differences), as calibration has always
measured them.
"""

from __future__ import annotations

import numpy as np

from glueloc.core.errors import GluelocError


def near_radius(positions: np.ndarray) -> float:
    """90th percentile of each capture point's L1 distance to its nearest other point."""
    places = np.unique(positions, axis=0)
    if len(places) < 2:
        raise GluelocError("calibration needs at least two capture points")
    nearest = np.full(len(places), np.inf)
    for start in range(0, len(places), 1024):  # blocks keep the distance matrix small
        block = np.abs(places[start:start + 1024, None, :] - places[None, :, :]).sum(-1)
        block[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
        nearest[start:start + len(block)] = block.min(1)
    return float(np.percentile(nearest, 90))
