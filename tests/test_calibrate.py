"""glueloc calibrate: leave-one-place-out on the database, stored, and used by queries."""

from __future__ import annotations

from dataclasses import replace

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from glueloc.cli import app
from glueloc.core.errors import GluelocError
from glueloc.synthetic import SyntheticDataset, write_dataset
from glueloc.query.calibrate import (SIGNIFICANCE, STOP_EVIDENCE, CalibrationOptions, HeldOut, better_p, calibrate,
                                     check_early_stop, near_radius, resection_variant, variant)
from glueloc.query.localizer import STOP_ABOVE, STOP_FIRST, Localizer, QueryOptions
from glueloc.query.stopping import StopRule
from glueloc.storage.layout import Layout
from glueloc.storage.models import Calibration
from glueloc.vision.images import load_image
from tests.helpers import run_index, tree_digest

OPTIONS = CalibrationOptions(places=14, shortlists=(3, 4), seed=0)


@pytest.fixture(scope="module")
def wide_scene(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    """14 capture points x 2 views: enough places to hold out and cross-validate."""
    return write_dataset(tmp_path_factory.mktemp("wide"), n_places=14, views_per_place=2, n_queries=3, seed=2)


@pytest.fixture(scope="module")
def wide_index(tmp_path_factory: pytest.TempPathFactory, wide_scene: SyntheticDataset) -> Path:
    db = tmp_path_factory.mktemp("wide-db") / "db"
    run_index(db, wide_scene.labels_csv, wide_scene.images_dir)
    return db


@pytest.fixture()
def wide_db(tmp_path: Path, wide_index: Path) -> Path:
    shutil.copytree(wide_index, tmp_path / "db")
    return tmp_path / "db"


def first_query(scene: SyntheticDataset) -> Path:
    return sorted(scene.queries_dir.glob("*.jpg"))[0]


def calibrations(db: Path) -> int:
    with Localizer(Layout.at(db), QueryOptions(estimator="best")) as localizer, localizer.db.session() as session:
        return session.scalar(select(func.count()).select_from(Calibration))


def test_a_lower_held_out_error_counts_only_beyond_chance() -> None:
    """12 places where one rule wins by luck must not replace most inliers; a consistent
    win over 300 places must; identical answers are no evidence at all."""
    rng = np.random.default_rng(3)
    baseline = rng.exponential(5.0, 12)
    lucky = baseline + rng.normal(0.0, 3.0, 12)
    lucky += baseline.mean() - lucky.mean() - 0.6  # 0.6 lower on average, by noise alone
    assert better_p(lucky, baseline) >= SIGNIFICANCE
    many = rng.exponential(5.0, 300)
    assert better_p(many * 0.9, many) < 0.001
    assert better_p(many * 1.1, many) > 0.99  # worse is not better
    assert better_p(many, many) == 1.0


def test_near_radius_is_the_90th_percentile_of_neighbour_spacing() -> None:
    grid = np.array([(x, y) for x in range(0, 10, 2) for y in range(0, 10, 2)], float)
    assert near_radius(np.repeat(grid, 3, axis=0)) == 2.0  # views sharing a point do not count
    with pytest.raises(GluelocError, match="two capture points"):
        near_radius(np.zeros((4, 2)))


def test_calibration_holds_out_places_fits_and_is_used_by_queries(wide_db: Path, wide_scene: SyntheticDataset) -> None:
    with Localizer(Layout.at(wide_db), QueryOptions(k=OPTIONS.k_max, estimator="best")) as localizer:
        result = calibrate(localizer, OPTIONS)
        positions = set(localizer.positions.values())
    assert result.held_out == 14 and result.calibration_id == 1
    for sample in result.samples:
        # the held-out place itself never appears among its candidates
        assert all((nb.x, nb.y) != (sample.x, sample.y) for nb in sample.neighbours)
        assert len(sample.neighbours) == OPTIONS.k_max and (sample.x, sample.y) in positions
    rules = {"inliers", "copy", "mean-p1", "median-p1", "median-p2", "median-p4", "inliers-mean-2"}
    assert set(result.metrics) == {variant(r, k) for r in rules for k in (3, 4)}
    # The lowest held-out MAE is kept only if it beats the best "most inliers" variant beyond chance.
    lowest = min(result.metrics, key=lambda r: result.metrics[r]["mae"])
    baseline = min((v for v in result.metrics if v.startswith("inliers@")), key=lambda r: result.metrics[r]["mae"])
    assert (result.choice["lowest"], result.choice["baseline"]) == (lowest, baseline)
    assert variant(result.rule, result.k) == (lowest if result.choice["p_value"] < SIGNIFICANCE else baseline)

    # The default estimator (auto); adaptive depth is off by default (tested below).
    with Localizer(Layout.at(wide_db)) as localizer:
        assert localizer.calibration is not None and localizer.k == result.k  # the calibrated shortlist
        location = localizer.locate(first_query(wide_scene))
    probabilities = [nb.probability for nb in location.neighbours]
    assert all(p is not None and 0 <= p <= 1 for p in probabilities)
    # Exactly k verified, unless a verified one was already sure enough (early stop, tested below).
    assert len(location.neighbours) + location.skipped == result.k
    assert location.skipped == 0 or max(probabilities) >= QueryOptions().stop_above
    if result.rule == "copy":
        assert location.confidence == pytest.approx(max(probabilities), abs=1e-3)


def test_adaptive_depth_verifies_further_only_when_the_calibrated_answer_is_unsure(wide_db: Path,
                                                                                    wide_scene: SyntheticDataset) -> None:
    with Localizer(Layout.at(wide_db), QueryOptions(k=OPTIONS.k_max, estimator="best")) as localizer:
        fitted = calibrate(localizer, OPTIONS)
    query = first_query(wide_scene)
    always = QueryOptions(deepen_to=fitted.k + 7, deepen_below=1.01, deepen_seconds=60,
                          stop_above=None)  # never sure enough; every candidate of the k verified
    with Localizer(Layout.at(wide_db), always) as localizer:
        location = localizer.locate(query)
        first_k = [c[0] for c in location.candidates[:fitted.k]]
    # Deepened in steps of 5 up to the cap: k + 7 candidates verified, the first k as without.
    assert location.deepened == 7 and len(location.neighbours) == len(location.candidates) == fitted.k + 7
    assert "deepen" in location.seconds
    with Localizer(Layout.at(wide_db), QueryOptions(deepen_to=fitted.k + 7, deepen_below=0.0,
                                                    stop_above=None)) as localizer:
        sure = localizer.locate(query)  # every answer is "sure" at 0: nothing more is verified
    assert sure.deepened == 0 and len(sure.neighbours) == fitted.k and [c[0] for c in sure.candidates] == first_k
    with Localizer(Layout.at(wide_db), replace(always, estimator="best")) as localizer:
        assert localizer.locate(query).deepened == 0  # uncalibrated: no probability to be unsure of


def test_early_stop_verifies_a_prefix_only_when_a_verified_candidate_is_sure(wide_db: Path,
                                                                             wide_scene: SyntheticDataset) -> None:
    with Localizer(Layout.at(wide_db), QueryOptions(k=OPTIONS.k_max, estimator="best")) as localizer:
        fitted = calibrate(localizer, OPTIONS)
    allow_early_stop(wide_db, True)  # whatever its held-out places said: this tests the mechanism
    query = first_query(wide_scene)
    with Localizer(Layout.at(wide_db), QueryOptions(stop_above=None)) as localizer:
        full = localizer.locate(query)
    assert full.skipped == 0 and len(full.neighbours) == len(full.candidates) == fitted.k
    assert max(n.probability for n in full.neighbours[:1]) > 0  # something to be sure of
    # Any verified candidate is "sure" at 0: the first pair is all that is verified.
    with Localizer(Layout.at(wide_db), QueryOptions(stop_above=0.0, stop_first=1, workers=1)) as localizer:
        early = localizer.locate(query)
    assert len(early.neighbours) == 1 and early.skipped == fitted.k - 1
    assert [c[0] for c in early.candidates] == [c[0] for c in full.candidates]  # the shortlist is still reported
    assert early.neighbours[0].name == full.neighbours[0].name
    assert early.neighbours[0].inliers == full.neighbours[0].inliers
    # Never sure (above 1): the whole shortlist, the same answer as verifying all.
    with Localizer(Layout.at(wide_db), QueryOptions(stop_above=1.01, stop_first=1, workers=2)) as localizer:
        never = localizer.locate(query)
    assert never.skipped == 0 and (never.x, never.y) == (full.x, full.y)
    assert [n.inliers for n in never.neighbours] == [n.inliers for n in full.neighbours]
    # Uncalibrated: no probability to be sure of, so nothing is skipped.
    with Localizer(Layout.at(wide_db), QueryOptions(stop_above=0.0, stop_first=1, estimator="best")) as localizer:
        assert localizer.locate(query).skipped == 0


def allow_early_stop(db: Path, allowed: object) -> None:
    """Overwrite what the calibration row says of early stop (a JSON value)."""
    import sqlite3

    with sqlite3.connect(db / "glueloc.sqlite") as connection:
        connection.execute("update calibrations set options = json_set(options, '$.early_stop.allowed', json(?))",
                           (json.dumps(allowed),))


def test_calibration_replays_early_stop_and_queries_stop_only_where_it_allowed(wide_db: Path,
                                                                                wide_scene: SyntheticDataset) -> None:
    """Early stop trusts the calibrated probability; each calibration replays it on its own
    held-out places, out of fold, and records whether it cost accuracy there."""
    with Localizer(Layout.at(wide_db), QueryOptions(k=OPTIONS.k_max, estimator="best")) as localizer:
        fitted = calibrate(localizer, OPTIONS)
        workers = localizer.threads.workers
    check = fitted.early_stop
    assert check is not None and (check.rule.above, check.rule.first, check.rule.step) == (STOP_ABOVE, STOP_FIRST,
                                                                                            workers)
    assert check.allowed == (check.fired >= STOP_EVIDENCE and check.stopped["mae"] <= check.full["mae"]
                             and check.stopped["gross_failures"] <= check.full["gross_failures"])
    # Verifying all k it is exactly the cross-validation that chose the rule and the camera.
    chosen = (fitted.metrics[variant(fitted.rule, fitted.k)] if fitted.bearings is None
              else fitted.resection[resection_variant(fitted.bearings)])
    assert check.full == chosen
    assert 1 <= check.pairs_mean <= fitted.k
    with Localizer(Layout.at(wide_db), QueryOptions(estimator="best")) as localizer, localizer.db.session() as session:
        recorded = session.scalars(select(Calibration)).one().options["early_stop"]
    assert recorded == check.to_json()
    radius = fitted.model.radius
    replay = (fitted.samples, fitted.k, fitted.rule, radius, fitted.bearings, OPTIONS, 15)
    # Never stopping gives the same answers, and is no evidence that stopping costs nothing.
    never = check_early_stop(*replay, StopRule(None, STOP_FIRST, 2))
    assert never.stopped == never.full == check.full and never.pairs_mean == fitted.k
    assert never.fired == 0 and not never.allowed
    first = check_early_stop(*replay, StopRule(0.0, 1, 1))  # stops at the first verified candidate
    assert first.full == check.full and first.pairs_mean < fitted.k and first.fired >= STOP_EVIDENCE
    assert first.allowed == (first.stopped["mae"] <= first.full["mae"]
                             and first.stopped["gross_failures"] <= first.full["gross_failures"])

    query = first_query(wide_scene)
    eager = QueryOptions(stop_above=0.0, stop_first=1, workers=1)
    allow_early_stop(wide_db, False)
    with Localizer(Layout.at(wide_db), eager) as localizer:
        assert localizer.locate(query).skipped == 0  # not allowed: the whole shortlist is verified
    allow_early_stop(wide_db, True)
    with Localizer(Layout.at(wide_db), eager) as localizer:
        assert localizer.locate(query).skipped == fitted.k - 1
    allow_early_stop(wide_db, "yes")  # a damaged row is one clear error
    with pytest.raises(GluelocError, match="cannot be used"):
        Localizer(Layout.at(wide_db))


def test_uncalibrated_database_ranks_by_inliers_and_calibrated_estimator_is_refused(indexed: Path, scene) -> None:
    with Localizer(Layout.at(indexed)) as localizer:
        assert localizer.calibration is None and localizer.k == 10
        location = localizer.locate(first_query(scene))
    assert all(nb.probability is None for nb in location.neighbours)
    with pytest.raises(GluelocError, match="no calibration of its current codebook"):
        Localizer(Layout.at(indexed), QueryOptions(estimator="calibrated"))


def test_too_few_places_is_a_clear_error_and_writes_nothing(indexed: Path) -> None:
    before = tree_digest(indexed)
    result = CliRunner().invoke(app, ["calibrate", "--db", str(indexed), "--no-progress", "--k", "4"])
    assert result.exit_code != 0
    assert "calibration needs at least 10 capture points; the database has 8" in result.output
    assert tree_digest(indexed) == before


def test_interrupted_calibration_leaves_no_row(wide_db: Path) -> None:
    def interrupt(done: int, total: int) -> None:
        if done == 5:
            raise KeyboardInterrupt

    with Localizer(Layout.at(wide_db), QueryOptions(k=OPTIONS.k_max, estimator="best")) as localizer:
        with pytest.raises(KeyboardInterrupt):
            calibrate(localizer, OPTIONS, progress=interrupt)
    assert calibrations(wide_db) == 0


def test_cli_calibrates_and_a_retrained_codebook_needs_a_new_calibration(wide_db: Path, wide_scene) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["calibrate", "--db", str(wide_db), "--places", "14", "--k", "3", "--k", "4",
                                "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "14 places held out" in result.output and "cross-validated on held-out places" in result.output
    shown = json.loads(runner.invoke(app, ["inspect", "--db", str(wide_db), "--json"]).stdout)
    assert shown["calibration"]["id"] == 1 and shown["calibration"]["held_out"] == 14
    assert shown["calibration"]["k"] in (3, 4) and shown["calibration"]["cross_validated"]["mae"] >= 0
    assert shown["calibration"]["retrieval"] == "fused"
    assert "resection: " in result.output  # the camera chosen for resection, or why none
    assert shown["calibration"]["resection"] is None or set(shown["calibration"]["resection"]) == {"fov", "axes"}
    # Fitted on fused shortlists: a query drawing its shortlist otherwise does not use it ...
    with Localizer(Layout.at(wide_db), QueryOptions(retrieval="vlad")) as localizer:
        assert localizer.calibration is None and localizer.ranked_by == "estimator best (database not calibrated)"
    # ... until a calibration is fitted for that retrieval; the fused queries keep theirs.
    result = runner.invoke(app, ["calibrate", "--db", str(wide_db), "--places", "14", "--k", "3", "--retrieval", "vlad",
                                "--no-progress"])
    assert result.exit_code == 0, result.output
    for retrieval, calibration_id in (("vlad", 2), ("fused", 1)):
        with Localizer(Layout.at(wide_db), QueryOptions(retrieval=retrieval)) as localizer:
            assert localizer.calibration is not None and localizer.calibration.id == calibration_id
            assert localizer.calibration.retrieval == retrieval
    assert runner.invoke(app, ["reindex", "--db", str(wide_db), "--retrain"]).exit_code == 0
    with Localizer(Layout.at(wide_db)) as localizer:
        assert localizer.calibration is None  # its similarities came from the old codebook
    assert calibrations(wide_db) == 2  # kept for the audit trail


def test_a_calibration_recorded_before_votes_counts_as_fitted_on_vlad(wide_db: Path) -> None:
    import sqlite3

    with Localizer(Layout.at(wide_db), QueryOptions(k=OPTIONS.k_max, estimator="best")) as localizer:
        calibrate(localizer, OPTIONS)
    with sqlite3.connect(wide_db / "glueloc.sqlite") as connection:  # what a row of the VLAD-only era holds
        connection.execute("update calibrations set options = json_remove(options, '$.retrieval')")
    with Localizer(Layout.at(wide_db), QueryOptions(retrieval="vlad")) as localizer:
        assert localizer.calibration is not None and localizer.calibration.retrieval == "vlad"
    with Localizer(Layout.at(wide_db)) as localizer:
        assert localizer.calibration is None


def test_calibration_chooses_the_camera_for_resection_on_held_out_places(wide_db: Path, wide_scene) -> None:
    """Every field of view x map axes is cross-validated; one is kept only if it beats the rule
    alone, queries then resect with it (and say so), and --no-resection answers with the rule."""
    from glueloc.query.calibrate import resection_variant
    from glueloc.query.sightings import BearingsConf

    with Localizer(Layout.at(wide_db), QueryOptions(k=OPTIONS.k_max, estimator="best")) as localizer:
        result = calibrate(localizer, OPTIONS)
    assert set(result.resection) == {resection_variant(BearingsConf(float(f), a))
                                     for f in OPTIONS.fovs for a in ("y-up", "y-down")}
    plain = result.metrics[variant(result.rule, result.k)]["mae"]
    best = min(result.resection, key=lambda v: result.resection[v]["mae"])
    if result.bearings is None:
        assert result.resection[best]["mae"] >= plain or result.choice["resection_p_value"] >= SIGNIFICANCE
    else:
        assert resection_variant(result.bearings) == best and result.resection[best]["mae"] < plain
        assert result.choice["resection_p_value"] < SIGNIFICANCE
        # the synthetic room's labels have y up, as on a map; mirrored axes must not be chosen
        assert result.bearings.axes == "y-up"
    query = first_query(wide_scene)
    with Localizer(Layout.at(wide_db)) as localizer:
        assert localizer.calibration.bearings == result.bearings
        resected_location = localizer.locate(query)
    with Localizer(Layout.at(wide_db), QueryOptions(resection=False)) as localizer:
        assert "resection" not in localizer.ranked_by
        plain_location = localizer.locate(query)
    assert all(n.bearing is None for n in plain_location.neighbours) and not plain_location.resected
    if result.bearings is not None:
        assert "resection (field of view" in resected_location.ranked_by
        if resected_location.resected:
            assert sum(n.bearing is not None for n in resected_location.neighbours) >= 3
            # resection searches within the near radius (each coordinate) of the rule's answer
            assert abs(resected_location.x - plain_location.x) <= result.radius + 1e-9
            assert abs(resected_location.y - plain_location.y) <= result.radius + 1e-9


def test_a_calibration_recorded_before_resection_answers_with_its_rule(wide_db: Path) -> None:
    import sqlite3

    with Localizer(Layout.at(wide_db), QueryOptions(k=OPTIONS.k_max, estimator="best")) as localizer:
        calibrate(localizer, OPTIONS)
    with sqlite3.connect(wide_db / "glueloc.sqlite") as connection:
        connection.execute("update calibrations set options = json_remove(options, '$.bearings')")
    with Localizer(Layout.at(wide_db)) as localizer:
        assert localizer.calibration is not None and localizer.calibration.bearings is None
        assert "resection" not in localizer.ranked_by
    for damaged in ('{"fov": 70}', '{"fov": 70, "axes": "sideways"}', '{"fov": 190, "axes": "y-up"}'):
        with sqlite3.connect(wide_db / "glueloc.sqlite") as connection:  # a damaged row is a clear error
            connection.execute("update calibrations set options = json_set(options, '$.bearings', json(?))", (damaged,))
        with pytest.raises(GluelocError, match="cannot be used"):
            Localizer(Layout.at(wide_db))


def one_sided_by_index(folds: int) -> list[np.ndarray]:
    """Labels that dealing by index (place i -> fold i % folds) leaves one-sided: every right
    candidate sits in places 0 and ``folds``, so fold 0's training part has none."""
    labels = [np.array([False, False]) for _ in range(3 * folds)]
    labels[0] = np.array([True, False])
    labels[folds] = np.array([True, True])
    return labels


def test_folds_are_stratified_so_every_training_part_has_right_and_wrong_candidates() -> None:
    from glueloc.query.calibrate import stratified_folds

    labels = one_sided_by_index(5)
    by_index = np.arange(len(labels)) % 5
    assert not np.concatenate([y for y, f in zip(labels, by_index) if f != 0]).any()  # the old failure
    folds = stratified_folds(labels, 5)
    assert set(folds.tolist()) == set(range(5))
    for fold in range(5):
        training = np.concatenate([y for y, f in zip(labels, folds) if f != fold])
        assert training.any() and not training.all()
    assert stratified_folds([np.array([True, False])] * 3, 5).max() == 2  # never more folds than places
    with pytest.raises(GluelocError, match="only 1 held-out place"):
        stratified_folds([np.array([True])] + [np.array([False])] * 9, 5)


def test_calibration_fits_where_dealing_by_index_would_leave_a_fold_one_sided() -> None:
    from glueloc.query.calibrate import _cross_validate
    from glueloc.query.evidence import Neighbour

    rng = np.random.default_rng(0)
    samples = []
    for i, y in enumerate(one_sided_by_index(5)):
        neighbours = [Neighbour(j, f"n{j}", float(i + (0 if right else 9)), 0.0, 0.5, 30, int(rng.integers(5, 40)), 0.5)
                      for j, right in enumerate(y)]
        samples.append(HeldOut(f"q{i}", float(i), 0.0, neighbours, 0.1))
    _, labels, probabilities = _cross_validate(samples, 1.0, CalibrationOptions(), 4)
    assert [p.shape for p in probabilities] == [y.shape for y in labels]


def test_a_keypoint_budget_is_calibrated_recorded_and_matched_by_queries(wide_db: Path, wide_scene) -> None:
    """``calibrate --match-keypoints N``: held-out pairs see the strongest N keypoints of each
    image, the row records N, and calibrated queries match with N (their inlier counts are what
    the model was fitted on); an uncalibrated estimator sees every keypoint; a bad row is an error."""
    import sqlite3

    budget = 40
    result = CliRunner().invoke(app, ["calibrate", "--db", str(wide_db), "--places", "14", "--k", "3", "--k", "4",
                                      "--match-keypoints", str(budget), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"matching the {budget} strongest keypoints" in result.output
    shown = json.loads(CliRunner().invoke(app, ["inspect", "--db", str(wide_db), "--json"]).stdout)
    assert shown["calibration"]["match_keypoints"] == budget
    query = first_query(wide_scene)
    with Localizer(Layout.at(wide_db)) as localizer:
        assert localizer.calibration.keypoints == budget and localizer.match_keypoints == budget
        features = localizer.extractor.extract(load_image(query).rgb)
        assert len(features) > budget  # otherwise the budget would change nothing
        location, pairs = localizer.locate_with_evidence(query.name, features)
        strongest = {tuple(p) for p in features.strongest(budget).keypoints.tolist()}
    assert location.neighbours and all(n.matches <= budget for n in location.neighbours)
    assert all({tuple(p) for p in pair.query.tolist()} <= strongest for pair in pairs)
    with Localizer(Layout.at(wide_db), QueryOptions(estimator="best")) as localizer:
        assert localizer.match_keypoints is None
        everything = localizer.locate(query)
    assert max(n.matches for n in everything.neighbours) > budget  # every keypoint: more matches
    with Localizer(Layout.at(wide_db), QueryOptions(match_keypoints=7)) as localizer:
        assert localizer.match_keypoints == 7  # an explicit budget wins
    with pytest.raises(GluelocError, match="match_keypoints"):
        Localizer(Layout.at(wide_db), QueryOptions(match_keypoints=0))
    with sqlite3.connect(wide_db / "glueloc.sqlite") as connection:
        connection.execute("update calibrations set options = json_set(options, '$.match_keypoints', 0)")
    with pytest.raises(GluelocError, match="cannot be used"):
        Localizer(Layout.at(wide_db))
