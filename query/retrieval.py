"""The shortlist: nearest database images by global vector, descriptor votes, image embedding.

Three rankings of the database answer "which photos may show this place": the global
(VLAD) vector's similarity and the local descriptors' votes (query.votes), both made of
XFeat descriptors, and the learned image embedding's similarity (a CNN that sees the
whole picture; ``indexer.train``), which fails elsewhere. The default shortlist
(``fused``) takes every ranking the database has in turns, best first, skipping an
image already taken: the verified slots are shared equally, with no weight to tune. On
the Getty dev queries, most inliers over a VLAD + votes top 10 gave MAE 8.56 with 10
gross failures where VLAD's top 10 gave 10.11 with 13 (README, query benchmark).

One capture point usually owns several database images (views in different
directions) that share its coordinates; with ``collapse`` the shortlist keeps only the
most similar image of each position, so k candidates cover k distinct places instead of
spending several slots on one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from glueloc.storage.vectors import VectorIndex

logger = logging.getLogger(__name__)

#: How many more neighbours to fetch when collapsing, so k distinct places remain.
COLLAPSE_OVERFETCH = 8


#: How a shortlist is drawn: every ranking in turns (the default), or one of them alone.
FUSED, VLAD, VOTES, IMAGE = "fused", "vlad", "votes", "image"
RETRIEVALS: tuple[str, ...] = (FUSED, VLAD, VOTES, IMAGE)


@dataclass(frozen=True)
class Candidate:
    image_id: int
    similarity: float  # global-vector inner product with the query
    votes: int = 0  # query descriptors whose nearest database descriptors include this image's


def collapse_ranked(ids: np.ndarray, positions: Mapping[int, tuple[float, float]], k: int) -> list[int]:
    """The first ``k`` ids of ``ids`` whose position has not been seen earlier in the list."""
    seen: set[tuple[float, float]] = set()
    kept: list[int] = []
    for image_id in ids.tolist():
        if image_id < 0:
            continue
        where = positions[image_id]
        if where in seen:
            continue
        seen.add(where)
        kept.append(image_id)
        if len(kept) == k:
            break
    return kept


def retrieve(index: VectorIndex, vector: np.ndarray, k: int,
             positions: Mapping[int, tuple[float, float]] | None = None) -> list[Candidate]:
    """Top-``k`` database images by inner product with ``vector`` (best first).

    With ``positions`` (image id -> (x, y)), near-duplicates of one position collapse to
    the most similar image.
    """
    if index.count == 0:
        return []
    fetch = k * COLLAPSE_OVERFETCH if positions is not None else k
    similarities, ids = index.search(vector[None, :], fetch)
    score = {int(i): float(s) for s, i in zip(similarities[0], ids[0]) if i >= 0}
    chosen = collapse_ranked(ids[0], positions, k) if positions is not None else [i for i in score][:k]
    return [Candidate(i, score[i]) for i in chosen]


def interleave(rankings: list[list[int]], k: int) -> list[int]:
    """The first ``k`` distinct ids taken from ``rankings`` in turns (first of each, then second ...)."""
    chosen: list[int] = []
    seen: set[int] = set()
    for rank in range(max((len(r) for r in rankings), default=0)):
        for ranking in rankings:
            if rank < len(ranking) and ranking[rank] not in seen:
                seen.add(ranking[rank])
                chosen.append(ranking[rank])
                if len(chosen) == k:
                    return chosen
    return chosen
