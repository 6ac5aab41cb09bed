"""Which verified candidate shows where the query was taken? A model fitted on the database.

The inlier count alone is a weak judge in a building of repeated materials: on the
Getty held-out capture points a wrong candidate 20+ units away often has as many
inliers as a right one. Other evidence the query path already has helps a little and,
more usefully, says *how sure* the answer is: how the candidate compares with the best
candidate (share of the top inlier count, its RANSAC inlier ratio), what retrieval
thought of it (similarity gap to the top hit, rank), and whether other verified
candidates lie near it (a place several views agree on is less likely a look-alike).

A logistic model turns these into the probability that the candidate lies within the
database's *near radius* of the query. It is fitted by ``glueloc calibrate`` on the
database's own capture points held out one at a time (query.calibrate), never on
queries; its probability is the answer's confidence.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from glueloc.core.threads import single_threaded
from glueloc.query.evidence import Neighbour

logger = logging.getLogger(__name__)

KIND = "rerank:1"

#: The evidence, one column per name, in this order (see candidate_features).
FEATURES: tuple[str, ...] = (
    "log_inliers",  # log(1 + RANSAC inliers)
    "share_of_best",  # inliers / the most inliers among the candidates
    "inlier_ratio",  # inliers / matches proposed by the matcher
    "similarity_gap",  # global-vector similarity minus the top candidate's
    "log_rank",  # log(1 + retrieval rank), 0 for the top candidate
    "support",  # share of all inliers held by *other* candidates within the near radius
    "place_views",  # other verified candidates at exactly this position (views of one capture point)
)


def candidate_features(neighbours: Sequence[Neighbour], radius: float, min_inliers: int) -> np.ndarray:
    """The evidence matrix (candidates x FEATURES) for neighbours given in retrieval order."""
    n = len(neighbours)
    if n == 0:
        return np.zeros((0, len(FEATURES)))
    inliers = np.array([c.inliers for c in neighbours], float)
    similarity = np.array([c.similarity for c in neighbours], float)
    ratio = np.array([c.inlier_ratio for c in neighbours], float)
    xy = np.array([(c.x, c.y) for c in neighbours], float)
    distance = np.abs(xy[:, None, :] - xy[None, :, :]).sum(-1)
    others = ~np.eye(n, dtype=bool)
    near = (distance <= radius) & others
    same_place = (distance == 0) & others
    verified = inliers >= min_inliers
    return np.stack([
        np.log1p(inliers),
        inliers / max(inliers.max(), 1.0),
        ratio,
        similarity - similarity.max(),
        np.log1p(np.arange(n, dtype=float)),
        (near @ inliers) / (inliers.sum() + 1.0),
        same_place @ verified.astype(float),
    ], axis=1)


#: A feature whose spread over the held-out candidates is below this is constant (fit_model).
CONSTANT_SPREAD = 1e-6


def sigmoid(t: np.ndarray) -> np.ndarray:
    """The logistic function, written with tanh so that large |t| cannot overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * t))


@dataclass(frozen=True)
class RerankModel:
    """Standardisation and logistic weights over FEATURES, plus the radii it was fitted with."""

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray  # one per feature, on standardised features
    bias: float
    radius: float  # near radius, position units: what "right candidate" meant when fitting
    min_inliers: int

    def probabilities(self, neighbours: Sequence[Neighbour]) -> np.ndarray:
        """P(candidate within ``radius`` of the query) for each neighbour."""
        x = candidate_features(neighbours, self.radius, self.min_inliers)
        return self.predict(x)

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.scale
        return sigmoid(z @ self.weights + self.bias)

    def to_json(self) -> dict[str, Any]:
        return {
            "features": list(self.features), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
            "weights": self.weights.tolist(), "bias": self.bias, "radius": self.radius, "min_inliers": self.min_inliers,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RerankModel:
        features = tuple(data["features"])
        if features != FEATURES:
            # A model over other evidence cannot be applied to this code's features.
            raise ValueError(f"calibration uses features {features}, this glueloc computes {FEATURES}")
        return cls(features, np.asarray(data["mean"], float), np.asarray(data["scale"], float),
                   np.asarray(data["weights"], float), float(data["bias"]), float(data["radius"]),
                   int(data["min_inliers"]))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 100) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method (IRLS) on standardised columns.

    Seven features and a few thousand rows: Newton converges in a handful of steps, and
    the ridge term keeps it finite when a feature separates the sample perfectly.
    """
    design = np.c_[x, np.ones(len(x))]
    ridge = l2 * np.eye(design.shape[1])
    ridge[-1, -1] = 0.0  # the intercept is not shrunk
    w = np.zeros(design.shape[1])
    for _ in range(iterations):
        p = sigmoid(design @ w)
        gradient = design.T @ (p - y) + ridge @ w
        hessian = (design * (p * (1.0 - p))[:, None]).T @ design + ridge
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return w[:-1], float(w[-1])


def fit_model(x: np.ndarray, y: np.ndarray, radius: float, min_inliers: int, l2: float = 1.0) -> RerankModel:
    mean = x.mean(0)
    scale = x.std(0)
    # A column that does not vary carries no evidence; it keeps weight 0 (centred, unscaled).
    # "Does not vary" includes float32 rounding: every feature is of order 1, and a spread
    # below CONSTANT_SPREAD is noise. Standardising noise to unit spread would let a query
    # whose value differs in earnest (by 0.1, say) move the logit by 10^6: in a small room
    # the database's own VLAD similarities were all -1/(N-1) give or take 5e-8, because
    # PCA-whitening fitted on N images onto N - 1 components made them a regular simplex
    # (vision.vlad now keeps at most N / 2), and every real query's candidates came out 0 or 1.
    constant = scale < CONSTANT_SPREAD
    scale[constant] = 1.0
    x = np.where(constant, mean, x)
    with single_threaded():  # the same held-out evidence gives the same model on any machine
        weights, bias = fit_logistic((x - mean) / scale, y.astype(float), l2)
    return RerankModel(FEATURES, mean, scale, weights, bias, radius, min_inliers)
