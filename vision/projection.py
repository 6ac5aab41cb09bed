"""The part of image retrieval a database learns: a linear projection of raw embeddings.

The image embedder (``glueloc.vision.embedders``) is frozen ImageNet; what makes its
descriptor good *for one map* is the projection on top: which directions separate
places of this map and which only record light, season or a passer-by. Three ways to
fit it, all closed-form or nearly, all on a CPU in seconds to minutes:

* ``pca`` — PCA-whitening fitted on the database's embeddings (unsupervised; the
  off-the-shelf baseline every retrieval paper reports).
* ``lw`` — *learned whitening* (Mikolajczyk & Matas 2007, as Radenović et al. use it on
  GeM): whiten by the covariance of differences between matching pairs, then keep the
  directions in which non-matching pairs differ most. It uses the labels the database
  already has, and being closed-form it cannot over-train the way an iterated loss can
  on a few thousand photos.
* ``triplet`` — PCA-whitening refined by gradient steps on a triplet loss with hard
  negatives mined from the labels (NetVLAD's and GeM fine-tuning's recipe), stopped early.

Measured on Getty's held-out database places (bench/retrieval_models.py), none of the
supervised two beats PCA-whitening of the frozen GeM descriptor by more than the noise:
a linear map cannot add what the frozen network does not see.

Which is used is chosen by recall on held-out database places (``indexer.train``); this
module is pure arithmetic and knows nothing of databases or positions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from glueloc.core.config import merge_conf
from glueloc.core.threads import single_threaded

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("pca", "lw", "triplet")
KIND = "projection:1"

default_conf: dict[str, Any] = {
    "dim": 256,  # length of the projected vectors
    "shrinkage": 0.1,  # PCA's covariance regularisation: fraction of the mean eigenvalue added to each
    "lw_shrinkage": 0.1,  # the same for learned whitening's matching-pair covariance
    "triplet_epochs": 10,  # full passes over the anchors (``triplet`` only)
    "triplet_margin": 0.1,  # cosine margin between the positive and each hard negative
    "triplet_negatives": 8,  # hardest negatives per anchor, re-mined every epoch
    "triplet_lr": 1e-4,
    "seed": 0,
}


def projection_conf(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return merge_conf(default_conf, overrides, "projection")


@dataclass(frozen=True)
class Projection:
    """``normalise((x - mean) @ matrix)``: raw embeddings (N, D_in) -> vectors (N, dim)."""

    method: str
    mean: np.ndarray  # (D_in,) float32
    matrix: np.ndarray  # (D_in, dim) float32

    @property
    def input_dim(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def project(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float32).reshape(-1, self.input_dim)
        with single_threaded():
            out = (raw - self.mean) @ self.matrix
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return (out / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class CrossFit:
    """The model's method refitted once per fold of capture points, each fit without its fold.

    Why it exists: a model fitted on every database photo has been taught the very pairs
    "is a near photo among this photo's first k?" asks about, so ranking a database photo
    with it is an exam read from the answer sheet. In a 160-photo room learned whitening
    put a near photo in the first 10 for 96 % of the database's own photos and for 77 %
    when refitted without them (bench/whitening.py --space image). ``glueloc calibrate``
    ranks a held-out place with the projection of its fold, which never saw it, as the
    model never saw a user's query.
    """

    points: np.ndarray  # (P, 2) float64: the capture points the model was trained on
    fold: np.ndarray  # (P,) int64: the fold of each point, 0 .. len(projections) - 1
    projections: tuple[Projection, ...]  # projections[f] was fitted without fold f's points

    def __post_init__(self) -> None:
        shapes = {(p.input_dim, p.dim) for p in self.projections}
        if (self.points.ndim != 2 or self.points.shape[1] != 2 or self.fold.shape != (len(self.points),)
                or len(shapes) != 1 or not len(self.projections)
                or (len(self.fold) and not 0 <= int(self.fold.min()) <= int(self.fold.max()) < len(self.projections))):
            raise ValueError(f"a cross-fit of {len(self.projections)} projections {sorted(shapes)} for "
                             f"points {self.points.shape} and folds {self.fold.shape} is inconsistent")

    def fold_of(self, x: float, y: float) -> int | None:
        """The fold of the capture point at (x, y); None: the model was not trained on it."""
        hit = np.flatnonzero((self.points[:, 0] == x) & (self.points[:, 1] == y))
        return int(self.fold[hit[0]]) if len(hit) else None


def _inverse_sqrt(covariance: np.ndarray, shrinkage: float) -> np.ndarray:
    values, vectors = np.linalg.eigh(covariance)
    values = np.maximum(values, 0) + shrinkage * max(float(values.mean()), 1e-12)
    return (vectors / np.sqrt(values)) @ vectors.T


#: An eigenvalue below this fraction of the largest is rounding, not a direction the data
#: span: N photos span at most N - 1 directions, and far pairs sampled among them fewer.
SPANNED = 1e-9


def _spanned(values: np.ndarray) -> np.ndarray:
    """1 for each kept eigenvalue the data span, 0 for the rest (sorted largest first).

    Past the span every eigenvalue is zero but for rounding, so which eigenvectors a fit
    keeps there, and how a new photo projects onto them, is decided by rounding: in the demo
    room a change of 1e-15 in learned whitening's scatter changed 60 % of the top-10
    rankings of a fold's held-out photos, and what calibration chose. Zero columns add
    nothing to any similarity; the vectors keep their length.
    """
    top = float(values[0]) if len(values) else 0.0
    return (values > SPANNED * max(top, 1e-300)).astype(np.float64)


def fit_pca(raw: np.ndarray, conf: Mapping[str, Any]) -> Projection:
    """PCA-whitening onto the ``dim`` strongest directions of the embeddings."""
    raw = raw.astype(np.float64)
    mean = raw.mean(0)
    with single_threaded():
        values, vectors = np.linalg.eigh(np.cov(raw - mean, rowvar=False))
    order = np.argsort(values)[::-1][: int(conf["dim"])]
    spanned = _spanned(values[order])
    values = np.maximum(values[order], 0) + float(conf["shrinkage"]) * max(float(values.mean()), 1e-12)
    return Projection("pca", mean.astype(np.float32),
                      (vectors[:, order] / np.sqrt(values) * spanned).astype(np.float32))


def _pair_scatter(raw: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """The mean of (x_i - x_j)(x_i - x_j)^T over index pairs (M, 2) of ``raw`` (N, D).

    Two ways to the same matrix; the cheaper is taken. Directly, the M differences cost
    M·D² (50 000 far pairs of 1280-d embeddings: ~3 s on a core, most of learned whitening's
    time). Or through the pairs' graph Laplacian L (N × N, each pair adding
    (e_i - e_j)(e_i - e_j)^T) as X^T L X, which costs N²·D + N·D²: far less while the
    database is small (160 photos: 0.03 s), more past ~7000 photos.
    """
    n, d = raw.shape
    i, j = pairs[:, 0], pairs[:, 1]
    if n * n * d + n * d * d < len(pairs) * d * d:
        laplacian = np.zeros((n, n))
        np.add.at(laplacian, (i, i), 1.0)
        np.add.at(laplacian, (j, j), 1.0)
        np.add.at(laplacian, (i, j), -1.0)
        np.add.at(laplacian, (j, i), -1.0)
        return raw.T @ (laplacian @ raw) / len(pairs)
    diff = raw[i] - raw[j]
    return diff.T @ diff / len(pairs)


def fit_learned_whitening(raw: np.ndarray, positives: np.ndarray, negatives: np.ndarray,
                          conf: Mapping[str, Any]) -> Projection:
    """Learned whitening from index pairs ``positives`` (P, 2) and ``negatives`` (M, 2) into ``raw``."""
    if len(positives) < 2 or len(negatives) < 2:
        raise ValueError("learned whitening needs matching and non-matching pairs")
    raw = raw.astype(np.float64)
    mean = raw.mean(0)
    shrinkage = float(conf["lw_shrinkage"])
    with single_threaded():
        whiten = _inverse_sqrt(_pair_scatter(raw, positives), shrinkage)
        # The far pairs' scatter, whitened (whiten is symmetric).
        values, vectors = np.linalg.eigh(whiten @ _pair_scatter(raw, negatives) @ whiten)
    order = np.argsort(values)[::-1][: int(conf["dim"])]
    return Projection("lw", mean.astype(np.float32), (whiten @ vectors[:, order] * _spanned(values[order])).astype(np.float32))


def refine_triplet(start: Projection, raw: np.ndarray, positives: list[np.ndarray], far: np.ndarray,
                   conf: Mapping[str, Any], epochs: int | None = None) -> Projection:
    """Gradient steps on a triplet loss from ``start``.

    ``positives[i]``: the indices that match anchor ``i`` (empty: not an anchor);
    ``far`` (N, N) bool: pairs far enough apart to be negatives. Each epoch re-mines the
    best positive and the hardest negatives of every anchor with the current projection.
    """
    import torch

    # One thread, as every training step (core.threads): the same database must give the
    # same model — the same file — in an index run and in a later `glueloc train`.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with single_threaded():
            return _refine_triplet(start, raw, positives, far, conf, epochs)
    finally:
        torch.set_num_threads(threads)


def _refine_triplet(start: Projection, raw: np.ndarray, positives: list[np.ndarray], far: np.ndarray,
                    conf: Mapping[str, Any], epochs: int | None) -> Projection:
    import torch

    rng = np.random.default_rng(int(conf["seed"]))
    torch.manual_seed(int(conf["seed"]))
    x = torch.from_numpy(raw.astype(np.float32))
    mean = torch.from_numpy(start.mean.copy())
    matrix = torch.nn.Parameter(torch.from_numpy(start.matrix.copy()))
    optimiser = torch.optim.Adam([matrix], lr=float(conf["triplet_lr"]))
    anchors = np.array([i for i, p in enumerate(positives) if len(p)], dtype=np.int64)
    far_t = torch.from_numpy(far)
    margin, hard = float(conf["triplet_margin"]), int(conf["triplet_negatives"])
    for epoch in range(int(conf["triplet_epochs"]) if epochs is None else epochs):
        with torch.no_grad():
            vectors = torch.nn.functional.normalize((x - mean) @ matrix, dim=1)
        total = 0.0
        for batch in np.array_split(rng.permutation(anchors), max(1, len(anchors) // 256)):
            with torch.no_grad():
                sims = vectors[batch] @ vectors.T
                best = [int(p[torch.argmax(sims[j, torch.from_numpy(p)])]) for j, p in
                        enumerate(positives[i] for i in batch)]
                masked = sims.masked_fill(~far_t[batch], -2.0)
                negatives = masked.topk(hard, dim=1).indices
            emb = torch.nn.functional.normalize((x - mean) @ matrix, dim=1)
            anchor, positive = emb[batch], emb[torch.tensor(best)]
            pos_sim = (anchor * positive).sum(1, keepdim=True)
            neg_sim = (anchor[:, None, :] * emb[negatives]).sum(-1)
            loss = torch.relu(neg_sim - pos_sim + margin).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        logger.debug("triplet epoch %d: loss %.4f", epoch, total / max(len(anchors), 1))
    return Projection("triplet", start.mean, matrix.detach().numpy().astype(np.float32))
