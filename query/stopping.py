"""When verification may stop before the end of the shortlist.

Verifying a candidate (one matcher pair) is most of what a query costs. A calibrated
database knows, after each pair, how likely each verified candidate is to lie within the
near radius of the query (``query.rerank``). Once one of them is almost surely right, the
rest of the shortlist rarely changes the answer, so a query may stop there. How sure is
"almost surely", and how many pairs are verified before stopping is considered, were
chosen on held-out database places (``bench/early_stop.py``, docs/SCALE.md), not on
development queries; each calibration also replays the stop on its own held-out places
and turns it off where it cost accuracy there, or fired too rarely to tell
(query.calibrate.check_early_stop). An
uncalibrated database has no such probability and verifies all k.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


def best_probability(probabilities: Sequence[float] | np.ndarray, inliers: Sequence[int], min_inliers: int) -> float:
    """The highest calibrated probability among the candidates that verify (0 if none does)."""
    return max((float(p) for p, n in zip(probabilities, inliers) if n >= min_inliers), default=0.0)


@dataclass(frozen=True)
class StopRule:
    """Verify ``first`` pairs, then ``step`` at a time; stop once a verified candidate reaches ``above``.

    ``above`` None verifies the whole shortlist. ``step`` is how many pairs run together
    (``query.verify``'s workers), so a step is never cut short to save one pair.
    """

    above: float | None
    first: int
    step: int

    def lengths(self, k: int) -> list[int]:
        """The shortlist prefixes after which the rule is checked; the last is ``k``."""
        if self.above is None or k <= self.first:
            return [k]
        return [*range(self.first, k, max(self.step, 1)), k]

    def sure(self, probabilities: Sequence[float] | np.ndarray, inliers: Sequence[int], min_inliers: int) -> bool:
        return self.above is not None and best_probability(probabilities, inliers, min_inliers) >= self.above


def stop_point(rule: StopRule, inliers: Sequence[int], probabilities_of: Callable[[int], np.ndarray],
               min_inliers: int) -> int:
    """How many candidates of an already verified shortlist the rule would have verified.

    ``probabilities_of(m)``: the calibrated probabilities of the first m candidates, computed
    on those m alone, as a query that stopped there would have them. Lets held-out
    evidence verified in full be replayed under any rule (``bench/early_stop.py``).
    """
    lengths = rule.lengths(len(inliers))
    for m in lengths[:-1]:
        if rule.sure(probabilities_of(m), inliers[:m], min_inliers):
            return m
    return lengths[-1]
