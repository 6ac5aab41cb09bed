"""The last step of the query path: verified neighbours -> the answer.

A calibrated database (``glueloc calibrate``) answers by its fitted rule (``query.rules``)
and, when the calibration fitted a camera, by resection within the chosen place
(``query.sightings``); otherwise an uncalibrated estimator answers (``query.estimators``).
:class:`Decision` holds which of these applies to a Localizer's options, so the query
path and its explanation (``ranked_by``) cannot disagree.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from glueloc.core.errors import DatabaseError
from glueloc.query.bearings import InlierPoints
from glueloc.query.estimators import estimate
from glueloc.query.evidence import Estimate, Neighbour
from glueloc.query.rerank import RerankModel
from glueloc.query.rules import estimate_ranked
from glueloc.query.sightings import BearingsConf, resected
from glueloc.storage.database import calibration_retrieval
from glueloc.storage.models import Calibration

logger = logging.getLogger(__name__)

#: ``auto`` uses the database's calibration when it has one for its current codebook,
#: and the uncalibrated ``best`` (most inliers) otherwise.
AUTO = "auto"
CALIBRATED = "calibrated"
UNCALIBRATED_NOTE = "database not calibrated"


@dataclass(frozen=True)
class CalibrationInUse:
    """The database's calibration of its current codebook (``glueloc calibrate``)."""

    id: int
    model: RerankModel
    retrieval: str  # the shortlist it was fitted on (query.retrieval.RETRIEVALS)
    rule: str  # query.rules.RANKED_RULES
    sharpness: float
    k: int  # the shortlist length it was fitted with
    bearings: BearingsConf | None = None  # the camera for resection, when held-out places said it helps
    #: The strongest keypoints of each side the matcher saw (None: all): inlier counts, and so
    #: every probability the model gives, depend on it, so queries match with the same budget.
    keypoints: int | None = None
    #: Whether a query may stop verifying once a candidate looks sure (query.stopping): the
    #: calibration replays the stop on its held-out places and allows it only if it cost
    #: nothing there. Calibrations from before that check allowed it.
    early_stop: bool = True


def calibration_in_use(row: Calibration | None, estimator: str, where: object) -> CalibrationInUse | None:
    """Decode a calibration row; None when there is none (an error if ``estimator`` demands one)."""
    if row is None:
        if estimator == CALIBRATED:
            raise DatabaseError(f"database {where} has no calibration of its current codebook: run `glueloc calibrate`")
        return None
    bearings = row.options.get("bearings")  # absent in calibrations from before resection
    keypoints = row.options.get("match_keypoints")  # absent in calibrations that matched every keypoint
    stopping = row.options.get("early_stop")  # absent in calibrations from before the stop was checked
    try:
        model = RerankModel.from_json(row.model)
        camera = None if not bearings else BearingsConf(float(bearings["fov"]), str(bearings["axes"]))
        budget = None if keypoints is None else int(keypoints)
        if budget is not None and budget < 1:
            raise ValueError(f"match_keypoints {budget}")
        allowed = True if stopping is None else stopping["allowed"]
        if not isinstance(allowed, bool):
            raise ValueError(f"early_stop {stopping!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise DatabaseError(f"calibration {row.id} cannot be used ({exc}): run `glueloc calibrate` again") from exc
    return CalibrationInUse(row.id, model, calibration_retrieval(row), str(row.options["rule"]),
                            float(row.options["sharpness"]), int(row.options["k"]), camera, budget, allowed)


@dataclass(frozen=True)
class Decision:
    """How a Localizer turns verified neighbours into its answer."""

    estimator: str  # auto, calibrated, or an uncalibrated estimator (query.estimators.ESTIMATORS)
    calibration: CalibrationInUse | None
    min_inliers: int
    resection: bool  # resect when the calibration fitted a camera

    @property
    def uses_calibration(self) -> bool:
        return self.calibration is not None and self.estimator in (AUTO, CALIBRATED)

    @property
    def resects(self) -> bool:
        return self.uses_calibration and self.resection and self.calibration.bearings is not None

    @property
    def uncalibrated(self) -> bool:
        """True when ``auto`` had to fall back to inliers alone: worth telling the user."""
        return self.estimator == AUTO and self.calibration is None

    @property
    def ranked_by(self) -> str:
        if self.uses_calibration:
            c = self.calibration
            placed = f" + resection (field of view {c.bearings.fov:g} deg, {c.bearings.axes})" if self.resects else ""
            return f"calibration {c.id} (rule {c.rule}, p^{c.sharpness:g}){placed}"
        if self.estimator == AUTO:
            return f"estimator best ({UNCALIBRATED_NOTE})"
        return f"estimator {self.estimator}"

    def decide(self, neighbours: list[Neighbour], pairs: Sequence[InlierPoints] | None = None
               ) -> tuple[Estimate | None, list[Neighbour], bool]:
        """Verified neighbours -> position, by the calibration or by the chosen estimator,
        then (calibration with a camera, and ``pairs`` given) resection within the chosen place.

        Also returns the neighbours, carrying their calibrated probabilities and bearings when
        there are some, and whether resection placed the answer.
        """
        if not self.uses_calibration:
            method = "best" if self.estimator == AUTO else self.estimator
            return estimate(neighbours, method, self.min_inliers), neighbours, False
        calibration = self.calibration
        probabilities = calibration.model.probabilities(neighbours)
        neighbours = [replace(n, probability=round(float(p), 4)) for n, p in zip(neighbours, probabilities)]
        answer = estimate_ranked(neighbours, probabilities, calibration.rule, calibration.sharpness,
                                 calibration.model.radius, self.min_inliers)
        placed = False
        if answer is not None and pairs is not None and self.resects:
            answer, neighbours, placed = resected(answer, neighbours, pairs, calibration.bearings,
                                                  calibration.model.radius, self.min_inliers)
        return answer, neighbours, placed
