"""The early-stop rule (query.stopping) and how pairs share the cores (query.verify.PairThreads)."""

from __future__ import annotations

import numpy as np

from glueloc.query.stopping import StopRule, best_probability, stop_point
from glueloc.query.verify import MAX_WORKERS, PairThreads
from glueloc.vision.matchers.base import Matcher, Matches


def test_rule_checks_after_the_first_pairs_then_each_step() -> None:
    assert StopRule(0.9, 2, 2).lengths(15) == [2, 4, 6, 8, 10, 12, 14, 15]
    assert StopRule(0.9, 3, 1).lengths(5) == [3, 4, 5]
    assert StopRule(None, 2, 2).lengths(15) == [15]  # off: one step, the whole shortlist
    assert StopRule(0.9, 6, 2).lengths(4) == [4]


def test_only_verified_candidates_can_be_sure() -> None:
    assert best_probability([0.99, 0.5], [3, 40], min_inliers=15) == 0.5  # 0.99 has too few inliers
    assert best_probability([0.99], [3], min_inliers=15) == 0.0
    rule = StopRule(0.9, 1, 1)
    assert rule.sure([0.2, 0.95], [20, 20], 15) and not rule.sure([0.2, 0.85], [20, 20], 15)
    assert not StopRule(None, 1, 1).sure([1.0], [100], 15)


def test_stop_point_replays_the_rule_on_probabilities_of_each_prefix() -> None:
    inliers = [50, 10, 80, 90, 20, 5]
    seen: list[int] = []

    def probabilities(m: int) -> np.ndarray:  # the third candidate becomes sure once four are known
        seen.append(m)
        return np.array([0.3, 0.1, 0.97 if m >= 4 else 0.6, 0.4, 0.2, 0.1][:m])

    assert stop_point(StopRule(0.95, 2, 2), inliers, probabilities, 15) == 4
    assert seen == [2, 4]
    assert stop_point(StopRule(0.99, 2, 2), inliers, probabilities, 15) == 6  # never sure: all
    assert stop_point(StopRule(None, 2, 2), inliers, probabilities, 15) == 6


class _Device(Matcher):
    name = "device-test"
    version = "0"
    extractors = ()

    def __init__(self, cpu: bool) -> None:
        super().__init__()
        self._cpu = cpu

    @property
    def on_cpu(self) -> bool:
        return self._cpu

    def match(self, features0, features1) -> Matches:  # type: ignore[no-untyped-def]
        return Matches.empty()


def test_pairs_share_the_cores() -> None:
    assert PairThreads.for_matcher(_Device(True), cores=2) == PairThreads(2, 1)
    assert PairThreads.for_matcher(_Device(True), cores=1) == PairThreads(1, 1)
    assert PairThreads.for_matcher(_Device(True), cores=16) == PairThreads(MAX_WORKERS, 16 // MAX_WORKERS)
    assert PairThreads.for_matcher(_Device(True), workers=1, cores=2) == PairThreads(1, 2)
    assert PairThreads.for_matcher(_Device(False), cores=8) == PairThreads(1, 8)  # a GPU: one pair at a time
