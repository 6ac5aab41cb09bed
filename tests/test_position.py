"""Position estimators: what each does with agreeing, disagreeing and missing evidence."""

from __future__ import annotations

import pytest

from query.position import Neighbour, estimate


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
