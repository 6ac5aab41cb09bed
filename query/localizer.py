"""The query path joined up: ``Localizer(layout).locate(path)``.

A Localizer takes one consistent snapshot of the database when it opens (the store
state, the image rows and the FAISS file they name, read in one transaction), so a
query running beside an index run answers only from images committed before it began.
It also builds the descriptor-vote index of exactly those images then (query.votes;
about 8 s for Getty's 4500 images on 2 cores, paid once per Localizer, so ``evaluate``
and ``predict`` pay it once and a single ``glueloc query`` pays it every time —
``--retrieval vlad`` skips it).

The path of one query: extract -> shortlist (VLAD and descriptor votes in turns,
query.retrieval) -> verify (matcher + RANSAC, query.verify) -> decide (the calibrated
rule, or an uncalibrated estimator, query.position) -> resect (when the calibration
fitted a camera: the directions in which the query sees its neighbours place it within
the chosen place, query.bearings and query.resection).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from sqlalchemy import select

import numpy as np

from glueloc.errors import DatabaseError, GluelocError
from glueloc.extractors import Features, load_recorded_extractor
from glueloc.images import DEFAULT_MAX_PIXELS, load_image
from glueloc.matchers import load_matcher
from query.bearings import InlierPoints
from query.position import BearingsConf, Estimate, Neighbour, estimate, estimate_ranked, resected
from query.rerank import RerankModel
from query.retrieval import FUSED, RETRIEVALS, VLAD, VOTES, Candidate, collapse_ranked, interleave, retrieve
from query.votes import DescriptorVotes, ranked
from query.verify import verify_candidates, verify_pair
from storage.database import calibration_retrieval, open_database
from storage.features import FeatureReader
from storage.layout import Layout
from storage.globals import read_codebook
from storage.models import Calibration, Codebook, FeatureShard, Image, IndexRun
from storage.vectors import VectorIndex

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DbImage:
    id: int
    name: str
    x: float
    y: float
    shard: str
    images_dir: str | None  # where its index run found the file (for pictures)

    @property
    def path(self) -> Path | None:
        return Path(self.images_dir) / self.name if self.images_dir else None


@dataclass
class Location:
    """The answer to one query, with everything an auditor needs to see why."""

    query: str
    x: float | None
    y: float | None
    confidence: float
    uncertainty: float | None  # spread of the agreeing evidence, position units (query.position)
    verified: bool
    candidates: list[tuple[str, float, int]]  # retrieved shortlist: (db name, similarity, descriptor votes)
    neighbours: list[Neighbour]  # every candidate verified, with its inliers
    used: list[Neighbour]  # the neighbours the estimate rests on
    ranked_by: str = ""  # which rule chose: "calibration <id> (rule ...)" or the uncalibrated estimator
    resected: bool = False  # placed by resection (query.resection), not only by the rule
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CalibrationInUse:
    """The database's calibration of its current codebook (``glueloc calibrate``)."""

    id: int
    model: RerankModel
    retrieval: str  # the shortlist it was fitted on (query.retrieval.RETRIEVALS)
    rule: str  # query.position.RANKED_RULES
    sharpness: float
    k: int  # the shortlist length it was fitted with
    bearings: BearingsConf | None = None  # the camera for resection, when held-out places said it helps


#: ``auto`` uses the database's calibration when it has one for its current codebook,
#: and the uncalibrated ``best`` (most inliers) otherwise.
AUTO = "auto"
CALIBRATED = "calibrated"


@dataclass(frozen=True)
class QueryOptions:
    k: int | None = None  # candidates retrieved and verified; None: the calibration's k, else 10
    collapse: bool = False  # keep one image per capture position in the shortlist
    min_inliers: int = 15  # fewer RANSAC inliers do not count as verified
    estimator: str = AUTO  # auto, calibrated, or best / weighted-mean / cluster (query.position)
    retrieval: str = FUSED  # fused (VLAD and descriptor votes in turns), vlad or votes (query.retrieval)
    geometry: str = "fundamental"  # or "homography"
    resection: bool = True  # place the query by resection when the calibration fitted a camera for it
    max_pixels: int = DEFAULT_MAX_PIXELS


class Localizer:
    def __init__(self, layout: Layout, options: QueryOptions | None = None) -> None:
        self.options = options or QueryOptions()
        if self.options.retrieval not in RETRIEVALS:
            raise GluelocError(f"unknown retrieval {self.options.retrieval!r} ({', '.join(RETRIEVALS)})")
        self.db = open_database(layout)
        self._snapshot()
        self.reader = FeatureReader(layout.features_dir)
        self.votes: DescriptorVotes | None = None
        if self.options.retrieval != VLAD:
            # Exactly the snapshot's images, read from their immutable shards (query.votes).
            self.votes = DescriptorVotes.build(
                self.reader, ((i.id, i.shard, i.name) for i in sorted(self.images.values(), key=lambda i: i.id)),
                self.codebook.centroids)

    def _snapshot(self, attempts: int = 3) -> None:
        for _ in range(attempts):
            with self.db.session() as session, session.begin():
                state = self.db.state(session)
                if state is None or state.faiss_file is None:
                    raise DatabaseError(f"database {self.db.layout.root} holds no indexed images")
                if state.codebook_id is None:
                    raise DatabaseError(f"database {self.db.layout.root} has no trained codebook: run `glueloc reindex --retrain`")
                codebook_row = session.get(Codebook, state.codebook_id)
                calibration_row = self.db.calibration(session, state.codebook_id, self.options.retrieval)
                rows = session.execute(
                    select(Image.id, Image.name, Image.x, Image.y, FeatureShard.filename, IndexRun.images_dir)
                    .join(FeatureShard, Image.shard_id == FeatureShard.id).join(IndexRun, Image.run_id == IndexRun.id)
                ).all()
                try:
                    self.index = VectorIndex.load(self.db.layout.vectors_dir / state.faiss_file)
                except RuntimeError:
                    continue  # a writer replaced the file between our read and open: read again
            self.state = state
            self.codebook = read_codebook(self.db.layout.vectors_dir / codebook_row.filename)
            self.images = {r[0]: DbImage(*r) for r in rows}
            self.positions = {i: (image.x, image.y) for i, image in self.images.items()}
            if self.index.count != len(self.images):
                raise DatabaseError(
                    f"FAISS holds {self.index.count} vectors for {len(self.images)} images: run `glueloc audit`"
                )
            self.calibration = self._calibration(calibration_row)
            self.extractor = load_recorded_extractor(state.extractor, state.extractor_version, state.extractor_config)
            self.matcher = load_matcher(state.matcher, state.matcher_config)
            return
        raise DatabaseError("the FAISS index kept changing while opening; try again")

    def _calibration(self, row: Calibration | None) -> CalibrationInUse | None:
        """What the snapshot's calibration row means for this localizer's options."""
        if row is None:
            if self.options.estimator == CALIBRATED:
                raise DatabaseError(f"database {self.db.layout.root} has no calibration of its current codebook: "
                                    "run `glueloc calibrate`")
            if self.options.estimator == AUTO:
                logger.info("database not calibrated: ranking candidates by inliers alone (run `glueloc calibrate`)")
            return None
        bearings = row.options.get("bearings")  # absent in calibrations from before resection
        try:
            model = RerankModel.from_json(row.model)
            camera = None if not bearings else BearingsConf(float(bearings["fov"]), str(bearings["axes"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DatabaseError(f"calibration {row.id} cannot be used ({exc}): run `glueloc calibrate` again") from exc
        return CalibrationInUse(row.id, model, calibration_retrieval(row), str(row.options["rule"]),
                                float(row.options["sharpness"]), int(row.options["k"]), camera)

    @property
    def k(self) -> int:
        if self.options.k is not None:
            return self.options.k
        return self.calibration.k if self.calibration is not None else 10

    def locate(self, path: Path) -> Location:
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        image = load_image(path, self.options.max_pixels)
        features = self.extractor.extract(image.rgb)
        timings["extract"] = time.perf_counter() - clock
        return self.locate_features(path.name, features, timings)

    def locate_features(self, name: str, features: Features, timings: dict[str, float] | None = None,
                        exclude: tuple[float, float] | None = None) -> Location:
        """The query path after extraction; ``exclude`` leaves out every database image at
        that position (how ``glueloc calibrate`` holds a capture point out)."""
        return self.locate_with_evidence(name, features, timings, exclude)[0]

    def locate_with_evidence(self, name: str, features: Features, timings: dict[str, float] | None = None,
                             exclude: tuple[float, float] | None = None) -> tuple[Location, list[InlierPoints]]:
        """:meth:`locate_features`, also returning each neighbour's verified correspondences
        (what ``glueloc calibrate`` needs to fit the camera used for resection)."""
        timings = {} if timings is None else timings
        candidates = self.shortlist(features, exclude, timings)

        clock = time.perf_counter()
        neighbours, pairs = self.verify(features, candidates)
        timings["verify"] = time.perf_counter() - clock

        clock = time.perf_counter()
        answer, neighbours, placed = self.decide(neighbours, pairs)
        timings["decide"] = time.perf_counter() - clock
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
        )
        return location, pairs

    def shortlist(self, features: Features, exclude: tuple[float, float] | None = None,
                  timings: dict[str, float] | None = None) -> list[Candidate]:
        """The k candidates to verify, drawn as ``options.retrieval`` says (query.retrieval).

        ``timings`` gets the seconds of the two rankings: ``retrieve`` (global vector) and ``votes``.
        """
        timings = {} if timings is None else timings
        clock = time.perf_counter()
        vector = self.codebook.aggregate(features.descriptors)
        excluded = [] if exclude is None else [i for i, where in self.positions.items() if where == exclude]
        by_vector = self._by_vector(vector, excluded) if self.options.retrieval != VOTES else []
        timings["retrieve"] = time.perf_counter() - clock
        counts: dict[int, int] = {}
        by_votes: list[int] = []
        if self.votes is not None:
            clock = time.perf_counter()
            counts = self.votes.count(features.descriptors, excluded)
            by_votes = ranked(counts)
            if self.options.collapse:
                by_votes = collapse_ranked(np.array(by_votes, dtype=np.int64), self.positions, self.k)
            timings["votes"] = time.perf_counter() - clock
        chosen = interleave([[c.image_id for c in by_vector], by_votes[:self.k]], self.k)
        similarity = {c.image_id: c.similarity for c in by_vector}
        missing = [i for i in chosen if i not in similarity]
        similarity.update(zip(missing, self.index.similarities(missing, vector)))
        return [Candidate(i, similarity[i], counts.get(i, 0)) for i in chosen]

    def _by_vector(self, vector: np.ndarray, excluded: list[int]) -> list[Candidate]:
        positions = self.positions if self.options.collapse else None
        if not excluded:
            return retrieve(self.index, vector, self.k, positions)
        # Fetch past every excluded image, then drop them.
        dropped = set(excluded)
        kept = [c for c in retrieve(self.index, vector, self.k + len(dropped), positions) if c.image_id not in dropped]
        return kept[:self.k]

    def verify(self, features: Features, candidates: list[Candidate]) -> tuple[list[Neighbour], list[InlierPoints]]:
        """Every candidate verified, and the correspondences RANSAC kept for each."""
        db_images = [self.images[c.image_id] for c in candidates]
        db_features = [self.reader.features(i.shard, i.name) for i in db_images]
        checks = verify_candidates(features, db_features, self.matcher, self.options.geometry)
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
        if self._uses_calibration:
            c = self.calibration
            placed = (f" + resection (field of view {c.bearings.fov:g} deg, {c.bearings.axes})"
                      if self._resects else "")
            return f"calibration {c.id} (rule {c.rule}, p^{c.sharpness:g}){placed}"
        if self.options.estimator == AUTO:
            return "estimator best (database not calibrated)"
        return f"estimator {self.options.estimator}"

    @property
    def _uses_calibration(self) -> bool:
        return self.calibration is not None and self.options.estimator in (AUTO, CALIBRATED)

    @property
    def _resects(self) -> bool:
        return self._uses_calibration and self.options.resection and self.calibration.bearings is not None

    @property
    def _estimator(self) -> str:
        """The uncalibrated estimator in use (``auto`` without a calibration means ``best``)."""
        return "best" if self.options.estimator == AUTO else self.options.estimator

    def decide(self, neighbours: list[Neighbour], pairs: list[InlierPoints] | None = None
               ) -> tuple[Estimate | None, list[Neighbour], bool]:
        """Verified neighbours -> position, by the calibration or by the chosen estimator,
        then (calibration with a camera, and ``pairs`` given) resection within the chosen place.

        Also returns the neighbours, carrying their calibrated probabilities and bearings when
        there are some, and whether resection placed the answer.
        """
        if not self._uses_calibration:
            return estimate(neighbours, self._estimator, self.options.min_inliers), neighbours, False
        calibration = self.calibration
        probabilities = calibration.model.probabilities(neighbours)
        neighbours = [replace(n, probability=round(float(p), 4)) for n, p in zip(neighbours, probabilities)]
        answer = estimate_ranked(neighbours, probabilities, calibration.rule, calibration.sharpness,
                                 calibration.model.radius, self.options.min_inliers)
        placed = False
        if answer is not None and pairs is not None and self._resects:
            answer, neighbours, placed = resected(answer, neighbours, pairs, calibration.bearings,
                                                  calibration.model.radius, self.options.min_inliers)
        return answer, neighbours, placed

    def match_picture(self, path: Path, neighbour: Neighbour) -> np.ndarray:
        """The query and one neighbour side by side with their matches (for ``query --viz``)."""
        from glueloc.viz import draw_matches

        db_image = self.images[neighbour.image_id]
        if db_image.path is None or not db_image.path.is_file():
            raise GluelocError(f"{db_image.name}: the database image is no longer at {db_image.path}; cannot draw it")
        query = load_image(path, self.options.max_pixels)
        other = load_image(db_image.path, self.options.max_pixels)
        features = self.extractor.extract(query.rgb)
        db_features = self.reader.features(db_image.shard, db_image.name)
        check = verify_pair(features, db_features, self.matcher, self.options.geometry)
        pairs = check.correspondences
        text = [f"{path.name} | {db_image.name} ({db_image.x:.2f}, {db_image.y:.2f})",
                f"{check.matches} matches, {check.inliers} inliers"]
        return draw_matches(query.rgb, other.rgb, features.keypoints[pairs.indices[:, 0]],
                            db_features.keypoints[pairs.indices[:, 1]], pairs.scores, check.inlier_mask, text)

    def close(self) -> None:
        self.reader.close()
        self.db.close()

    def __enter__(self) -> "Localizer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
