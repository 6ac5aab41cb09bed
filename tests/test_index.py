"""Incremental indexing: what is added, skipped, refused, and that the stores agree after each run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from glueloc.core.errors import DatabaseError, GluelocError
from glueloc.storage.audit import audit
from glueloc.storage.database import open_database
from glueloc.storage.features import FeatureReader
from glueloc.storage.layout import Layout
from glueloc.storage.lock import WriterLock
from tests.helpers import run_index, sql, tree_digest

pytestmark = pytest.mark.both_catalogues


def rows_of(labels: Path) -> list[list[str]]:
    with open(labels, newline="") as handle:
        return list(csv.reader(handle))


def write_rows(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def table(db: Path, statement: str) -> list[tuple]:
    return sql(db, statement)


def test_index_then_rerun_skips_everything(workdir: Path, new_db: Path) -> None:
    db = new_db
    first = run_index(db, workdir / "labels.csv", workdir / "images", batch_size=5)
    assert (first.added, first.skipped, first.rejected) == (24, 0, 0)
    assert first.outcome == "completed"
    assert audit(Layout.at(db), deep=True).clean
    before = tree_digest(db / "features") | tree_digest(db / "vectors")
    second = run_index(db, workdir / "labels.csv", workdir / "images", batch_size=5)
    assert (second.added, second.skipped, second.rejected) == (0, 24, 0)
    assert tree_digest(db / "features") | tree_digest(db / "vectors") == before
    runs = table(db, "select id, outcome, added, skipped from index_runs order by id")
    assert runs == [(1, "completed", 24, 0), (2, "completed", 0, 24)]


def test_incremental_growth_reuses_the_database(workdir: Path, new_db: Path) -> None:
    db = new_db
    header, *rows = rows_of(workdir / "labels.csv")
    write_rows(workdir / "half.csv", [header, *rows[:10]])
    assert run_index(db, workdir / "half.csv", workdir / "images", batch_size=4).added == 10
    summary = run_index(db, workdir / "labels.csv", workdir / "images", batch_size=4)
    assert (summary.added, summary.skipped) == (14, 10)
    report = audit(Layout.at(db), deep=True)
    assert report.clean and report.images == 24 and report.vectors == 24
    names = [r[0] for r in table(db, "select name from images")]
    assert sorted(names) == sorted(r[0] for r in rows)


def test_stored_features_follow_hloc_layout(workdir: Path, indexed: Path) -> None:
    db = indexed
    import h5py

    (shard,) = table(db, "select filename from feature_shards limit 1")[0:1]
    with h5py.File(db / "features" / shard[0], "r") as handle:
        name = next(iter(handle))
        group = handle[name]
        n = group["keypoints"].shape[0]
        assert group["keypoints"].shape == (n, 2) and group["keypoints"].dtype == np.float32
        assert group["descriptors"].shape == (128, n)  # hloc stores (D, N)
        assert group["scores"].shape == (n,)
        assert tuple(group["image_size"][()]) == (320, 240)
        assert "global_descriptor" not in group  # global vectors live in vector shards
        assert n > 50
    (vector_file, dim) = table(db, "select vector_shards.filename, codebooks.dim from vector_shards join codebooks "
                                   "on vector_shards.codebook_id = codebooks.id limit 1")[0]
    with h5py.File(db / "vectors" / vector_file, "r") as handle:
        vector = handle[next(iter(handle))]["global_descriptor"][()]
        assert vector.shape == (dim,) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4


def test_changed_coordinates_are_refused_unless_asked_and_recorded(workdir: Path, indexed: Path) -> None:
    db = indexed
    header, *rows = rows_of(workdir / "labels.csv")
    rows[0][1] = str(float(rows[0][1]) + 1.0)
    moved = write_rows(workdir / "moved.csv", [header, *rows])
    refused = run_index(db, moved, workdir / "images")
    assert refused.rejected == 1 and "pass --update-coordinates" in refused.rejections[0][1]
    assert table(db, f"select x from images where name = '{rows[0][0]}'")[0][0] != float(rows[0][1])
    accepted = run_index(db, moved, workdir / "images", update_coordinates=True)
    assert (accepted.updated, accepted.rejected) == (1, 0)
    assert table(db, f"select x from images where name = '{rows[0][0]}'")[0][0] == float(rows[0][1])
    changes = table(db, "select old_x, new_x, run_id from coordinate_changes")
    assert changes == [(float(rows[0][1]) - 1.0, float(rows[0][1]), 3)]
    assert audit(Layout.at(db)).clean


def test_changed_content_is_refused(workdir: Path, indexed: Path) -> None:
    db = indexed
    header, first, *_ = rows_of(workdir / "labels.csv")
    victim = workdir / "images" / first[0]
    victim.write_bytes(victim.read_bytes() + b"\x00")
    summary = run_index(db, workdir / "labels.csv", workdir / "images")
    assert summary.rejected == 1 and "content changed" in summary.rejections[0][1]
    assert audit(Layout.at(db)).clean


BAD_FILES = {
    "zero.jpg": b"",
    "garbage.jpg": b"GIF89a but not really" * 20,
    "text.png": b"hello, world\n" * 50,
}


@pytest.mark.parametrize("bad", [*BAD_FILES, "truncated.jpg", "missing.jpg", "bomb.png"])
def test_bad_images_are_rejected_and_stores_unchanged(workdir: Path, indexed: Path, bad: str) -> None:
    db = indexed
    stores = tree_digest(db / "features") | tree_digest(db / "vectors")
    images_before = table(db, "select * from images")
    path = workdir / "images" / bad
    if bad in BAD_FILES:
        path.write_bytes(BAD_FILES[bad])
    elif bad == "truncated.jpg":
        source = next((workdir / "images").glob("*.jpg")).read_bytes()
        path.write_bytes(source[: len(source) // 3])
    elif bad == "bomb.png":
        from tests.test_images import png_with_declared_size

        path.write_bytes(png_with_declared_size(100_000, 100_000))
    labels = write_rows(workdir / "bad.csv", [["name", "x", "y"], [bad, "1", "2"]])
    summary = run_index(db, labels, workdir / "images")
    assert (summary.added, summary.rejected) == (0, 1)
    assert summary.rejections[0][1].startswith(bad + ":")
    assert tree_digest(db / "features") | tree_digest(db / "vectors") == stores
    assert table(db, "select * from images") == images_before
    assert table(db, "select name from rejections") == [(bad,)]
    assert audit(Layout.at(db)).clean


def test_good_rows_land_beside_bad_ones(workdir: Path, new_db: Path) -> None:
    db = new_db
    (workdir / "images" / "zero.jpg").write_bytes(b"")
    header, *rows = rows_of(workdir / "labels.csv")
    labels = write_rows(workdir / "mixed.csv", [header, *rows[:5], ["zero.jpg", "0", "0"], *rows[5:8]])
    summary = run_index(db, labels, workdir / "images", batch_size=3)
    assert (summary.added, summary.rejected, summary.outcome) == (8, 1, "completed_with_rejections")
    assert audit(Layout.at(db), deep=True).clean


def test_refused_csv_leaves_database_byte_identical(workdir: Path, indexed: Path) -> None:
    db = indexed
    before = tree_digest(db)
    header, *rows = rows_of(workdir / "labels.csv")
    for bad_rows in ([[rows[0][0], "nan", "1"]], [["../escape.jpg", "1", "1"]], [rows[0], rows[0]]):
        labels = write_rows(workdir / "bad.csv", [header, *bad_rows])
        with pytest.raises(GluelocError):
            run_index(db, labels, workdir / "images")
    assert tree_digest(db) == before


def test_mixing_extractors_is_refused(workdir: Path, indexed: Path) -> None:
    db = indexed
    with pytest.raises(DatabaseError, match="refusing to add"):
        run_index(db, workdir / "labels.csv", workdir / "images", extractor_conf={"max_side": 320})


def test_second_writer_is_refused(workdir: Path, indexed: Path) -> None:
    db = indexed
    with WriterLock(Layout.at(db)):
        with pytest.raises(DatabaseError, match="is being written by pid"):
            run_index(db, workdir / "labels.csv", workdir / "images")


def test_reader_sees_the_features_that_were_written(workdir: Path, indexed: Path) -> None:
    db = indexed
    from glueloc.vision.extractors import load_extractor
    from glueloc.vision.images import load_image

    database = open_database(Layout.at(db))
    name, filename = table(db, "select images.name, feature_shards.filename from images join feature_shards "
                               "on images.shard_id = feature_shards.id limit 1")[0]
    with FeatureReader(database.layout.features_dir) as reader:
        stored = reader.features(filename, name)
    fresh = load_extractor("sift").extract(load_image(workdir / "images" / name).rgb)
    np.testing.assert_allclose(stored.keypoints, fresh.keypoints)
    np.testing.assert_allclose(stored.descriptors, fresh.descriptors, atol=2e-3)  # float16 storage
    database.close()


def test_first_run_trains_codebook_and_later_runs_reuse_it(workdir: Path, new_db: Path) -> None:
    db = new_db
    header, *rows = rows_of(workdir / "labels.csv")
    write_rows(workdir / "half.csv", [header, *rows[:12]])
    first = run_index(db, workdir / "half.csv", workdir / "images", batch_size=4, vlad_conf={"num_clusters": 16})
    assert first.codebook_trained == 1
    second = run_index(db, workdir / "labels.csv", workdir / "images", batch_size=4)
    assert second.codebook_trained is None and second.added == 12
    assert table(db, "select count(*), min(codebook_id), max(codebook_id) from vector_shards") [0][1:] == (1, 1)
    assert table(db, "select num_clusters, trained_images from codebooks") == [(16, 12)]
    assert audit(Layout.at(db), deep=True).clean
    with pytest.raises(DatabaseError, match="reindex --retrain"):
        run_index(db, workdir / "labels.csv", workdir / "images", vlad_conf={"num_clusters": 8})


def test_reindex_retrain_replaces_every_vector(indexed: Path) -> None:
    from glueloc.indexer.reindex import reindex

    old_vectors = set(r[0] for r in table(indexed, "select filename from vector_shards"))
    result = reindex(Layout.at(indexed), retrain=True, conf_overrides={"num_clusters": 8, "pca_dim": 0})
    assert result.trained and result.codebook_id == 2 and result.dim == 8 * 128 and result.images == 24
    assert table(indexed, "select distinct codebook_id from vector_shards") == [(2,)]
    assert not old_vectors & {p.name for p in (indexed / "vectors").iterdir()}  # old shards deleted
    assert table(indexed, "select count(*) from codebooks") == [(2,)]  # history kept
    report = audit(Layout.at(indexed), deep=True)
    assert report.clean and report.vectors == 24, [f.message for f in report.findings]
    assert table(indexed, "select command, outcome from index_runs order by id desc limit 1") == [("reindex", "completed")]


def test_database_from_revision_0001_is_completed_by_the_next_run(workdir: Path, indexed: Path) -> None:
    """A database whose images have no vectors of any codebook (as after upgrading from 0001)."""
    sql(indexed, "update images set vector_shard_id = null")
    sql(indexed, "delete from vector_shards")
    sql(indexed, "update store_state set codebook_id = null, faiss_file = null, faiss_count = 0")
    report = audit(Layout.at(indexed))
    assert report.clean and "vectors-pending" in {f.code for f in report.findings}
    summary = run_index(indexed, workdir / "labels.csv", workdir / "images")
    assert summary.skipped == 24 and summary.codebook_trained == 2
    assert audit(Layout.at(indexed), deep=True).clean


def test_a_rerun_trusts_unchanged_size_and_mtime_and_rehash_reads_again(workdir: Path, indexed: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from glueloc.indexer import pipeline as pipeline_module

    hashed: list[Path] = []
    real = pipeline_module.sha256_file
    monkeypatch.setattr(pipeline_module, "sha256_file", lambda path: hashed.append(path) or real(path))
    assert run_index(indexed, workdir / "labels.csv", workdir / "images").skipped == 24
    assert hashed == []  # every file's size and mtime are those recorded: none is read
    # Same size and mtime, other bytes (what the fast path cannot see): only --rehash finds it.
    header, first, *_ = rows_of(workdir / "labels.csv")
    victim = workdir / "images" / first[0]
    status = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert run_index(indexed, workdir / "labels.csv", workdir / "images").rejected == 0
    summary = run_index(indexed, workdir / "labels.csv", workdir / "images", rehash=True)
    assert summary.rejected == 1 and "content changed" in summary.rejections[0][1] and len(hashed) == 24
    # A file touched but unchanged is hashed once, then trusted again.
    hashed.clear()
    second = workdir / "images" / rows_of(workdir / "labels.csv")[2][0]
    os.utime(second)
    run_index(indexed, workdir / "labels.csv", workdir / "images")
    run_index(indexed, workdir / "labels.csv", workdir / "images")
    assert hashed == [second]
