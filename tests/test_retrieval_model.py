"""The learned image ranking: the projection learns, its files round-trip, audit, repair, query.

The arithmetic (``vision.projection`` / ``indexer.learn``) is checked on embeddings built
so that the answer is known; the database life of the model (trained by the first index
run, extended by the next, retrained, audited, repaired, refused when damaged) on the
synthetic room with the real EfficientNet-Lite0 embedder.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from glueloc.cli import app
from glueloc.core.errors import DatabaseError, GluelocError
from glueloc.core.places import near_radius
from glueloc.indexer.learn import held_out_places, learn_projection, recall_at
from glueloc.indexer.repair import repair
from glueloc.indexer.train import train
from glueloc.query.localizer import Localizer, QueryOptions
from glueloc.storage.audit import audit
from glueloc.storage.globals import read_cross_fit, read_model, write_model
from glueloc.storage.layout import Layout
from glueloc.synthetic import SyntheticDataset
from glueloc.vision.projection import CrossFit, Projection
from tests.helpers import run_index

pytest.importorskip("torch")


def _places_with_nuisance(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings whose place signal is weak and whose strongest directions are nuisance.

    60 capture points on a line, 4 photos each; every photo's embedding is its place's
    signature (a random walk along the line in 8 directions, so neighbouring places are
    alike) plus a large per-photo nuisance in 24 other directions ("lighting"). A ranking by the raw embedding mostly follows the
    nuisance; one that learned from the positions must find the place directions.
    """
    rng = np.random.default_rng(seed)
    points = np.stack([np.arange(60, dtype=float) * 2.0, np.zeros(60)], 1)
    signature = np.cumsum(rng.normal(size=(60, 8)), axis=0)  # a random walk: neighbours alike, far places not
    xy = np.repeat(points, 4, axis=0)
    place = np.repeat(signature, 4, axis=0) * 0.3
    nuisance = rng.normal(size=(len(xy), 24)) * 1.5
    raw = np.concatenate([place + rng.normal(size=place.shape) * 0.05, nuisance], 1).astype(np.float32)
    return raw, xy


def test_learned_projection_ranks_better_than_untrained_and_random() -> None:
    raw, xy = _places_with_nuisance()
    radius = near_radius(xy)
    learned = learn_projection(raw, xy, radius, {"dim": 8, "triplet_epochs": 3})
    # learned.held_out: fitted without the held-out places, scored on them.
    test = held_out_places(xy, 0.15, 0)
    trained = learned.held_out[learned.chosen]
    untrained = recall_at(raw / np.linalg.norm(raw, axis=1, keepdims=True), xy, test, radius)
    shuffled = recall_at(np.random.default_rng(1).normal(size=(len(raw), 8)).astype(np.float32), xy, test, radius)
    assert trained["R@5"] >= 0.6, learned.held_out
    assert trained["R@5"] > untrained["R@5"] + 0.3, (trained, untrained)
    assert trained["R@5"] > shuffled["R@5"] + 0.3, (trained, shuffled)
    # PCA keeps the strongest directions, here the nuisance: the held-out choice rejects it.
    assert learned.chosen != "pca" and learned.held_out["pca"]["R@5"] < trained["R@5"] - 0.3
    assert set(learned.held_out) == {"pca", "lw", "triplet"}


def test_model_file_round_trips_and_is_named_by_its_content(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    model = Projection("lw", rng.normal(size=6).astype(np.float32), rng.normal(size=(6, 3)).astype(np.float32))
    first = write_model(tmp_path, model, {"dim": 3})
    again = write_model(tmp_path, model, {"dim": 3})
    assert first.filename == again.filename == f"model-{first.sha256[:32]}.h5"
    back = read_model(tmp_path / first.filename)
    assert back.method == "lw" and np.array_equal(back.mean, model.mean) and np.array_equal(back.matrix, model.matrix)
    x = rng.normal(size=(4, 6)).astype(np.float32)
    assert np.allclose(np.linalg.norm(back.project(x), axis=1), 1.0)


def test_a_model_recognises_its_own_training_photos_and_its_folds_do_not() -> None:
    """Why calibration ranks held-out places by the folds: on embeddings that are pure noise
    there is nothing to learn, yet learned whitening fitted on every photo "finds" a near
    photo in the first 5 for most of them — it learned those very pairs. Each fold's
    projection, fitted without the fold, ranks the fold's photos at chance, as a new photo."""
    rng = np.random.default_rng(0)
    points = np.stack(np.meshgrid(np.arange(8.0), np.arange(5.0)), -1).reshape(-1, 2) * 2
    xy = np.repeat(points, 4, axis=0)
    raw = rng.normal(size=(len(xy), 128)).astype(np.float32)
    radius = near_radius(xy)
    learned = learn_projection(raw, xy, radius, {"dim": 64, "methods": ["lw"]})
    folds = learned.cross_fit
    assert folds is not None and len(folds.projections) == 5 and len(folds.points) == 40
    fold = np.array([folds.fold_of(x, y) for x, y in xy])
    assert sorted(np.bincount(fold).tolist()) == [32] * 5  # points, with all their photos, split evenly
    inside = recall_at(learned.projection.project(raw), xy, np.arange(len(xy)), radius)["R@5"]
    cross = np.mean([recall_at(folds.projections[f].project(raw), xy, np.flatnonzero(fold == f), radius)["R@5"]
                     for f in range(5)])
    chance = np.mean([recall_at(rng.normal(size=(len(xy), 64)).astype(np.float32), xy, np.arange(len(xy)), radius)["R@5"]
                      for _ in range(5)])
    assert inside >= 0.8 and cross <= chance + 0.15, (inside, cross, chance)
    assert learn_projection(raw, xy, radius, {"dim": 64, "methods": ["lw"], "cross_fit_folds": 0}).cross_fit is None


@pytest.mark.parametrize("method", ["pca", "lw"])
def test_directions_the_photos_do_not_span_are_dropped_not_left_to_rounding(method: str) -> None:
    """20 photos span 19 directions; asked for 48, a fit must not let rounding pick the rest
    (it did: the demo's calibration changed with a 1e-15 change in a fold's scatter)."""
    from glueloc.vision import projection as proj

    rng = np.random.default_rng(0)
    raw, fresh = rng.normal(size=(20, 64)), rng.normal(size=(30, 64))
    pairs = np.array([(i, (i + 1) % 20) for i in range(20)])
    far = np.array([(i, (i + 7) % 20) for i in range(20)] + [(i, (i + 11) % 20) for i in range(20)])
    conf = {**proj.default_conf, "dim": 48}

    def fit(x: np.ndarray) -> Projection:
        return proj.fit_pca(x, conf) if method == "pca" else proj.fit_learned_whitening(x, pairs, far, conf)

    one, other = fit(raw), fit(raw + rng.normal(size=raw.shape) * 1e-12)
    assert one.dim == 48 and np.count_nonzero(np.abs(one.matrix).sum(0)) <= 19
    similar = [p.project(fresh) @ p.project(raw).T for p in (one, other)]
    assert np.abs(similar[0] - similar[1]).max() < 1e-4


def test_cross_fitted_folds_round_trip_in_the_model_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def projection() -> Projection:
        return Projection("lw", rng.normal(size=6).astype(np.float32), rng.normal(size=(6, 3)).astype(np.float32))

    model = projection()
    folds = CrossFit(np.array([[0.0, 0.0], [1.0, 2.5], [3.0, 1.0]]), np.array([1, 0, 1]), (projection(), projection()))
    plain = write_model(tmp_path, model, {"dim": 3})
    with_folds = write_model(tmp_path, model, {"dim": 3}, folds)
    assert plain.filename != with_folds.filename  # the folds are part of the content
    assert read_cross_fit(tmp_path / plain.filename) is None
    back = read_cross_fit(tmp_path / with_folds.filename)
    assert back is not None and np.array_equal(back.points, folds.points) and np.array_equal(back.fold, folds.fold)
    assert all(np.array_equal(a.matrix, b.matrix) and np.array_equal(a.mean, b.mean)
               for a, b in zip(back.projections, folds.projections))
    assert (back.fold_of(1.0, 2.5), back.fold_of(3.0, 1.0), back.fold_of(9.0, 9.0)) == (0, 1, None)
    with pytest.raises(ValueError, match="inconsistent"):
        CrossFit(folds.points, np.array([0, 1, 2]), folds.projections)  # a fold with no projection


@pytest.fixture(scope="module")
def embedded_scene(tmp_path_factory: pytest.TempPathFactory, scene: SyntheticDataset) -> Path:
    """The scene indexed with SIFT and the default image embedder: codebook and model trained."""
    db = tmp_path_factory.mktemp("embedded") / "db"
    summary = run_index(db, scene.labels_csv, scene.images_dir, batch_size=6, embedder="effnet-lite0-gem")
    assert summary.model_trained is not None and summary.model_note is None
    return db


@pytest.fixture()
def embedded(tmp_path: Path, embedded_scene: Path) -> Path:
    shutil.copytree(embedded_scene, tmp_path / "db")
    return tmp_path / "db"


def _state(db: Path, columns: str) -> tuple:
    with sqlite3.connect(db / "glueloc.sqlite") as connection:
        return connection.execute(f"select {columns} from store_state").fetchone()


def _model_file(db: Path) -> Path:
    with sqlite3.connect(db / "glueloc.sqlite") as connection:
        (name,) = connection.execute("select filename from retrieval_models, store_state "
                                     "where retrieval_models.id = store_state.model_id").fetchone()
    return db / "vectors" / name


def test_first_run_trains_a_model_the_audit_vouches_for(embedded: Path) -> None:
    report = audit(Layout.at(embedded), deep=True)
    assert report.clean, report.findings
    model_id, count = _state(embedded, "model_id, model_faiss_count")
    assert model_id == 1 and count == 24
    with sqlite3.connect(embedded / "glueloc.sqlite") as connection:
        method, held_out, images = connection.execute(
            "select method, held_out, trained_images from retrieval_models").fetchone()
    assert method in ("pca", "lw", "triplet") and images == 24 and method in held_out
    # Reproducible: the unchanged database trains the very same file (so the same row), in
    # another process state than the index run's, and so does the gradient-trained method.
    assert train(Layout.at(embedded)).model_id == 1
    assert train(Layout.at(embedded), {"methods": ["triplet"]}).model_id == train(
        Layout.at(embedded), {"methods": ["triplet"]}).model_id


def test_query_ranks_by_the_image_model_and_finds_the_place(embedded: Path, scene: SyntheticDataset) -> None:
    with Localizer(Layout.at(embedded), QueryOptions(retrieval="image", k=3)) as localizer:
        assert localizer.model is not None
        hits = 0
        for image in list(localizer.images.values())[::3]:
            features, embedding = localizer.stored(image)
            found = localizer.rankings(features, exclude=(image.x, image.y), embedding=embedding, depth=3)
            near = [np.hypot(localizer.images[i].x - image.x, localizer.images[i].y - image.y) for i in found.by_image]
            hits += min(near) <= localizer.model.row.radius
        # 8 held-out photos; a random top 3 of the 21 others finds a near photo far less often.
        assert hits >= 5, hits


def test_incremental_run_embeds_new_images_with_the_model(workdir: Path, scene: SyntheticDataset) -> None:
    db = workdir / "db"
    lines = scene.labels_csv.read_text().splitlines()
    (workdir / "first.csv").write_text("\n".join(lines[:16]) + "\n")
    first = run_index(db, workdir / "first.csv", workdir / "images", batch_size=5, embedder="effnet-lite0-gem")
    assert first.model_trained == 1
    second = run_index(db, workdir / "labels.csv", workdir / "images", batch_size=5, embedder=None)  # the database's
    assert second.added == 9 and second.model_trained is None  # the model is kept and extended
    assert _state(db, "model_id, model_faiss_count") == (1, 24)
    assert audit(Layout.at(db), deep=True).clean  # deep: FAISS = the model's projection of every embedding
    retrained = train(Layout.at(db))
    assert retrained.model_id == 2 and retrained.images == 24


def test_lost_model_faiss_is_rebuilt_and_a_damaged_model_retrained(embedded: Path) -> None:
    (faiss_name,) = _state(embedded, "model_faiss_file")
    (embedded / "vectors" / faiss_name).unlink()
    assert {f.code for f in audit(Layout.at(embedded)).errors} == {"model-faiss-missing"}
    actions = repair(Layout.at(embedded))
    assert any("retrieval model's FAISS index" in a for a in actions), actions
    assert audit(Layout.at(embedded), deep=True).clean

    model = _model_file(embedded)
    model.write_bytes(model.read_bytes()[:100])  # truncated
    assert "model-unreadable" in {f.code for f in audit(Layout.at(embedded)).errors}
    with pytest.raises(DatabaseError, match="retrieval model file .* unreadable.*audit --repair"):
        Localizer(Layout.at(embedded))
    actions = repair(Layout.at(embedded))
    assert any("retrained the retrieval model" in a for a in actions), actions
    assert audit(Layout.at(embedded), deep=True).clean


def test_the_model_keeps_folds_that_calibration_ranks_held_out_places_by(embedded: Path) -> None:
    import h5py

    from glueloc.query.crossfit import CrossFitRanking

    folds = read_cross_fit(_model_file(embedded))
    assert folds is not None and len(folds.projections) == 5
    with Localizer(Layout.at(embedded), QueryOptions(retrieval="image", k=4)) as localizer:
        assert {tuple(p) for p in folds.points.tolist()} == set(localizer.positions.values())
        ranking = CrossFitRanking.of(localizer)
        assert ranking is not None
        image = localizer.images[min(localizer.images)]
        fold = ranking.fold_of(image.x, image.y)
        assert fold is not None
        features, embedding = localizer.stored(image)
        excluded = [i for i, where in localizer.positions.items() if where == (image.x, image.y)]
        # The fold's projection over every other photo, against brute force.
        projection = folds.projections[fold]
        others = [i for i in sorted(localizer.images) if i not in excluded]
        stored = np.stack([localizer.reader.embedding(localizer.images[i].shard, localizer.images[i].name) for i in others])
        sims = projection.project(stored) @ projection.project(embedding)[0]
        assert ranking.ranker(fold)(embedding, excluded).tolist() == [others[j] for j in np.argsort(-sims, kind="stable")]
        # The query path ranks by image with the ranker it is given, not the model's index.
        backwards = lambda _embedding, _excluded: np.array(others[::-1])  # noqa: E731
        found = localizer.rankings(features, (image.x, image.y), embedding=embedding, image_ranker=backwards)
        assert found.by_image == others[::-1][:4]

    with h5py.File(_model_file(embedded), "r+") as handle:  # the folds damaged, the model itself intact
        del handle["cross_fit/matrices"]
        handle["cross_fit"].create_dataset("matrices", data=np.zeros((5, 3, 3), np.float32))
    assert "model-unreadable" in {f.code for f in audit(Layout.at(embedded)).errors}
    with Localizer(Layout.at(embedded)) as localizer, pytest.raises(DatabaseError, match="unreadable.*audit --repair"):
        CrossFitRanking.of(localizer)
    assert any("retrained the retrieval model" in a for a in repair(Layout.at(embedded)))
    assert audit(Layout.at(embedded), deep=True).clean


def test_damaged_model_file_is_one_clear_error_on_the_command_line(embedded: Path, scene: SyntheticDataset) -> None:
    model = _model_file(embedded)
    model.write_bytes(b"not an hdf5 file")
    query = sorted(scene.queries_dir.iterdir())[0]
    result = CliRunner().invoke(app, ["query", str(query), "--db", str(embedded)])
    assert result.exit_code == DatabaseError.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: retrieval model file") and "Traceback" not in result.output


def test_a_database_without_embeddings_still_answers(indexed: Path, scene: SyntheticDataset) -> None:
    query = sorted(scene.queries_dir.iterdir())[0]
    with Localizer(Layout.at(indexed)) as localizer:
        assert localizer.model is None and localizer.embedder is None
        assert localizer.locate(query).x is not None
    with pytest.raises(GluelocError, match="has no retrieval model .*without image embeddings"):
        Localizer(Layout.at(indexed), QueryOptions(retrieval="image"))
    with pytest.raises(DatabaseError, match="without image embeddings"):
        train(Layout.at(indexed))


def test_a_new_model_needs_a_new_calibration(embedded: Path) -> None:
    """A calibration's probabilities rest on the shortlists it saw, which the model shapes."""
    from glueloc.query.snapshot import open_snapshot
    from glueloc.storage.database import open_database
    from glueloc.storage.models import Calibration

    db = open_database(Layout.at(embedded))
    try:
        with db.session() as session, session.begin():
            session.add(Calibration(kind="rerank:1", model={}, options={"retrieval": "fused"}, metrics={}, held_out=8,
                                    images=24, codebook_id=1, model_id=1, glueloc_version="test"))
        assert open_snapshot(db, "fused").calibration is not None
        retrained = train(Layout.at(embedded), {"dim": 8})  # another size: another file, another model
        assert retrained.model_id == 2
        snapshot = open_snapshot(db, "fused")
        assert snapshot.model is not None and snapshot.model.row.id == 2 and snapshot.calibration is None
    finally:
        db.close()


def test_a_run_stopped_before_the_model_leaves_it_to_the_next_run(workdir: Path) -> None:
    """As if the first run were killed between the codebook's commit and the model's."""
    db = workdir / "db"
    first = run_index(db, workdir / "labels.csv", workdir / "images", embedder="effnet-lite0-gem", train_model=False)
    assert first.codebook_trained == 1 and first.model_trained is None
    assert _state(db, "model_id, model_faiss_file") == (None, None)
    assert audit(Layout.at(db), deep=True).clean  # no model yet is a consistent state
    with Localizer(Layout.at(db)) as localizer:
        assert localizer.model is None  # answers from VLAD and votes meanwhile
    again = run_index(db, workdir / "labels.csv", workdir / "images", embedder=None)
    assert again.skipped == 24 and again.model_trained == 1
    assert audit(Layout.at(db), deep=True).clean


@pytest.mark.parametrize("command", ["train", "reindex"])
def test_a_missing_database_is_one_error_line(tmp_path: Path, command: str) -> None:
    result = CliRunner().invoke(app, [command, "--db", str(tmp_path / "nothing-here")])
    assert result.exit_code == DatabaseError.exit_code
    assert result.output.strip() == f"error: no glueloc database at {tmp_path / 'nothing-here'} (run `glueloc index` to create one)"
    assert not (tmp_path / "nothing-here").exists()
