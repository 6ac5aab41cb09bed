"""The re-ranking model: its evidence columns, its fit, and its stored form."""

from __future__ import annotations

import numpy as np
import pytest

from glueloc.query.evidence import Neighbour
from glueloc.query.rerank import FEATURES, RerankModel, candidate_features, fit_logistic, fit_model


def n(x: float, y: float, inliers: int, similarity: float, matches: int = 100) -> Neighbour:
    return Neighbour(0, f"{x},{y}", x, y, similarity, matches, inliers, inliers / matches)


def test_features_describe_each_candidate_against_the_others() -> None:
    neighbours = [n(0, 0, 50, 0.9), n(0, 0, 20, 0.8), n(3, 0, 30, 0.7), n(40, 40, 100, 0.6)]
    x = candidate_features(neighbours, radius=5.0, min_inliers=15)
    assert x.shape == (4, len(FEATURES))
    col = {name: x[:, i] for i, name in enumerate(FEATURES)}
    np.testing.assert_allclose(col["log_inliers"], np.log1p([50, 20, 30, 100]))
    np.testing.assert_allclose(col["share_of_best"], [0.5, 0.2, 0.3, 1.0])
    np.testing.assert_allclose(col["similarity_gap"], [0.0, -0.1, -0.2, -0.3])
    np.testing.assert_allclose(col["log_rank"], np.log1p([0, 1, 2, 3]))
    # support: inliers of the *other* candidates within 5 units, over all inliers (+1)
    np.testing.assert_allclose(col["support"], np.array([50, 80, 70, 0]) / 201)
    # two verified views share the first position
    np.testing.assert_allclose(col["place_views"], [1, 1, 0, 0])
    assert candidate_features([], 5.0, 15).shape == (0, len(FEATURES))


def test_logistic_fit_recovers_the_direction_of_the_evidence() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 3))
    truth = np.array([2.0, -1.0, 0.0])
    y = (rng.random(2000) < 1 / (1 + np.exp(-(x @ truth + 0.5)))).astype(float)
    weights, bias = fit_logistic(x, y, l2=0.1)
    np.testing.assert_allclose(weights, truth, atol=0.25)
    assert abs(bias - 0.5) < 0.25


def test_logistic_fit_stays_finite_on_separable_data() -> None:
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    weights, bias = fit_logistic(x, np.array([0.0, 0.0, 1.0, 1.0]), l2=1.0)
    assert np.isfinite(weights).all() and np.isfinite(bias) and weights[0] > 0


def test_model_round_trips_through_json_and_refuses_other_features() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, len(FEATURES)))
    x[:, -1] = 0.0  # a constant column must not divide by zero
    y = x[:, 0] > 0
    model = fit_model(x, y, radius=5.0, min_inliers=15)
    again = RerankModel.from_json(model.to_json())
    np.testing.assert_allclose(again.predict(x), model.predict(x))
    assert ((model.predict(x) > 0.5) == y).mean() > 0.9
    stale = dict(model.to_json(), features=["log_inliers"])
    with pytest.raises(ValueError, match="calibration uses features"):
        RerankModel.from_json(stale)


def test_a_column_constant_but_for_rounding_gets_no_weight() -> None:
    """Held-out candidates whose similarity differed only by float32 rounding (in a small
    room every database pair was -1/(N-1) after in-sample whitening) must not make a
    query's candidates, whose similarities do differ, come out 0 or 1."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, len(FEATURES)))
    gap = FEATURES.index("similarity_gap")
    x[:, gap] = -0.0063 + rng.normal(scale=5e-8, size=300)
    y = rng.random(300) < 1 / (1 + np.exp(-x[:, 0]))
    model = fit_model(x, y, radius=5.0, min_inliers=15)
    assert model.weights[gap] == 0.0 and model.scale[gap] == 1.0
    query = x[:5].copy()
    moved = query.copy()
    moved[:, gap] = -0.4  # a real query's candidate, far below the top hit
    np.testing.assert_allclose(model.predict(moved), model.predict(query))
    assert 0.01 < model.predict(query).min() and model.predict(query).max() < 0.99
