"""The query path joined up: ``Localizer(layout).locate(path)``.

The path of one query, each step in its own module:
extract + embed (vision) -> shortlist (VLAD, descriptor votes and the learned image
ranking in turns, query.retrieval)
-> verify (matcher + RANSAC, query.verify) -> decide (the calibrated rule or an
uncalibrated estimator, then resection when the calibration fitted a camera,
query.decide).

A Localizer answers from one snapshot of the database taken when it opens
(query.snapshot), so a query beside an index run sees only images committed before it
began. Its descriptor-vote index is the snapshot's persisted segments, memory-mapped
(query.votes), so opening costs milliseconds; only images that no segment holds yet (a
database from before revision 0005) are indexed in memory then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from glueloc.core.errors import GluelocError
from glueloc.query.bearings import InlierPoints
from glueloc.query.decide import AUTO, CALIBRATED, Decision, calibration_in_use
from glueloc.query.estimators import ESTIMATORS
from glueloc.query.evidence import Estimate, Neighbour
from glueloc.query.retrieval import (FUSED, IMAGE, RETRIEVALS, VLAD, VOTES, Candidate, collapse_ranked, interleave,
                                     retrieve)
from glueloc.query.snapshot import DbImage, open_snapshot
from glueloc.query.stopping import StopRule, best_probability
from glueloc.query.verify import PairThreads, verify_candidates
from glueloc.query.votes import DescriptorVotes, ranked
from glueloc.storage.database import open_database
from glueloc.storage.features import FeatureReader
from glueloc.storage.layout import Layout
from glueloc.storage.vectors import VectorIndex
from glueloc.vision.embedders import Embedder, load_recorded_embedder
from glueloc.vision.extractors import Features, load_recorded_extractor
from glueloc.vision.images import DEFAULT_MAX_PIXELS, load_image
from glueloc.vision.matchers import load_matcher

logger = logging.getLogger(__name__)

#: Ranks the database for a raw image embedding in place of the model's FAISS index:
#: (embedding, excluded image ids) -> every other image id, best first. What
#: ``glueloc calibrate`` passes so a held-out place is ranked by a projection that never
#: saw it (query.crossfit).
ImageRanker = Callable[[np.ndarray, list[int]], np.ndarray]


@dataclass
class Location:
    """The answer to one query, with everything an auditor needs to see why."""

    query: str
    x: float | None
    y: float | None
    confidence: float
    uncertainty: float | None  # spread of the agreeing evidence, position units (query.evidence)
    verified: bool
    candidates: list[tuple[str, float, int]]  # retrieved shortlist: (db name, similarity, descriptor votes)
    neighbours: list[Neighbour]  # every candidate verified, with its inliers
    used: list[Neighbour]  # the neighbours the estimate rests on
    ranked_by: str = ""  # which rule chose: "calibration <id> (rule ...)" or the uncalibrated estimator
    resected: bool = False  # placed by resection (query.resection), not only by the rule
    seconds: dict[str, float] = field(default_factory=dict)
    deepened: int = 0  # candidates verified past k because the first k left the answer unsure
    skipped: int = 0  # shortlisted candidates left unverified: a verified one was already sure enough


#: Candidates verified per step of adaptive depth (about 0.45 s of LighterGlue on 2 cores).
DEEPEN_STEP = 5
#: The early stop's defaults (QueryOptions.stop_above, stop_first), chosen on Getty's
#: held-out database places: docs/SCALE.md, "Verification".
STOP_ABOVE = 0.98
STOP_FIRST = 2


def _chunks(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]


@dataclass(frozen=True)
class Rankings:
    """The database ranked for one query by each signal (query.retrieval), best first."""

    index: VectorIndex  # the global vectors' index, for similarities of candidates it did not rank
    vector: np.ndarray  # the query's global (VLAD) vector
    by_vector: list[Candidate]
    by_votes: list[int]
    counts: dict[int, int]  # descriptor votes per image id
    by_image: list[int]  # by the learned image embedding

    def fused(self, k: int, start: int = 0) -> list[int]:
        """The shortlist: the rankings in turns, distinct ids, positions ``start`` to ``k``."""
        return interleave([[c.image_id for c in self.by_vector], self.by_votes, self.by_image], k)[start:]

    def candidates(self, chosen: list[int]) -> list[Candidate]:
        similarity = {c.image_id: c.similarity for c in self.by_vector}
        missing = [i for i in chosen if i not in similarity]
        similarity.update(zip(missing, self.index.similarities(missing, self.vector)))
        return [Candidate(i, similarity[i], self.counts.get(i, 0)) for i in chosen]


@dataclass(frozen=True)
class QueryOptions:
    k: int | None = None  # candidates retrieved and verified; None: the calibration's k, else 10
    collapse: bool = False  # keep one image per capture position in the shortlist
    min_inliers: int = 15  # fewer RANSAC inliers do not count as verified
    estimator: str = AUTO  # auto, calibrated, or best / weighted-mean / cluster (query.decide)
    retrieval: str = FUSED  # fused (every ranking in turns), vlad, votes or image (query.retrieval)
    geometry: str = "fundamental"  # or "homography"
    resection: bool = True  # place the query by resection when the calibration fitted a camera for it
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Adaptive depth (calibrated databases): when no verified candidate of the first k is
    # at least ``deepen_below`` likely right, verify further down the fused rankings, a
    # few at a time, up to ``deepen_to`` candidates or ``deepen_seconds`` of extra work.
    # 0.5 is not tuned: below it the best candidate is more likely wrong than right.
    # Off by default (0): its benefit has not been measured on held-out database places,
    # its cost has (on Getty a third of the queries are unsure, each paying ~1.9 s more);
    # ``--deepen-to 30`` turns it on. docs/BENCHMARKS.md reports both on the dev queries.
    deepen_to: int = 0
    deepen_below: float = 0.5
    deepen_seconds: float = 1.5
    # Early stop (calibrated databases, query.stopping): verify ``stop_first`` candidates,
    # then as many at a time as run side by side, and stop once a verified candidate is at
    # least ``stop_above`` likely right. None verifies the whole shortlist. Chosen on
    # held-out database places the calibration did not use (bench/early_stop.py); each
    # calibration also replays it on its own held-out places and turns it off where it
    # cost accuracy or fired too rarely to tell (query.calibrate.check_early_stop).
    stop_above: float | None = STOP_ABOVE
    stop_first: int = STOP_FIRST
    workers: int | None = None  # pairs verified at once; None: one per core (query.verify.PairThreads)
    #: The strongest keypoints of each side the matcher sees; None: the calibration's budget,
    #: else every keypoint. A pair's cost grows faster than linearly with it (docs/SCALE.md).
    match_keypoints: int | None = None


class Localizer:
    def __init__(self, layout: Layout, options: QueryOptions | None = None) -> None:
        self.options = options or QueryOptions()
        if self.options.retrieval not in RETRIEVALS:
            raise GluelocError(f"unknown retrieval {self.options.retrieval!r} ({', '.join(RETRIEVALS)})")
        stop = self.options.stop_above
        if stop is not None and stop < 0.0 or self.options.stop_first < 1 or \
                self.options.workers is not None and self.options.workers < 1:
            raise GluelocError("early stop needs stop_above >= 0 (None: off), stop_first >= 1 and workers >= 1")
        if self.options.match_keypoints is not None and self.options.match_keypoints < 1:
            raise GluelocError(f"match_keypoints must be at least 1 (None: all), got {self.options.match_keypoints}")
        known = (AUTO, CALIBRATED, *ESTIMATORS)
        if self.options.estimator not in known:
            raise GluelocError(f"unknown estimator {self.options.estimator!r} ({', '.join(known)})")
        #: Seconds this Localizer took to open, by step (what a cold ``glueloc query`` pays once).
        self.open_seconds: dict[str, float] = {}
        clock = time.perf_counter()
        self.db = open_database(layout)
        try:
            snapshot = open_snapshot(self.db, self.options.retrieval)
            self.open_seconds["snapshot"] = time.perf_counter() - clock
            self.state, self.codebook, self.index, self.images = (snapshot.state, snapshot.codebook,
                                                                  snapshot.index, snapshot.images)
            # The learned image ranking, when the database has one (query.retrieval).
            self.model = snapshot.model if self.options.retrieval in (FUSED, IMAGE) else None
            if self.options.retrieval == IMAGE and self.model is None:
                raise GluelocError(f"database {layout.root} has no retrieval model"
                                   + ("" if self.state.embedder else " (it was indexed without image embeddings)")
                                   + ": run `glueloc train`, or choose another --retrieval")
            self.positions = snapshot.positions
            self.calibration = calibration_in_use(snapshot.calibration, self.options.estimator, layout.root)
            self.decision = Decision(self.options.estimator, self.calibration, self.options.min_inliers,
                                     self.options.resection)
            if self.decision.uncalibrated:
                logger.info("database not calibrated: ranking candidates by inliers alone (run `glueloc calibrate`)")
            self.embedder: Embedder | None = None if self.model is None else load_recorded_embedder(
                self.state.embedder or "", self.state.embedder_version or "", self.state.embedder_config or {})
            self.extractor = load_recorded_extractor(self.state.extractor, self.state.extractor_version,
                                                     self.state.extractor_config)
            self.matcher = load_matcher(self.state.matcher, self.state.matcher_config)
            self.threads = PairThreads.for_matcher(self.matcher, self.options.workers)
            # Only a calibration whose held-out places showed the stop costs nothing allows it.
            stops = self.decision.uses_calibration and self.calibration.early_stop
            self.stopping = StopRule(self.options.stop_above if stops else None,
                                     self.options.stop_first, self.threads.workers)
            self.open_seconds["models"] = time.perf_counter() - clock - self.open_seconds["snapshot"]
        except BaseException:
            self.db.close()
            raise
        clock = time.perf_counter()
        self.reader = FeatureReader(layout.features_dir)
        self.votes: DescriptorVotes | None = None
        if self.options.retrieval in (FUSED, VOTES):
            # Exactly the snapshot's images: its mapped segments, and in memory the images
            # no segment holds yet, read from their immutable shards (query.votes).
            try:
                parts = snapshot.votes
                self.votes = DescriptorVotes.open(
                    [] if parts is None else parts.segments, None if parts is None else parts.codec,
                    self.codebook.centroids, self.reader, ((i.id, i.shard, i.name) for i in snapshot.unvoted))
            except BaseException:
                self.close()
                raise
        self.open_seconds["votes"] = time.perf_counter() - clock

    @property
    def k(self) -> int:
        if self.options.k is not None:
            return self.options.k
        return self.calibration.k if self.calibration is not None else 10

    @property
    def match_keypoints(self) -> int | None:
        """The keypoint budget of each side of a pair (None: every keypoint). A query that
        decides by the calibration matches as it was calibrated; an uncalibrated estimator
        (and the calibration's own held-out queries) sees every keypoint unless told."""
        if self.options.match_keypoints is not None:
            return self.options.match_keypoints
        return self.calibration.keypoints if self.decision.uses_calibration else None

    def locate(self, path: Path) -> Location:
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        image = load_image(path, self.options.max_pixels)
        features = self.extractor.extract(image.rgb)
        timings["extract"] = time.perf_counter() - clock
        embedding = None
        if self.embedder is not None:
            clock = time.perf_counter()
            embedding = self.embedder.embed(image.rgb)
            timings["embed"] = time.perf_counter() - clock
        return self.locate_features(path.name, features, timings, embedding=embedding)

    def stored(self, image: DbImage) -> tuple[Features, np.ndarray | None]:
        """A database image's stored features and (when the ranking needs it) embedding:
        how ``glueloc calibrate`` queries with a held-out photo without decoding it again."""
        features = self.reader.features(image.shard, image.name)
        return features, None if self.model is None else self.reader.embedding(image.shard, image.name)

    def locate_features(self, name: str, features: Features, timings: dict[str, float] | None = None,
                        exclude: tuple[float, float] | None = None, embedding: np.ndarray | None = None) -> Location:
        """The query path after extraction; ``exclude`` leaves out every database image at
        that position (how ``glueloc calibrate`` holds a capture point out); ``embedding``:
        the query's raw image embedding, needed when the database ranks by it."""
        return self.locate_with_evidence(name, features, timings, exclude, embedding)[0]

    def locate_with_evidence(self, name: str, features: Features, timings: dict[str, float] | None = None,
                             exclude: tuple[float, float] | None = None, embedding: np.ndarray | None = None,
                             image_ranker: ImageRanker | None = None) -> tuple[Location, list[InlierPoints]]:
        """:meth:`locate_features`, also returning each neighbour's verified correspondences
        (what ``glueloc calibrate`` needs to fit the camera used for resection); ``image_ranker``
        replaces the learned image ranking's index (calibration's cross-fitted ranking)."""
        timings = {} if timings is None else timings
        deepen = self.decision.uses_calibration and self.options.deepen_to > self.k
        found = self.rankings(features, exclude, timings, embedding,
                              depth=self.options.deepen_to if deepen else self.k, image_ranker=image_ranker)
        candidates = found.candidates(found.fused(self.k))

        clock = time.perf_counter()
        neighbours, pairs = self.verify_until_sure(features, candidates)
        skipped = len(candidates) - len(neighbours)  # deepening (below) happens only when none were skipped
        timings["verify"] = time.perf_counter() - clock

        clock = time.perf_counter()
        answer, decided, placed = self.decide(neighbours, pairs)
        timings["decide"] = time.perf_counter() - clock
        deepened = 0
        if deepen and not skipped and self._unsure(decided):
            clock = time.perf_counter()
            for extra in _chunks(found.fused(self.options.deepen_to, start=self.k), DEEPEN_STEP):
                more = found.candidates(extra)
                checked, more_pairs = self.verify(features, more)
                candidates, neighbours, pairs = candidates + more, neighbours + checked, pairs + more_pairs
                deepened += len(more)
                answer, decided, placed = self.decide(neighbours, pairs)
                if not self._unsure(decided) or time.perf_counter() - clock > self.options.deepen_seconds:
                    break
            timings["deepen"] = time.perf_counter() - clock
        neighbours = decided
        timings["total"] = sum(timings.values())
        location = Location(
            query=name,
            x=None if answer is None else answer.x,
            y=None if answer is None else answer.y,
            confidence=0.0 if answer is None else answer.confidence,
            uncertainty=None if answer is None else answer.uncertainty,
            verified=bool(answer and answer.verified),
            candidates=[(self.images[c.image_id].name, round(c.similarity, 4), c.votes) for c in candidates],
            neighbours=neighbours,
            used=[] if answer is None else answer.used,
            ranked_by=self.ranked_by,
            resected=placed,
            seconds={k: round(v, 4) for k, v in timings.items()},
            deepened=deepened,
            skipped=skipped,
        )
        return location, pairs

    def _unsure(self, neighbours: list[Neighbour]) -> bool:
        """Whether no verified candidate is at least ``deepen_below`` likely to be right."""
        best = best_probability([n.probability or 0.0 for n in neighbours], [n.inliers for n in neighbours],
                                self.options.min_inliers)
        return best < self.options.deepen_below

    def verify_until_sure(self, features: Features, shortlist: list[Candidate]
                          ) -> tuple[list[Neighbour], list[InlierPoints]]:
        """The shortlist verified in order, stopping early when ``self.stopping`` says a verified
        candidate is sure enough (query.stopping); the neighbours verified and their pairs."""
        neighbours: list[Neighbour] = []
        pairs: list[InlierPoints] = []
        for length in self.stopping.lengths(len(shortlist)):
            checked, more = self.verify(features, shortlist[len(neighbours):length])
            neighbours, pairs = neighbours + checked, pairs + more
            if length < len(shortlist) and self.stopping.sure(self.calibration.model.probabilities(neighbours),
                                                              [n.inliers for n in neighbours],
                                                              self.options.min_inliers):
                break
        return neighbours, pairs

    def shortlist(self, features: Features, exclude: tuple[float, float] | None = None,
                  timings: dict[str, float] | None = None, embedding: np.ndarray | None = None) -> list[Candidate]:
        """The k candidates to verify, drawn as ``options.retrieval`` says (query.retrieval).

        ``timings`` gets the seconds of the rankings: ``retrieve`` (global vector and image
        embedding) and ``votes``.
        """
        found = self.rankings(features, exclude, timings, embedding)
        return found.candidates(found.fused(self.k))

    def rankings(self, features: Features, exclude: tuple[float, float] | None = None,
                 timings: dict[str, float] | None = None, embedding: np.ndarray | None = None,
                 depth: int | None = None, image_ranker: ImageRanker | None = None) -> Rankings:
        """Each ranking ``options.retrieval`` uses, ``depth`` (default k) deep, best first."""
        timings = {} if timings is None else timings
        depth = self.k if depth is None else depth
        if self.model is not None and embedding is None:
            raise GluelocError("this database also ranks by image embedding: the query's embedding is needed")
        clock = time.perf_counter()
        vector = self.codebook.aggregate(features.descriptors)
        excluded = [] if exclude is None else [i for i, where in self.positions.items() if where == exclude]
        by_vector = (self._by_vector(self.index, vector, excluded, depth)
                     if self.options.retrieval in (FUSED, VLAD) else [])
        by_image: list[int] = []
        if self.model is not None and image_ranker is not None:
            order = image_ranker(embedding, excluded)
            by_image = (collapse_ranked(order, self.positions, depth) if self.options.collapse
                        else order[:depth].tolist())
        elif self.model is not None:
            projected = self.model.projection.project(embedding)[0]
            by_image = [c.image_id for c in self._by_vector(self.model.index, projected, excluded, depth)]
        timings["retrieve"] = time.perf_counter() - clock
        counts: dict[int, int] = {}
        by_votes: list[int] = []
        if self.votes is not None:
            clock = time.perf_counter()
            counts = self.votes.count(features.descriptors, excluded)
            by_votes = ranked(counts)
            if self.options.collapse:
                by_votes = collapse_ranked(np.array(by_votes, dtype=np.int64), self.positions, depth)
            by_votes = by_votes[:depth]
            timings["votes"] = time.perf_counter() - clock
        return Rankings(self.index, vector, by_vector, by_votes, counts, by_image)

    def _by_vector(self, index: VectorIndex, vector: np.ndarray, excluded: list[int], depth: int) -> list[Candidate]:
        positions = self.positions if self.options.collapse else None
        if not excluded:
            return retrieve(index, vector, depth, positions)
        # Fetch past every excluded image, then drop them.
        dropped = set(excluded)
        kept = [c for c in retrieve(index, vector, depth + len(dropped), positions) if c.image_id not in dropped]
        return kept[:depth]

    def verify(self, features: Features, candidates: list[Candidate]) -> tuple[list[Neighbour], list[InlierPoints]]:
        """Every candidate verified, and the correspondences RANSAC kept for each."""
        db_images = [self.images[c.image_id] for c in candidates]
        budget = self.match_keypoints
        features = features.strongest(budget)
        db_features = [self.reader.features(i.shard, i.name).strongest(budget) for i in db_images]
        checks = verify_candidates(features, db_features, self.matcher, self.options.geometry, self.threads)
        neighbours = [
            Neighbour(i.id, i.name, i.x, i.y, c.similarity, check.matches, check.inliers, round(check.inlier_ratio, 3))
            for i, c, check in zip(db_images, candidates, checks)
        ]
        pairs = []
        for other, check in zip(db_features, checks):
            kept = check.correspondences.indices[check.inlier_mask] if check.inliers else np.zeros((0, 2), np.int64)
            pairs.append(InlierPoints(features.keypoints[kept[:, 0]], other.keypoints[kept[:, 1]],
                                      features.image_size, other.image_size))
        return neighbours, pairs

    @property
    def ranked_by(self) -> str:
        return self.decision.ranked_by

    def decide(self, neighbours: list[Neighbour], pairs: list[InlierPoints] | None = None
               ) -> tuple[Estimate | None, list[Neighbour], bool]:
        """Verified neighbours -> the answer (query.decide.Decision.decide)."""
        return self.decision.decide(neighbours, pairs)

    def close(self) -> None:
        self.reader.close()
        self.db.close()

    def __enter__(self) -> "Localizer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
