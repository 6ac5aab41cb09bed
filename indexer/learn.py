"""Learning the retrieval projection from the database's own labels, and choosing it fairly.

Supervision comes only from what every glueloc database has: positions, and the local
features it matches with. A photo's *positives* are taken among the photos of other
capture points within the near radius (the radius calibration uses, ``core.places``; a
photo of the *same* point is excluded, so the model learns to recognise the place, not
the photographer's tripod). Not all of them show the same scene — five views of a
nearby point face five directions — so the trainer (``indexer.train``) keeps only the
``best_positives`` that share the most mutual nearest-neighbour matches of stored
descriptors with the photo: positives that *verify*, not only positives by position. A
*negative* is a photo more than ``far_factor`` radii away. Nothing here ever sees a
query.

Which projection a database uses is decided the way calibration decides its rule: by
recall on held-out database places. A fraction of the capture points is set aside;
every method is fitted on the rest and asked, for each held-out photo, whether a photo
within the radius (of another point) is among its top k in the whole database. The
method with the best mean recall wins, and is then refitted on every place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from glueloc.core.config import merge_conf
from glueloc.core.errors import GluelocError
from glueloc.core.threads import single_threaded
from glueloc.vision import projection as proj

logger = logging.getLogger(__name__)

RECALL_AT: tuple[int, ...] = (1, 5, 10, 20, 50)

default_conf: dict[str, Any] = {
    **proj.default_conf,
    "methods": ["pca", "lw", "triplet"],  # candidates, compared on held-out places
    "held_out": 0.15,  # fraction of capture points held out to choose the method
    "far_factor": 5.0,  # negatives lie beyond this many near radii
    "best_positives": 3,  # near photos per image kept as positives: those sharing the most matches
    "verify_keypoints": 256,  # strongest keypoints per photo matched to rank its near photos
    "negative_pairs": 50_000,  # random far pairs for learned whitening
    "max_images": 20_000,  # training sample (the projection is linear; more adds little)
    # The chosen method refitted once per fold of capture points, each without its fold, so
    # that calibration ranks a held-out place with a model that never saw it (CrossFit).
    # 5 as calibration's own folds; not tuned. 0: none (calibration then says it ranked in-sample).
    "cross_fit_folds": 5,
}


def learn_conf(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    conf = merge_conf(default_conf, overrides, "retrieval model")
    unknown = [m for m in conf["methods"] if m not in proj.METHODS]
    if unknown or not conf["methods"]:
        raise GluelocError(f"unknown projection methods {unknown} (known: {', '.join(proj.METHODS)})")
    return conf


@dataclass(frozen=True)
class Learned:
    projection: proj.Projection
    chosen: str
    held_out: dict[str, dict[str, float]]  # method -> {"R@k": recall on held-out places}
    held_out_images: int
    trained_images: int
    positives: int
    seconds: float
    cross_fit: proj.CrossFit | None = None  # the chosen method once per fold of points; None: none (cross_fit)


def _distances(xy: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """L1 distances from ``xy[rows]`` to every point (core.places: the radius is L1 too)."""
    return np.abs(xy[rows, None, :] - xy[None, :, :]).sum(-1)


def pairs_from_labels(xy: np.ndarray, radius: float, far_factor: float
                      ) -> tuple[list[np.ndarray], np.ndarray]:
    """(positives per image, far (N, N) bool): near photos of *other* points, far photos."""
    positives: list[np.ndarray] = []
    far = np.zeros((len(xy), len(xy)), dtype=bool)
    for start in range(0, len(xy), 1024):
        rows = np.arange(start, min(start + 1024, len(xy)))
        dist = _distances(xy, rows)
        same_point = (xy[rows, None, :] == xy[None, :, :]).all(-1)
        near = (dist <= radius) & ~same_point
        positives.extend(np.flatnonzero(row) for row in near)
        far[rows] = dist > radius * far_factor
    return positives, far


def _pair_arrays(positives: list[np.ndarray], far: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    pos = np.array([(i, j) for i, p in enumerate(positives) for j in p], dtype=np.int64).reshape(-1, 2)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(far), size=count * 2)
    j = rng.integers(0, len(far), size=count * 2)
    keep = far[i, j]
    neg = np.stack([i[keep], j[keep]], 1)[:count]
    return pos, neg


def fit_method(method: str, raw: np.ndarray, positives: list[np.ndarray], far: np.ndarray,
               conf: Mapping[str, Any]) -> proj.Projection:
    """Fit ``method`` on ``raw`` with ``positives[i]`` (indices into ``raw``) and the ``far`` mask."""
    if method == "pca":
        return proj.fit_pca(raw, conf)
    if not any(len(p) for p in positives):
        raise GluelocError("no two capture points lie within the near radius: only `pca` can be fitted")
    if method == "triplet":
        return proj.refine_triplet(proj.fit_pca(raw, conf), raw, positives, far, conf)
    pos, neg = _pair_arrays(positives, far, int(conf["negative_pairs"]), int(conf["seed"]))
    if len(neg) < 2:
        raise GluelocError("too few far-apart photos to learn from: only `pca` can be fitted")
    return proj.fit_learned_whitening(raw, pos, neg, conf)


def recall_at(vectors: np.ndarray, xy: np.ndarray, queries: np.ndarray, radius: float,
              ks: tuple[int, ...] = RECALL_AT) -> dict[str, float]:
    """Share of ``queries`` with a photo of another point within ``radius`` in their top k.

    The query's own capture point is excluded from the ranking (it is held out); queries
    with no such photo in the database are left out of the share.
    """
    hits = np.zeros(len(ks))
    counted = 0
    with single_threaded():
        for start in range(0, len(queries), 512):
            rows = queries[start:start + 512]
            sims = vectors[rows] @ vectors.T
            same_point = (xy[rows, None, :] == xy[None, :, :]).all(-1)
            sims[same_point] = -np.inf
            near = (_distances(xy, rows) <= radius) & ~same_point
            order = np.argsort(-sims, axis=1)[:, : max(ks)]
            found = np.take_along_axis(near, order, axis=1)
            has = near.any(1)
            counted += int(has.sum())
            for n, k in enumerate(ks):
                hits[n] += int(found[has, :k].any(1).sum())
    return {f"R@{k}": round(float(h) / max(counted, 1), 4) for k, h in zip(ks, hits)}


def held_out_places(xy: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of the images of a random ``fraction`` of the capture points."""
    points, owner = np.unique(xy, axis=0, return_inverse=True)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(points), size=max(1, round(len(points) * fraction)), replace=False)
    return np.flatnonzero(np.isin(owner.ravel(), chosen))


def restrict(positives: list[np.ndarray], rows: np.ndarray) -> list[np.ndarray]:
    """``positives`` of the images ``rows`` only, renumbered as indices into ``rows``."""
    where = np.full(len(positives), -1, dtype=np.int64)
    where[rows] = np.arange(len(rows))
    return [where[p][where[p] >= 0] for p in (positives[r] for r in rows)]


def cross_fit(method: str, raw: np.ndarray, xy: np.ndarray, positives: list[np.ndarray], far: np.ndarray,
              conf: Mapping[str, Any]) -> proj.CrossFit | None:
    """``method`` fitted ``cross_fit_folds`` times, each time without one fold of capture points.

    Points, not photos, are split, as calibration holds out a point with all its views.
    None when the conf asks for no folds, the database has fewer than two points, or a fold
    leaves too little to fit the method on (no near pairs left; logged): calibration then
    ranks in-sample and says so in its output and its row, so the model itself is kept.
    """
    points, owner = np.unique(xy, axis=0, return_inverse=True)
    owner = owner.ravel()
    folds = min(int(conf["cross_fit_folds"]), len(points))
    if folds < 2:
        return None
    rng = np.random.default_rng(int(conf["seed"]) + 1)  # not the held-out split's draw
    fold = np.empty(len(points), dtype=np.int64)
    fold[rng.permutation(len(points))] = np.arange(len(points)) % folds
    fitted = []
    for f in range(folds):
        rows = np.flatnonzero(fold[owner] != f)
        try:
            fitted.append(fit_method(method, raw[rows], restrict(positives, rows), far[np.ix_(rows, rows)], conf))
        except GluelocError as exc:
            logger.warning("no cross-fitted folds: the %s projection cannot be fitted without fold %d of %d (%s); "
                           "calibration will rank held-out places in-sample", method, f + 1, folds, exc)
            return None
    return proj.CrossFit(points.astype(np.float64), fold, tuple(fitted))


def learn_projection(raw: np.ndarray, xy: np.ndarray, radius: float, conf: Mapping[str, Any] | None = None,
                     positives: list[np.ndarray] | None = None) -> Learned:
    """Choose the method on held-out places, then refit it on every image.

    ``positives[i]``: the indices of image i's matching photos (``indexer.train`` picks
    them by verification); None: every photo of another point within the radius.
    """
    conf = learn_conf(conf)
    started = time.perf_counter()
    raw = np.asarray(raw, dtype=np.float32)
    xy = np.asarray(xy, dtype=np.float64)
    if len(np.unique(xy, axis=0)) < 3:
        raise GluelocError("learning a retrieval model needs at least three capture points")
    rng = np.random.default_rng(int(conf["seed"]))
    if len(raw) > int(conf["max_images"]):
        sample = np.sort(rng.choice(len(raw), size=int(conf["max_images"]), replace=False))
        raw, xy = raw[sample], xy[sample]
        positives = None if positives is None else restrict(positives, sample)
    # One pass over the pairs: the held-out split and the final fit take their parts of it.
    near, far = pairs_from_labels(xy, radius, float(conf["far_factor"]))
    positives = near if positives is None else positives
    dim = min(int(conf["dim"]), raw.shape[1], len(raw) - 1)
    conf = {**conf, "dim": dim}
    test = held_out_places(xy, float(conf["held_out"]), int(conf["seed"]))
    train = np.setdiff1d(np.arange(len(xy)), test)
    train_far = far[np.ix_(train, train)]
    train_positives = restrict(positives, train)
    scores: dict[str, dict[str, float]] = {}
    for method in conf["methods"]:
        try:
            fitted = fit_method(method, raw[train], train_positives, train_far, conf)
        except GluelocError as exc:
            logger.info("projection %s skipped: %s", method, exc)
            continue
        # Held-out photos are ranked against the whole database, as a query would be.
        scores[method] = recall_at(fitted.project(raw), xy, test, radius)
        logger.info("projection %s: held-out %s", method, scores[method])
    if not scores:
        raise GluelocError("no projection could be fitted")
    chosen = max(scores, key=lambda m: (float(np.mean(list(scores[m].values()))), -list(conf["methods"]).index(m)))
    final = fit_method(chosen, raw, positives, far, conf)
    folds = cross_fit(chosen, raw, xy, positives, far, conf)
    return Learned(final, chosen, scores, len(test), len(raw), sum(len(p) for p in positives),
                   time.perf_counter() - started, folds)
