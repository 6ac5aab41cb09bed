"""The derived stores that persist and grow: vote segments (storage.vote_segments) and FAISS merges
(storage.pending) — written at index time, merged not rewritten, audited, repaired, and read
from one snapshot while a writer changes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from glueloc.indexer import pipeline, vote_index
from glueloc.indexer.repair import repair
from glueloc.query.localizer import Localizer, QueryOptions
from glueloc.storage.vote_segments import add_descriptors
from glueloc.query.votes import DescriptorVotes, in_memory, ranked
from glueloc.storage.audit import audit
from glueloc.storage.features import FeatureReader
from glueloc.storage.layout import Layout
from glueloc.storage.vectors import VectorIndex
from glueloc.storage.vote_segments import cells_for, codec_conf, outgrown, read_codec
from tests.helpers import run_index, sql
from tests.test_index import rows_of, table, write_rows

pytestmark = pytest.mark.both_catalogues


def codes(db: Path, deep: bool = False) -> set[str]:
    return {f.code for f in audit(Layout.at(db), deep=deep).errors}


def segments(db: Path) -> list[tuple[str, int, int]]:
    return table(db, "select filename, num_images, num_descriptors from vote_segments order by id")


def first_rows(workdir: Path, n: int) -> Path:
    header, *rows = rows_of(workdir / "labels.csv")
    return write_rows(workdir / f"first{n}.csv", [header, *rows[:n]])


def test_every_image_is_in_one_segment_and_small_segments_are_merged(workdir: Path, new_db: Path) -> None:
    db = new_db
    run_index(db, first_rows(workdir, 8), workdir / "images", batch_size=4)
    assert len(segments(db)) == 1  # the first run encodes every image once its codec is trained
    # 16 more images in batches of one: one segment per batch, merged FANOUT at a time.
    summary = run_index(db, workdir / "labels.csv", workdir / "images", batch_size=1)
    assert summary.added == 16
    rows = segments(db)
    assert len(rows) < 1 + 16 / (vote_index.FANOUT - 1)
    assert sum(n for _, n, _ in rows) == 24
    assert table(db, "select count(*) from images where vote_segment_id is null") == [(0,)]
    assert audit(Layout.at(db), deep=True).clean
    files = {p.name for p in (db / "vectors").glob("votes-*")}
    assert files == {name for name, _, _ in rows}  # merged segments' files are gone


def test_votes_from_segments_equal_votes_from_one_index_of_the_same_codes(workdir: Path, new_db: Path) -> None:
    db = new_db
    run_index(db, first_rows(workdir, 8), workdir / "images", batch_size=4)
    run_index(db, workdir / "labels.csv", workdir / "images", batch_size=3)
    assert len(segments(db)) > 1
    with Localizer(Layout.at(db), QueryOptions(k=4, estimator="best", retrieval="votes")) as localizer:
        assert localizer.votes is not None and len(localizer.votes.parts) == len(segments(db))
        codec_file = table(db, "select filename from vote_codecs")[0][0]
        whole = in_memory(read_codec(db / "vectors" / codec_file), np.zeros((1, 1)))
        add_descriptors(whole, [(i.id, localizer.reader.descriptors(i.shard, i.name)) for i in localizer.images.values()])
        one = DescriptorVotes([whole])
        for image in list(localizer.images.values())[:5]:
            query = localizer.reader.descriptors(image.shard, image.name)
            split, whole_counts = localizer.votes.count(query), one.count(query)
            # Equal up to ties: 8-bit codes make equal similarities common, and which of two
            # tied neighbours makes the k-th slot depends on the order they are met in.
            moved = sum(abs(split.get(i, 0) - whole_counts.get(i, 0)) for i in set(split) | set(whole_counts))
            assert moved <= 0.01 * sum(whole_counts.values())
            assert ranked(split)[0] == ranked(whole_counts)[0] == image.id


def test_audit_finds_missing_truncated_and_changed_segments_and_repair_rebuilds(indexed: Path) -> None:
    assert audit(Layout.at(indexed), deep=True).clean
    (name, _, _), = segments(indexed)[:1]
    path = indexed / "vectors" / name
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 2])
    assert "vote-segment-truncated" in codes(indexed)
    with pytest.raises(Exception, match="run `glueloc audit --repair`"):
        Localizer(Layout.at(indexed), QueryOptions(k=4, estimator="best"))  # refused, not a SIGBUS
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # same size, other bytes
    assert codes(indexed) == set() and "vote-segment-changed" in codes(indexed, deep=True)
    path.unlink()
    assert "vote-segment-missing" in codes(indexed)
    actions = repair(Layout.at(indexed))
    assert any("vote segments" in action for action in actions)
    assert audit(Layout.at(indexed), deep=True).clean


def test_a_lost_codec_is_retrained_and_every_image_re_encoded(indexed: Path) -> None:
    codec_file = table(indexed, "select filename from vote_codecs")[0][0]
    (indexed / "vectors" / codec_file).unlink()
    assert "vote-codec-missing" in codes(indexed)
    actions = repair(Layout.at(indexed))
    assert any("trained vote codec" in action for action in actions)
    assert audit(Layout.at(indexed), deep=True).clean
    assert table(indexed, "select count(*) from images where vote_segment_id is null") == [(0,)]


def test_a_database_without_a_codec_answers_and_the_next_writer_builds_it(indexed: Path) -> None:
    """What a database migrated from revision 0004 looks like: no codec, no segments."""
    with Localizer(Layout.at(indexed), QueryOptions(k=4, estimator="best")) as localizer:
        image = localizer.images[min(localizer.images)]
        features = localizer.reader.features(image.shard, image.name)
        persisted = [c.image_id for c in localizer.shortlist(features)]
    sql(indexed, "update images set vote_segment_id = null")
    sql(indexed, "update store_state set vote_codec_id = null")
    sql(indexed, "delete from vote_segments")
    report = audit(Layout.at(indexed))
    assert report.clean and "votes-pending" in {f.code for f in report.findings}
    with Localizer(Layout.at(indexed), QueryOptions(k=4, estimator="best")) as localizer:
        assert localizer.votes is not None and localizer.votes.descriptors > 0  # indexed in memory
        assert image.id in [c.image_id for c in localizer.shortlist(features)] and image.id in persisted
    repair(Layout.at(indexed))
    assert audit(Layout.at(indexed), deep=True).clean and len(segments(indexed)) >= 1


def test_a_query_opened_before_a_run_answers_from_its_snapshot(workdir: Path, new_db: Path) -> None:
    """Merges delete segment files a query has mapped: the mapping stays readable, and the
    query keeps answering from the images it opened with."""
    db = new_db
    run_index(db, first_rows(workdir, 8), workdir / "images", batch_size=4)
    with Localizer(Layout.at(db), QueryOptions(k=4, estimator="best")) as localizer:
        before = set(localizer.images)
        image = localizer.images[min(localizer.images)]
        features = localizer.reader.features(image.shard, image.name)
        expected = localizer.votes.count(features.descriptors)  # type: ignore[union-attr]
        run_index(db, workdir / "labels.csv", workdir / "images", batch_size=1)
        mapped = {p.name for p in (db / "vectors").glob("votes-*")}
        assert len(segments(db)) >= 1 and len(before) == 8
        assert localizer.votes.count(features.descriptors) == expected  # type: ignore[union-attr]
        assert {c.image_id for c in localizer.shortlist(features)} <= before
    with Localizer(Layout.at(db), QueryOptions(k=4, estimator="best")) as fresh:
        assert len(fresh.images) == 24 and mapped == {name for name, _, _ in segments(db)}


def test_faiss_is_merged_not_rewritten_per_batch(workdir: Path, monkeypatch: pytest.MonkeyPatch, new_db: Path) -> None:
    db = new_db
    run_index(db, first_rows(workdir, 8), workdir / "images", batch_size=4)
    saved: list[int] = []
    real = VectorIndex.save_new

    def counting(self: VectorIndex, vectors_dir: Path) -> str:
        saved.append(self.count)
        return real(self, vectors_dir)

    monkeypatch.setattr(VectorIndex, "save_new", counting)
    run_index(db, workdir / "labels.csv", workdir / "images", batch_size=1)  # 16 batches
    assert saved == [24]  # one merge at the end of the run, not one file per batch
    assert audit(Layout.at(db), deep=True).clean


def test_vectors_committed_but_not_merged_are_read_from_their_shards(workdir: Path,
                                                                      monkeypatch: pytest.MonkeyPatch, new_db: Path) -> None:
    """A run killed after some batches and before its merge: queries see every committed image."""
    db = new_db
    run_index(db, first_rows(workdir, 8), workdir / "images", batch_size=4)

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.IndexRunner, "_merge_faiss", killed)
    with pytest.raises(KeyboardInterrupt):
        run_index(db, workdir / "labels.csv", workdir / "images", batch_size=4)
    monkeypatch.undo()
    assert table(db, "select count(*) from images") == [(24,)]
    assert table(db, "select faiss_count from store_state") == [(8,)]
    report = audit(Layout.at(db), deep=True)
    assert report.clean and "faiss-pending" in {f.code for f in report.findings}
    with Localizer(Layout.at(db), QueryOptions(k=4, estimator="best", retrieval="vlad")) as localizer:
        assert localizer.index.count == 24
        image = localizer.images[max(localizer.images)]
        features = localizer.reader.features(image.shard, image.name)
        assert localizer.shortlist(features)[0].image_id == image.id  # a pending image finds itself
    run_index(db, workdir / "labels.csv", workdir / "images", batch_size=4)  # the next run merges
    assert table(db, "select faiss_count from store_state") == [(24,)]
    report = audit(Layout.at(db), deep=True)
    assert report.clean and "faiss-pending" not in {f.code for f in report.findings}


def test_cells_grow_with_the_database() -> None:
    conf = codec_conf()
    assert cells_for(10_000, conf) == conf["min_cells"]
    assert cells_for(4_600_000, conf) == 4096  # Getty: 4500 photos of ~1024 descriptors
    assert cells_for(10**10, conf) == conf["max_cells"]
    assert not outgrown(4096, 4_600_000, 4_600_000 * 3, conf)
    assert outgrown(4096, 4_600_000, 4_600_000 * 5, conf)
    with pytest.raises(ValueError, match="unknown vote code"):
        codec_conf({"code": "pq3"})


def test_segment_reader_stays_within_the_shards(indexed: Path) -> None:
    """Every descriptor the segments hold belongs to an image of the catalogue, once."""
    with Localizer(Layout.at(indexed), QueryOptions(k=4, estimator="best")) as localizer, \
            FeatureReader(indexed / "features") as reader:
        total = sum(len(reader.descriptors(i.shard, i.name)) for i in localizer.images.values())
        assert localizer.votes is not None and localizer.votes.descriptors == total


def test_the_feature_reader_keeps_few_files_open(indexed: Path) -> None:
    shards = [name for (name,) in table(indexed, "select filename from feature_shards order by id")]
    images = table(indexed, "select images.name, feature_shards.filename from images join feature_shards "
                   "on images.shard_id = feature_shards.id order by images.id")
    assert len(shards) >= 3
    with FeatureReader(indexed / "features", max_open=2) as reader:
        for name, shard in images + images[:3]:
            assert len(reader.descriptors(shard, name)) > 0
            assert reader.open_files <= 2


def test_inspect_shows_the_vote_index(indexed: Path) -> None:
    from glueloc.storage import inspect as inspect_db
    from glueloc.storage.database import open_database

    database = open_database(Layout.at(indexed))
    try:
        summary = inspect_db.summary(database)
        record = inspect_db.image_record(database, table(indexed, "select name from images limit 1")[0][0])
    finally:
        database.close()
    votes = summary["vote_index"]
    assert votes["codec"]["cells"] == table(indexed, "select cells from vote_codecs")[0][0]
    assert votes["segments"] == len(segments(indexed))
    assert votes["descriptors"] == table(indexed, "select sum(num_keypoints) from images")[0][0]
    assert record["vote_segment"] in {name for name, _, _ in segments(indexed)}


def test_a_re_extracted_shard_has_its_descriptors_encoded_again(indexed: Path) -> None:
    shard = table(indexed, "select filename from feature_shards order by id limit 1")[0][0]
    path = indexed / "features" / shard
    path.write_bytes(path.read_bytes()[:300])
    actions = repair(Layout.at(indexed))
    assert any("re-extracted" in action and "vote segments" in action for action in actions), actions
    assert audit(Layout.at(indexed), deep=True).clean
    assert table(indexed, "select count(*) from images where vote_segment_id is null") == [(0,)]
