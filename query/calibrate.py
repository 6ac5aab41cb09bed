"""``glueloc calibrate``: fit the re-ranking model on the database itself, leave one place out.

The database is labelled, so it can test itself: hold out one capture point (every
image at one position), take one of its views as the query, and run the real query
path against the rest. Held-out views are like a user's queries, which also come from
places the database does not hold — on Getty the distance from a held-out point to the
nearest remaining one is distributed like the development queries' distance to the
database (percentiles 10/50/90: 0.7/1.9/5.5 against 0.7/1.8/4.9 units). Held out means
held out of the learned image ranking too: that ranking's model was trained on every
database photo, so a held-out place is ranked by the model's projection fitted without its
fold of places (query.crossfit), as a query is ranked by a model that never saw it.

From the held-out sample:

1. the **near radius**, the 90th percentile of distances between neighbouring capture
   points: a candidate that close counts as "the right place" (no unit is assumed);
2. a logistic **re-ranking model** (query.rerank) of P(candidate within the near radius);
3. the **shortlist length** k and the **rule** that turns probabilities into a position
   (query.rules.estimate_ranked), chosen together by cross-validated MAE over folds
   of held-out places, so every choice is measured on held-out places and none on the
   queries a user will later evaluate. The places are queried once with the longest k;
   a shorter k uses the first k candidates, exactly what a query with that k verifies.
   The lowest MAE replaces "most inliers" (what an uncalibrated query does) only when a
   paired test says it is lower beyond chance (:data:`SIGNIFICANCE`): the minimum of 14
   noisy estimates is biased low, and on a few places it is mostly noise;
4. the **camera for resection** (query.bearings, query.resection): the horizontal field of
   view and the direction of the labels' y axis with which resection within the chosen
   place gives the lowest cross-validated MAE — kept only when that beats the rule alone,
   by the same test. The rule's out-of-fold answers are the priors, so this too is
   measured on held-out places;
5. whether **early stop** may be used (:func:`check_early_stop`).

The fit and its cross-validated metrics are stored as one ``calibrations`` row (one
transaction: an interrupted calibration leaves nothing); queries use the newest
calibration of the current codebook.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from glueloc.core.version import __version__
from glueloc.core.errors import GluelocError
from glueloc.core.places import near_radius
from glueloc.query.bearings import InlierPoints
from glueloc.query.crossfit import CrossFitRanking
from glueloc.query.evaluate import confidence_metrics, error_metrics
from glueloc.query.localizer import STOP_ABOVE, STOP_FIRST, Localizer
from glueloc.query.evidence import Neighbour
from glueloc.query.rules import estimate_ranked
from glueloc.query.sightings import BearingsConf, sightings
from glueloc.query.resection import MAP_AXES, resect
from glueloc.query.rerank import FEATURES, KIND, RerankModel, candidate_features, fit_model
from glueloc.query.stopping import StopRule, stop_point
from glueloc.storage.models import Calibration

logger = logging.getLogger(__name__)

#: Rules compared by cross-validation: (name, rule, sharpness). "inliers" is the
#: uncalibrated behaviour (most inliers), kept as a candidate so calibration can only
#: replace it when held-out places say the model does better, beyond chance (``fit``).
RULES: tuple[tuple[str, str, float], ...] = (
    ("inliers", "inliers", 1.0),
    ("copy", "copy", 1.0),
    ("mean-p1", "mean", 1.0),
    ("median-p1", "median", 1.0),
    ("median-p2", "median", 2.0),
    ("median-p4", "median", 4.0),
    ("inliers-mean-2", "inliers-mean", 2.0),
)
UNCALIBRATED = "inliers"  # the rule of an uncalibrated query, what a calibrated one must beat
MIN_PLACES = 10  # fewer held-out places cannot both fit and cross-validate anything
#: A calibrated rule replaces "most inliers", and a camera the rule alone, only when the
#: held-out places show it better beyond chance: a one-sided paired permutation test of the
#: mean error, at the conventional 5 % (not tuned). In a 12-place room the lowest MAE of
#: 14 variants was a rule 0.6 units better than most inliers on held-out places and 6 units
#: worse on the queries; choosing the minimum of many noisy estimates rewards the noise.
SIGNIFICANCE = 0.05
#: Random sign flips of the permutation test (exact enumeration when fewer places allow it).
PERMUTATIONS = 9999
#: Held-out places on which early stop must have fired before it may be allowed: a stop
#: never seen to fire says nothing of what it does when it fires (as few as fit a model).
STOP_EVIDENCE = MIN_PLACES


@dataclass(frozen=True)
class CalibrationOptions:
    places: int = 300  # capture points held out (one view each); all of them if fewer
    shortlists: tuple[int, ...] = (10, 15)  # shortlist lengths k compared; queries then verify the chosen k
    folds: int = 5
    seed: int = 0
    l2: float = 1.0  # ridge on the standardised logistic weights
    #: Horizontal fields of view (degrees) compared for resection; empty: no resection.
    fovs: tuple[float, ...] = tuple(range(50, 115, 5))
    #: The strongest keypoints of each side the matcher sees, recorded so queries match alike;
    #: None: every keypoint (a query extracts as many as the database stored).
    match_keypoints: int | None = None

    @property
    def k_max(self) -> int:
        return max(self.shortlists)


@dataclass(frozen=True)
class HeldOut:
    """One held-out view: where it truly is and what the query path verified for it."""

    name: str
    x: float
    y: float
    neighbours: list[Neighbour]
    seconds: float
    pairs: list[InlierPoints] = field(default_factory=list)  # each neighbour's verified correspondences


@dataclass
class CalibrationResult:
    calibration_id: int | None
    radius: float
    k: int
    rule: str
    held_out: int
    metrics: dict[str, dict[str, float | int]]  # "rule@kK" -> cross-validated metrics
    confidence: dict[str, float]  # how well the chosen rule's confidence ranks its errors
    model: RerankModel
    seconds_per_place: float
    samples: list[HeldOut] = field(default_factory=list)
    bearings: BearingsConf | None = None  # the camera queries resect with; None: the rule alone did better
    resection: dict[str, dict[str, float | int]] = field(default_factory=dict)  # "fov<F>-<axes>" -> CV metrics
    match_keypoints: int | None = None  # the keypoint budget of each side of a pair (None: all)
    early_stop: StopCheck | None = None  # the stop replayed on the held-out places
    choice: dict[str, Any] = field(default_factory=dict)  # the lowest MAE against most inliers (Fitted.to_json)
    image_ranking: dict[str, Any] = field(default_factory=dict)  # how held-out places were ranked by image (hold_out)


@dataclass(frozen=True)
class StopCheck:
    """Early stop (query.stopping) replayed on the calibration's own held-out places.

    The stop trusts the calibrated probability: a model that is sure too soon makes every
    query stop after a pair or two. Whether that holds is a property of the database (on
    Getty's held-out places it cost nothing; in a small synthetic room, out-of-fold, it
    more than doubled the error), so each calibration measures it and allows it only where
    it is no worse than verifying the whole shortlist: neither its MAE nor its count of
    gross failures may grow.

    Equal is not enough when the stop never fired: held-out places lack their own capture
    point, so they can be far less sure than a user's queries, which usually have a view
    nearby. In a 12-place room no held-out place reached p >= 0.98, the check read "no
    worse", and every query then stopped after two pairs on a wrong place. So the stop must
    also have fired on at least :data:`STOP_EVIDENCE` held-out places.
    """

    allowed: bool
    rule: StopRule
    full: dict[str, float | int]  # out-of-fold metrics verifying all k
    stopped: dict[str, float | int]  # the same answers had each query stopped where the rule says
    pairs_mean: float  # pairs the stopping queries verified, on average
    fired: int = 0  # held-out places that stopped before the end of the shortlist

    def to_json(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "above": self.rule.above, "first": self.rule.first, "step": self.rule.step,
                "full": self.full, "stopped": self.stopped, "pairs_mean": self.pairs_mean, "fired": self.fired}


def hold_out(localizer: Localizer, options: CalibrationOptions,
             progress: Callable[[int, int], None] | None = None) -> tuple[list[HeldOut], dict[str, Any]]:
    """Run one view of each sampled capture point through the query path against the rest.

    Also returns how the learned image ranking was held out (``image_ranking`` of the
    calibration row): by the projection of each place's fold (query.crossfit), or in-sample
    when the model file has no folds — said in the row and logged, never silently.
    """
    by_place: dict[tuple[float, float], list[int]] = {}
    for image_id in sorted(localizer.images):
        by_place.setdefault(localizer.positions[image_id], []).append(image_id)
    places = sorted(by_place)
    if len(places) < MIN_PLACES:
        raise GluelocError(f"calibration needs at least {MIN_PLACES} capture points; the database has {len(places)}")
    rng = np.random.default_rng(options.seed)
    chosen = rng.choice(len(places), size=min(options.places, len(places)), replace=False)
    views = [(p, by_place[places[p]]) for p in sorted(chosen.tolist())]
    picked = [(p, localizer.images[v[int(rng.integers(len(v)))]]) for p, v in views]
    crossfit = CrossFitRanking.of(localizer)
    folds = [None if crossfit is None else crossfit.fold_of(*places[p]) for p, _ in picked]
    how: dict[str, Any] = {"model_id": localizer.state.model_id, "cross_fitted": 0, "in_sample": 0,
                           "not_trained_on": 0, "folds": 0 if crossfit is None else crossfit.folds}
    if localizer.model is not None and crossfit is None:
        logger.warning("retrieval model %s has no cross-fitted folds: held-out places are ranked by a model "
                       "trained on them, so held-out numbers are optimistic; `glueloc train` fits the folds",
                       localizer.state.model_id)
    # One fold's places together: each fold projects the database once.
    order = sorted(range(len(picked)), key=lambda i: (-1 if folds[i] is None else folds[i], i))
    samples: dict[int, HeldOut] = {}
    for done, i in enumerate(order):
        p, image = picked[i]
        features, embedding = localizer.stored(image)
        ranker = None if folds[i] is None or crossfit is None else crossfit.ranker(folds[i])
        if localizer.model is not None:
            key = "cross_fitted" if ranker is not None else "in_sample" if crossfit is None else "not_trained_on"
            how[key] += 1
        location, pairs = localizer.locate_with_evidence(image.name, features, exclude=places[p], embedding=embedding,
                                                         image_ranker=ranker)
        samples[i] = HeldOut(image.name, image.x, image.y, location.neighbours, location.seconds["total"], pairs)
        if progress is not None:
            progress(done + 1, len(picked))
    return [samples[i] for i in range(len(picked))], how


def _errors(samples: Sequence[HeldOut], probabilities: Sequence[np.ndarray], rule: str, sharpness: float,
            radius: float, min_inliers: int) -> tuple[np.ndarray, np.ndarray]:
    errors, confidences = [], []
    for sample, p in zip(samples, probabilities):
        answer = estimate_ranked(sample.neighbours, p, rule, sharpness, radius, min_inliers)
        errors.append(abs(answer.x - sample.x) + abs(answer.y - sample.y))
        confidences.append(answer.confidence)
    return np.array(errors), np.array(confidences)


def better_p(errors: np.ndarray, baseline: np.ndarray, seed: int = 0) -> float:
    """One-sided p-value that ``errors`` are lower on average than ``baseline`` on the same
    places: how often swapping the two answers of each place at random gives a mean
    difference at least as low (scipy's paired permutation test). 1.0 when they never differ."""
    from scipy.stats import permutation_test

    if not np.any(errors != baseline):
        return 1.0
    test = permutation_test((errors, baseline), lambda a, b, axis: np.mean(a - b, axis=axis), vectorized=True,
                            permutation_type="samples", alternative="less", n_resamples=PERMUTATIONS,
                            random_state=seed)
    return float(test.pvalue)


def resection_variant(conf: BearingsConf) -> str:
    return f"fov{conf.fov:g}-{conf.axes}"


@dataclass(frozen=True)
class CameraChoice:
    """The camera ``choose_bearings`` kept for one rule, and the answers it leads to."""

    bearings: BearingsConf | None  # None: the rule alone
    metrics: dict[str, dict[str, float | int]]  # "fov<F>-<axes>" -> cross-validated metrics
    p_value: float  # one-sided p that the best camera beats the rule alone (1.0: it does not at all)
    errors: np.ndarray  # each held-out place's error as a query would answer: with the camera kept, if any


def choose_bearings(samples: Sequence[HeldOut], probabilities: Sequence[np.ndarray], rule: str, sharpness: float,
                    radius: float, options: CalibrationOptions, min_inliers: int) -> CameraChoice:
    """Resect every held-out place's out-of-fold answer with each candidate camera; the camera
    with the lowest MAE is kept when it beats the answers left as they are, beyond chance
    (:data:`SIGNIFICANCE`)."""
    answers = [estimate_ranked(s.neighbours, p, rule, sharpness, radius, min_inliers)
               for s, p in zip(samples, probabilities)]
    plain = np.array([abs(a.x - s.x) + abs(a.y - s.y) for a, s in zip(answers, samples)])
    metrics: dict[str, dict[str, float | int]] = {}
    cameras: dict[str, BearingsConf] = {}
    resected: dict[str, np.ndarray] = {}
    for fov in options.fovs:
        seen_by = [[seen for _, seen in sightings(a, s.neighbours, s.pairs, fov, radius, min_inliers)]
                   for a, s in zip(answers, samples)]
        for axes in MAP_AXES:
            errors = plain.copy()
            for i, (answer, seen, sample) in enumerate(zip(answers, seen_by, samples)):
                solution = resect(seen, (answer.x, answer.y), radius, axes)  # None: < 3 places (none if unverified)
                if solution is not None:
                    errors[i] = abs(solution.x - sample.x) + abs(solution.y - sample.y)
            camera = BearingsConf(float(fov), axes)
            metrics[resection_variant(camera)] = error_metrics(errors)
            cameras[resection_variant(camera)] = camera
            resected[resection_variant(camera)] = errors
    if not metrics:
        return CameraChoice(None, metrics, 1.0, plain)
    best = min(metrics, key=lambda v: metrics[v]["mae"])
    if metrics[best]["mae"] >= round(float(plain.mean()), 3):
        return CameraChoice(None, metrics, 1.0, plain)
    p_value = better_p(resected[best], plain, options.seed)
    if p_value >= SIGNIFICANCE:
        return CameraChoice(None, metrics, p_value, plain)
    return CameraChoice(cameras[best], metrics, p_value, resected[best])


def _labels(samples: Sequence[HeldOut], radius: float) -> list[np.ndarray]:
    """Per sample, which candidates lie within ``radius`` of the held-out view: the model's target."""
    labels = []
    for s in samples:
        xy = np.array([(n.x, n.y) for n in s.neighbours], float).reshape(-1, 2)
        labels.append(np.abs(xy - (s.x, s.y)).sum(1) <= radius)
    return labels


def _design(samples: Sequence[HeldOut], radius: float, min_inliers: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return [candidate_features(s.neighbours, radius, min_inliers) for s in samples], _labels(samples, radius)


def rule_of(name: str) -> tuple[str, float]:
    """The (rule, sharpness) a :data:`RULES` name stands for."""
    return next((rule, sharpness) for n, rule, sharpness in RULES if n == name)


def variant(rule_name: str, k: int) -> str:
    return f"{rule_name}@k{k}"


def stratified_folds(labels: Sequence[np.ndarray], folds: int) -> np.ndarray:
    """The fold of each held-out place, dealt so that every training part can fit a model.

    A fold's training part (all the other folds) needs right and wrong candidates. Dealing
    places by index can leave every right candidate of a small database in one fold, and
    the fit then fails for reasons of chance alone. So places are dealt round-robin in the
    order *only right candidates*, *both*, *only wrong*: the places with a right candidate
    form one run of consecutive deals, and so do those with a wrong one, and a run of two
    or more places spans two folds, so leaving out any one fold keeps both kinds in
    training. Only a sample with fewer than two places of either kind cannot be split;
    that is too little evidence, and the error says so.
    """
    right = np.array([bool(np.any(y)) for y in labels])
    wrong = np.array([bool(np.any(~np.asarray(y, bool))) for y in labels])
    for kind, has in (("a candidate within the near radius", right), ("a candidate outside it", wrong)):
        if has.sum() < 2:
            raise GluelocError(f"only {int(has.sum())} held-out place(s) had {kind}; cross-validation needs two: "
                               "hold out more places")
    stratum = np.select([right & ~wrong, right & wrong, wrong], [0, 1, 2], 3)  # 3: no candidate, last
    order = np.lexsort((np.arange(len(labels)), stratum))  # by stratum, then by place
    assigned = np.empty(len(labels), int)
    assigned[order] = np.arange(len(labels)) % max(2, min(folds, len(labels)))
    return assigned


def _fold_models(features: Sequence[np.ndarray], labels: Sequence[np.ndarray], radius: float,
                 options: CalibrationOptions, min_inliers: int) -> Iterator[tuple[np.ndarray, RerankModel]]:
    """For each fold of the held-out places: the indices of its places, and the model fitted
    on all the other folds (what those places are judged by, out of fold)."""
    folds = stratified_folds(labels, options.folds)
    for fold in np.unique(folds):
        train = folds != fold
        x = np.concatenate([f for f, t in zip(features, train) if t])
        y = np.concatenate([y for y, t in zip(labels, train) if t])
        yield np.where(~train)[0], fit_model(x, y, radius, min_inliers, options.l2)


def _cross_validate(samples: Sequence[HeldOut], radius: float, options: CalibrationOptions, min_inliers: int
                    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Out-of-fold probabilities for every sample, plus the design they came from."""
    features, labels = _design(samples, radius, min_inliers)
    probabilities: list[np.ndarray] = [np.zeros(0)] * len(samples)
    for held, model in _fold_models(features, labels, radius, options, min_inliers):
        for i in held:
            probabilities[i] = model.predict(features[i])
    return features, labels, probabilities


@dataclass(frozen=True)
class Fitted:
    """What ``fit`` chose from the held-out places, and the evidence it chose by."""

    model: RerankModel
    k: int
    rule: str  # a :data:`RULES` name
    metrics: dict[str, dict[str, float | int]]  # "rule@kK" -> cross-validated metrics
    confidence: dict[str, float]  # the chosen variant's confidence metrics
    bearings: BearingsConf | None  # the camera for resection; None: the rule alone
    resection: dict[str, dict[str, float | int]]  # "fov<F>-<axes>" -> cross-validated metrics
    baseline: str = ""  # the best "most inliers" variant the lowest MAE was tested against
    p_value: float = 1.0  # one-sided p that the lowest-MAE variant, with its camera, beats it with its own
    resection_p_value: float = 1.0  # the same for the chosen rule's best camera against the rule alone
    answered: dict[str, float] = field(default_factory=dict)  # MAE of the two as queries answer (camera included)

    def to_json(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "lowest": self.lowest, "p_value": self.p_value,
                "resection_p_value": self.resection_p_value, "answered": self.answered,
                "significance": SIGNIFICANCE}

    @property
    def lowest(self) -> str:
        """The variant with the lowest cross-validated MAE, chosen or not."""
        return min(self.metrics, key=lambda v: self.metrics[v]["mae"])


def fit(samples: Sequence[HeldOut], radius: float, options: CalibrationOptions, min_inliers: int) -> Fitted:
    """Cross-validate every (shortlist length, rule) over folds of held-out places; choose
    the camera for resection on the out-of-fold answers of the lowest MAE and of the best
    "most inliers" variant; keep the first when its answers, camera included, beat the
    second's beyond chance (else the second); refit the model of the winner on all places."""
    samples = [s for s in samples if s.neighbours]
    if len(samples) < MIN_PLACES:
        raise GluelocError(f"only {len(samples)} held-out places got any candidate; calibration needs {MIN_PLACES}")
    everything = np.concatenate(_labels(samples, radius))
    if everything.all() or not everything.any():
        raise GluelocError("every held-out candidate was on the same side of the near radius: nothing to calibrate")
    metrics: dict[str, dict[str, float | int]] = {}
    confidences: dict[str, dict[str, float]] = {}
    errors_of: dict[str, np.ndarray] = {}
    designs: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    out_of_fold: dict[int, tuple[list[HeldOut], list[np.ndarray]]] = {}
    for k in sorted(options.shortlists):
        # A query with shortlist k verifies exactly the first k of the k_max candidates.
        shorter = [replace(s, neighbours=s.neighbours[:k]) for s in samples]
        features, labels, probabilities = _cross_validate(shorter, radius, options, min_inliers)
        designs[k] = (features, labels)
        out_of_fold[k] = (shorter, probabilities)
        for name, rule, sharpness in RULES:
            errors, confidence = _errors(shorter, probabilities, rule, sharpness, radius, min_inliers)
            metrics[variant(name, k)] = error_metrics(errors)
            confidences[variant(name, k)] = confidence_metrics(errors, confidence)
            errors_of[variant(name, k)] = errors
    # Lowest cross-validated MAE; shorter lists and simpler rules come first, so a tie keeps them.
    lowest = min(metrics, key=lambda v: metrics[v]["mae"])
    baseline = min((v for v in metrics if v.rsplit("@k", 1)[0] == UNCALIBRATED), key=lambda v: metrics[v]["mae"])

    def with_camera(chosen: str) -> CameraChoice:
        name, k = chosen.rsplit("@k", 1)
        return choose_bearings(*out_of_fold[int(k)], *rule_of(name), radius, options, min_inliers)

    # The two are compared as queries would answer: each rule with the camera it would keep.
    cameras = {lowest: with_camera(lowest)}
    if baseline not in cameras:
        cameras[baseline] = with_camera(baseline)
    p_value = 1.0 if lowest == baseline else better_p(cameras[lowest].errors, cameras[baseline].errors, options.seed)
    chosen = lowest if p_value < SIGNIFICANCE else baseline
    name, k = chosen.rsplit("@k", 1)
    features, labels = designs[int(k)]
    model = fit_model(np.concatenate(features), np.concatenate(labels), radius, min_inliers, options.l2)
    camera = cameras[chosen]
    answered = {v: round(float(c.errors.mean()), 3) for v, c in cameras.items()}
    return Fitted(model, int(k), name, metrics, confidences[chosen], camera.bearings, camera.metrics, baseline,
                  p_value, camera.p_value, answered)


def _placed_error(sample: HeldOut, length: int, model: RerankModel, rule_name: str, radius: float,
                  bearings: BearingsConf | None, min_inliers: int) -> float:
    """The error of the answer a query gives from its first ``length`` verified candidates:
    the rule on the model's probabilities, then resection when a camera is chosen."""
    neighbours, pairs = sample.neighbours[:length], sample.pairs[:length]
    rule, sharpness = rule_of(rule_name)
    answer = estimate_ranked(neighbours, model.probabilities(neighbours), rule, sharpness, radius, min_inliers)
    if answer is None:
        return float("inf")
    x, y = answer.x, answer.y
    if bearings is not None:
        seen = [one for _, one in sightings(answer, neighbours, pairs, bearings.fov, radius, min_inliers)]
        solution = resect(seen, (answer.x, answer.y), radius, bearings.axes)
        if solution is not None:
            x, y = solution.x, solution.y
    return abs(x - sample.x) + abs(y - sample.y)


def check_early_stop(samples: Sequence[HeldOut], k: int, rule_name: str, radius: float, bearings: BearingsConf | None,
                     options: CalibrationOptions, min_inliers: int, stop: StopRule) -> StopCheck:
    """Replay ``stop`` on every held-out place with the model of the folds that did not see it
    (as ``fit`` chose the rule), and compare with verifying all ``k``."""
    shorter = [replace(s, neighbours=s.neighbours[:k], pairs=s.pairs[:k]) for s in samples if s.neighbours]
    features, labels = _design(shorter, radius, min_inliers)
    full, stopped, lengths, fired = [], [], [], 0
    for held, model in _fold_models(features, labels, radius, options, min_inliers):
        for i in held:
            sample = shorter[i]
            length = stop_point(stop, [n.inliers for n in sample.neighbours],
                                lambda m, s=sample: model.probabilities(s.neighbours[:m]), min_inliers)
            full.append(_placed_error(sample, len(sample.neighbours), model, rule_name, radius, bearings, min_inliers))
            # A query that did not stop answers as one that verified everything.
            stopped.append(full[-1] if length == len(sample.neighbours) else
                           _placed_error(sample, length, model, rule_name, radius, bearings, min_inliers))
            lengths.append(length)
            fired += length < len(sample.neighbours)
    whole, early = error_metrics(np.array(full)), error_metrics(np.array(stopped))
    allowed = (fired >= STOP_EVIDENCE and early["mae"] <= whole["mae"]
               and early["gross_failures"] <= whole["gross_failures"])
    return StopCheck(bool(allowed), stop, whole, early, round(float(np.mean(lengths)), 2), fired)


def calibrate(localizer: Localizer, options: CalibrationOptions,
              progress: Callable[[int, int], None] | None = None, write: bool = True) -> CalibrationResult:
    """Hold out, fit, choose, and (with ``write``) record the calibration in the database."""
    if localizer.k != options.k_max:
        raise GluelocError(f"the localizer verifies {localizer.k} candidates, the calibration needs {options.k_max}")
    if localizer.match_keypoints != options.match_keypoints:
        raise GluelocError(f"the localizer matches {localizer.match_keypoints} keypoints a side, "
                           f"the calibration needs {options.match_keypoints}")
    radius = near_radius(np.array(list(localizer.positions.values()), float))
    samples, image_ranking = hold_out(localizer, options, progress)
    fitted = fit(samples, radius, options, localizer.options.min_inliers)
    model, k, chosen, metrics, confidence, bearings, resection = (fitted.model, fitted.k, fitted.rule, fitted.metrics,
                                                                  fitted.confidence, fitted.bearings, fitted.resection)
    rule, sharpness = rule_of(chosen)
    # The stop a query would use: the default threshold, as many pairs a step as run side by side.
    stopping = check_early_stop(samples, k, chosen, radius, bearings, options, localizer.options.min_inliers,
                                StopRule(STOP_ABOVE, STOP_FIRST, localizer.threads.workers))
    seconds = float(np.median([s.seconds for s in samples]))
    calibration_id = None
    if write:
        row_options: dict[str, Any] = {"rule": rule, "sharpness": sharpness, "rule_name": chosen, "k": k,
                                       "retrieval": localizer.options.retrieval,
                                       "variant": variant(chosen, k),
                                       "shortlists": list(options.shortlists),
                                       "places": options.places, "folds": options.folds, "fold_assignment": "stratified",
                                       "seed": options.seed,
                                       "l2": options.l2, "features": list(FEATURES),
                                       "bearings": None if bearings is None else {"fov": bearings.fov,
                                                                                   "axes": bearings.axes},
                                       "fovs": list(options.fovs), "match_keypoints": options.match_keypoints,
                                       "early_stop": stopping.to_json(), "image_ranking": image_ranking}
        with localizer.db.session() as session, session.begin():
            row = Calibration(kind=KIND, model=model.to_json(), options=row_options,
                              metrics={"variants": metrics, "confidence": confidence, "radius": radius,
                                       "resection": resection, "choice": fitted.to_json()},
                              held_out=len(samples), images=len(localizer.images),
                              codebook_id=localizer.state.codebook_id, model_id=localizer.state.model_id,
                              glueloc_version=__version__)
            session.add(row)
            session.flush()
            calibration_id = row.id
        logger.info("calibration %d: k %d, rule %s, cross-validated MAE %.2f, resection %s", calibration_id, k,
                    chosen, metrics[variant(chosen, k)]["mae"], bearings)
    return CalibrationResult(calibration_id, radius, k, chosen, len(samples), metrics, confidence, model, seconds,
                             samples, bearings, resection, options.match_keypoints, stopping, fitted.to_json(),
                             image_ranking)
