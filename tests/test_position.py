"""Position estimators: what each does with agreeing, disagreeing and missing evidence."""

from __future__ import annotations

import numpy as np
import pytest

from glueloc.query.estimators import estimate
from glueloc.query.evidence import Neighbour
from glueloc.query.rules import estimate_ranked, weighted_median


def n(x: float, y: float, inliers: int, similarity: float = 0.5, name: str = "") -> Neighbour:
    return Neighbour(0, name or f"{x},{y}", x, y, similarity, inliers + 10, inliers, 0.5)


AGREEING = [n(10, 10, 100), n(11, 10, 80), n(10, 12, 60)]
OUTLIER = n(60, -40, 120, name="another floor")


def test_best_copies_the_most_inliers() -> None:
    answer = estimate(AGREEING, "best")
    assert (answer.x, answer.y, answer.verified) == (10, 10, True)
    assert [u.name for u in answer.used] == ["10,10"]


def test_weighted_mean_lies_between_agreeing_neighbours() -> None:
    answer = estimate(AGREEING, "weighted-mean")
    assert 10 < answer.x < 11 and 10 < answer.y < 12
    assert answer.uncertainty > 0


def test_cluster_ignores_a_strong_outlier_that_best_and_mean_follow() -> None:
    neighbours = AGREEING + [OUTLIER]
    assert (estimate(neighbours, "best").x, estimate(neighbours, "best").y) == (60, -40)
    assert estimate(neighbours, "weighted-mean").x > 20  # dragged away
    clustered = estimate(neighbours, "cluster")
    assert 10 <= clustered.x <= 11 and 10 <= clustered.y <= 12
    assert OUTLIER not in clustered.used
    # the disagreement shows in the confidence
    assert clustered.confidence < estimate(AGREEING, "cluster").confidence


def test_nothing_verified_is_said_not_hidden() -> None:
    weak = [n(1, 1, 3, similarity=0.2), n(5, 5, 14, similarity=0.9)]
    answer = estimate(weak, "cluster")
    assert (answer.x, answer.y) == (5, 5)  # best retrieval candidate
    assert answer.verified is False and answer.confidence == 0.0
    assert estimate([], "best") is None


def test_more_agreeing_evidence_means_more_confidence() -> None:
    assert estimate(AGREEING[:1], "cluster").confidence < estimate(AGREEING, "cluster").confidence


def test_unknown_estimator() -> None:
    with pytest.raises(ValueError, match="unknown estimator"):
        estimate(AGREEING, "median")


def test_weighted_median_is_the_half_weight_point() -> None:
    values = np.array([0.0, 10.0, 20.0])
    assert weighted_median(values, np.array([1.0, 1.0, 1.0])) == 10.0
    assert weighted_median(values, np.array([5.0, 1.0, 1.0])) == 0.0
    assert weighted_median(values, np.array([1.0, 1.0, 5.0])) == 20.0


def test_ranked_rules_follow_the_probabilities_not_the_inliers() -> None:
    neighbours = AGREEING + [OUTLIER]  # the outlier has the most inliers
    probabilities = np.array([0.8, 0.7, 0.6, 0.3])
    inliers = estimate_ranked(neighbours, probabilities, "inliers")
    assert (inliers.x, inliers.y, inliers.confidence) == (60, -40, 0.3)
    copy = estimate_ranked(neighbours, probabilities, "copy")
    assert (copy.x, copy.y, copy.confidence) == (10, 10, 0.8)
    assert OUTLIER not in copy.used and copy.used[0].name == "10,10"
    mean = estimate_ranked(neighbours, probabilities, "mean", radius=5.0)
    assert 10 < mean.x < 11 and 10 < mean.y < 12  # between the agreeing three, not pulled to the outlier
    median = estimate_ranked(neighbours, probabilities, "median")
    assert 10 <= median.x <= 11 and 10 <= median.y <= 12


def test_median_hedges_between_two_equally_likely_places() -> None:
    a, b, c = n(0, 0, 50), n(10, 0, 50), n(20, 0, 50)
    # Under |dx| + |dy| the middle candidate is the best bet when the ends are as likely as it.
    hedge = estimate_ranked([a, b, c], np.array([0.5, 0.3, 0.5]), "median")
    assert (hedge.x, hedge.y) == (10, 0)
    assert estimate_ranked([a, b, c], np.array([0.5, 0.3, 0.5]), "copy").x == 0
    # Sharper weights let the clear favourite win.
    assert estimate_ranked([a, b, c], np.array([0.9, 0.3, 0.2]), "median", sharpness=2.0).x == 0


def test_inliers_mean_places_the_query_between_the_strongest_place_and_its_verified_neighbours() -> None:
    weak = n(12, 10, 10)  # within the radius but not verified: no weight
    neighbours = [n(10, 10, 30), OUTLIER, n(12, 10, 60), weak]  # the outlier has the most inliers
    chosen = estimate_ranked(neighbours, np.array([0.9, 0.2, 0.8, 0.1]), "inliers-mean", sharpness=2.0, radius=5.0)
    assert (chosen.x, chosen.y) == (60, -40)  # the most inliers choose the place, as with "inliers"; alone there
    neighbours = [n(10, 10, 30), n(12, 10, 60), weak, n(40, 10, 50)]
    between = estimate_ranked(neighbours, np.array([0.9, 0.8, 0.1, 0.2]), "inliers-mean", sharpness=2.0, radius=5.0)
    # inliers² weights: (30² * 10 + 60² * 12) / (30² + 60²) = 11.6; the far candidate and the weak one do not pull
    assert between.x == pytest.approx(11.6) and between.y == 10
    assert between.confidence == 0.8  # the chosen candidate's probability


def test_ranked_rules_refuse_unknown_rules_and_answer_nothing_for_no_neighbours() -> None:
    assert estimate_ranked([], np.zeros(0)) is None
    with pytest.raises(ValueError, match="unknown rule"):
        estimate_ranked(AGREEING, np.ones(3), "vote")
