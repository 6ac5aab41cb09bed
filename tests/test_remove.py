"""Retiring images (indexer.remove): gone from the catalogue, FAISS and queries, audit clean, crash-safe.

The indexed room holds 24 images, 3 views per capture point, in 5 feature shards of
5 images (the last of 4) in CSV order, and one vector shard (the first run trains the
codebook and publishes every vector at once).
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from glueloc.core.errors import GluelocError, StorageWriteError
from glueloc.core.labels import LabelsError
from glueloc.indexer import remove as remove_module
from glueloc.indexer.remove import RemoveSummary, read_names, remove_images
from glueloc.storage.audit import audit
from glueloc.storage.database import open_database
from glueloc.storage.inspect import image_record, summary
from glueloc.storage.layout import Layout
from glueloc.storage.vectors import VectorIndex
from tests.helpers import run_index, tree_digest

PLACE0 = ["place000_0.jpg", "place000_1.jpg", "place000_2.jpg"]  # 3 of the first shard's 5
FIRST_SHARD = [*PLACE0, "place001_0.jpg", "place001_1.jpg"]


def table(db: Path, sql: str, *params: object) -> list[tuple]:
    with sqlite3.connect(db / "glueloc.sqlite") as connection:
        return connection.execute(sql, params).fetchall()


def names(db: Path) -> set[str]:
    return {row[0] for row in table(db, "select name from images")}


def remove(db: Path, *wanted: str) -> RemoveSummary:
    return remove_images(Layout.at(db), list(wanted), {"test": True})


def assert_spotless(db: Path, images: int) -> None:
    """Deep audit with no finding at all (not even a note): nothing left over, nothing orphaned."""
    report = audit(Layout.at(db), deep=True)
    assert report.clean and not report.findings, [f.message for f in report.findings]
    assert report.images == images and report.vectors == images


def committed_digest(db: Path) -> dict[str, str]:
    """The catalogue and every file it references: what a crash must not change."""
    referenced = {f"features/{r[0]}" for r in table(db, "select filename from feature_shards")}
    referenced |= {f"vectors/{r[0]}" for r in table(db, "select filename from vector_shards union "
                                                         "select filename from codebooks union "
                                                         "select faiss_file from store_state")}
    return {path: sha for path, sha in tree_digest(db).items() if path == "glueloc.sqlite" or path in referenced}


def test_removed_names_leave_catalogue_faiss_and_queries(workdir: Path, indexed: Path) -> None:
    from glueloc.query.localizer import Localizer

    query = workdir / "images" / PLACE0[0]  # the removed photo itself: before, it finds itself
    with Localizer(Layout.at(indexed)) as localizer:
        before = localizer.locate(query)
    assert before.candidates[0][0] == PLACE0[0]
    old_faiss = table(indexed, "select faiss_file from store_state")[0][0]

    result = remove(indexed, *PLACE0)
    assert (result.removed, result.not_found, result.shards_collected, result.vector_shards_collected) == (3, [], 0, 0)
    assert result.seconds > 0
    assert names(indexed).isdisjoint(PLACE0) and len(names(indexed)) == 21
    assert table(indexed, "select faiss_file, faiss_count from store_state") == [(result.faiss_file, 21)]
    assert result.faiss_file != old_faiss and not (indexed / "vectors" / old_faiss).exists()
    removed_ids = {row[0] for row in table(indexed, "select id from images")} ^ set(range(1, 25))
    assert not removed_ids & set(VectorIndex.load(indexed / "vectors" / result.faiss_file).ids().tolist())
    assert_spotless(indexed, 21)

    with Localizer(Layout.at(indexed)) as localizer:
        assert {image.name for image in localizer.images.values()} == names(indexed)
        after = localizer.locate(query)
    seen = {name for name, _, _ in after.candidates} | {n.name for n in after.neighbours}
    assert seen and seen.isdisjoint(PLACE0)


def test_shard_left_without_a_live_image_is_collected(indexed: Path) -> None:
    shards = [row[0] for row in table(indexed, "select filename from feature_shards order by id")]
    assert sorted(row[0] for row in table(indexed, "select name from images where shard_id = 1")) == sorted(FIRST_SHARD)
    result = remove(indexed, *FIRST_SHARD, "place002_0.jpg")  # the whole first shard, one of the second
    assert (result.removed, result.shards_collected) == (6, 1)
    assert [row[0] for row in table(indexed, "select filename from feature_shards order by id")] == shards[1:]
    assert sorted(p.name for p in (indexed / "features").iterdir()) == sorted(shards[1:])  # its file deleted
    assert_spotless(indexed, 18)  # the second shard keeps place002_0's group, retired by the run


def test_emptied_vector_shard_is_collected_and_hnsw_rebuilt(workdir: Path) -> None:
    """A grown database has one vector shard per batch; past exact_limit, FAISS is HNSW (rebuilt to delete)."""
    db = workdir / "db"
    lines = (workdir / "labels.csv").read_text().splitlines()
    (workdir / "half.csv").write_text("\n".join(lines[:13]) + "\n")
    run_index(db, workdir / "half.csv", workdir / "images", batch_size=4, exact_limit=8)
    run_index(db, workdir / "labels.csv", workdir / "images", batch_size=4, exact_limit=8)
    last_batch = [line.split(",")[0] for line in lines[-4:]]  # the grown run's last batch: its own two shards
    assert len(table(db, "select id from vector_shards")) == 4
    result = remove(db, *last_batch)
    assert (result.removed, result.shards_collected, result.vector_shards_collected) == (4, 1, 1)
    assert len(table(db, "select id from vector_shards")) == 3
    index = VectorIndex.load(db / "vectors" / str(result.faiss_file))
    assert index.approximate and index.count == 20
    assert_spotless(db, 20)


def test_the_run_is_recorded_with_what_it_retired(indexed: Path) -> None:
    with sqlite3.connect(indexed / "glueloc.sqlite") as connection:
        connection.execute("update images set x = x + 1 where name = ?", (PLACE0[1],))
        connection.execute("insert into coordinate_changes (image_id, run_id, old_x, old_y, new_x, new_y, changed_at) "
                           "select id, 1, x - 1, y, x, y, '2026-01-01 00:00:00' from images where name = ?", (PLACE0[1],))
    shard = table(indexed, "select filename from feature_shards where id = 1")[0][0]
    result = remove_images(Layout.at(indexed), [PLACE0[1], "never-indexed.jpg"], {"names": [PLACE0[1]], "csv": None})
    db = open_database(Layout.at(indexed))
    try:
        (run,) = summary(db, last_runs=1)["runs"]
        with pytest.raises(GluelocError, match="no image named"):
            image_record(db, PLACE0[1])
    finally:
        db.close()
    assert (run["id"], run["command"], run["outcome"], run["rejected"]) == (
        result.run_id, "remove", "completed_with_rejections", 1)
    assert run["finished_at"] is not None
    assert run["arguments"]["names"] == [PLACE0[1], "never-indexed.jpg"] and run["arguments"]["csv"] is None
    (retired,) = run["arguments"]["retired"]
    assert (retired["name"], retired["shard"], retired["run_id"]) == (PLACE0[1], shard, 1)
    assert len(retired["sha256"]) == 64 and retired["vector_shard"].startswith("global-")
    assert retired["coordinate_changes"][0]["to"][0] == retired["x"]
    assert table(indexed, "select count(*) from coordinate_changes") == [(0,)]
    assert table(indexed, "select run_id, name from rejections") == [(result.run_id, "never-indexed.jpg")]
    assert audit(Layout.at(indexed), deep=True).clean


def test_a_removed_image_can_be_indexed_again(workdir: Path, indexed: Path) -> None:
    remove(indexed, *PLACE0)
    again = run_index(indexed, workdir / "labels.csv", workdir / "images")
    assert (again.added, again.skipped, again.rejected) == (3, 21, 0)
    assert names(indexed) >= set(PLACE0)
    assert_spotless(indexed, 24)  # shard 1 keeps the retired groups, the new shard holds the live ones
    remove(indexed, PLACE0[0])  # and removed again, from the new shard this time
    assert_spotless(indexed, 23)


def test_unknown_names_are_reported_and_the_others_removed(indexed: Path) -> None:
    result = remove(indexed, "nope.jpg", PLACE0[0], "sub/also-nope.jpg", PLACE0[0])
    assert result.removed == 1 and result.not_found == ["nope.jpg", "sub/also-nope.jpg"]
    assert PLACE0[0] not in names(indexed)


def test_nothing_indexed_or_everything_is_refused_and_changes_nothing(indexed: Path) -> None:
    before = tree_digest(indexed)
    with pytest.raises(GluelocError, match=r"^none of the 2 name\(s\) given is indexed in .*: nothing removed$"):
        remove(indexed, "nope.jpg", "other.jpg")
    everything = sorted(names(indexed))
    with pytest.raises(GluelocError, match=r"^refusing to remove all 24 image\(s\)"):
        remove(indexed, *everything, "nope.jpg")
    assert tree_digest(indexed) == before
    remove(indexed, *everything[1:])  # all but one is fine
    assert_spotless(indexed, 1)


@pytest.mark.parametrize("bad", ["../escape.jpg", "/etc/passwd", "a\\b.jpg", "./place000_0.jpg", "", "a\x01.jpg"])
def test_unsafe_names_are_refused_before_anything_is_read(indexed: Path, bad: str) -> None:
    before = tree_digest(indexed)
    with pytest.raises(GluelocError) as caught:
        remove(indexed, PLACE0[0], bad)
    assert "\n" not in str(caught.value) and "name" in str(caught.value)
    assert tree_digest(indexed) == before


def test_no_database_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GluelocError, match="no glueloc database at"):
        remove(tmp_path / "none", PLACE0[0])
    assert not (tmp_path / "none").exists()


@pytest.fixture()
def fail_at_commit() -> Iterator[None]:
    """Every session commit raises, after all the removal's SQL ran and its FAISS file was published."""

    def refuse(session: Session) -> None:
        raise RuntimeError("simulated crash at the commit")

    event.listen(Session, "before_commit", refuse)
    try:
        yield
    finally:
        event.remove(Session, "before_commit", refuse)


def test_crash_at_the_commit_leaves_the_database_byte_identical(indexed: Path, fail_at_commit: None) -> None:
    before = tree_digest(indexed)
    with pytest.raises(RuntimeError, match="simulated crash"):
        remove(indexed, *FIRST_SHARD)
    assert tree_digest(indexed) == before  # even the published FAISS file is gone again


def test_disk_full_writing_faiss_changes_nothing(indexed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: VectorIndex, vectors_dir: Path) -> str:
        (vectors_dir / ".tmp-faiss-partial.index").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(VectorIndex, "save_new", full)
    before = committed_digest(indexed)
    with pytest.raises(StorageWriteError, match="nothing was removed"):
        remove(indexed, *PLACE0)
    assert committed_digest(indexed) == before
    report = audit(Layout.at(indexed), deep=True)
    assert report.clean and [f.code for f in report.findings] == ["leftover-files"]


def test_killed_before_the_commit_leaves_garbage_the_next_writer_deletes(
        indexed: Path, monkeypatch: pytest.MonkeyPatch, fail_at_commit: None) -> None:
    monkeypatch.setattr(remove_module, "_discard_unless_current", lambda db, published: None)  # as after SIGKILL
    before = committed_digest(indexed)
    with pytest.raises(RuntimeError):
        remove(indexed, *FIRST_SHARD)
    assert committed_digest(indexed) == before
    assert len(list((indexed / "vectors").glob("faiss-*"))) == 2  # the new one, unreferenced
    report = audit(Layout.at(indexed), deep=True)
    assert report.clean and [f.code for f in report.findings] == ["leftover-files"]
    assert table(indexed, "select count(*) from index_runs where command = 'remove'") == [(0,)]


def test_crash_after_the_commit_leaves_a_complete_removal(indexed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = remove_module.collect_garbage

    def collect_then_die(db, session):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:  # the collection after the commit
            raise KeyboardInterrupt
        return real(db, session)

    monkeypatch.setattr(remove_module, "collect_garbage", collect_then_die)
    with pytest.raises(KeyboardInterrupt):
        remove(indexed, *FIRST_SHARD)
    assert names(indexed).isdisjoint(FIRST_SHARD) and len(names(indexed)) == 19
    assert table(indexed, "select command, outcome from index_runs order by id desc limit 1") == [("remove", "completed")]
    report = audit(Layout.at(indexed), deep=True)
    # Left: the old FAISS file, the first shard and the vote segment that held its images.
    assert report.clean and [f.code for f in report.findings] == ["leftover-files"]
    assert "3 unreferenced file(s)" in report.findings[0].message
    monkeypatch.undo()
    remove(indexed, "place002_0.jpg")  # the next writer deletes them
    assert_spotless(indexed, 18)


def test_only_retired_groups_are_accepted(indexed: Path) -> None:
    """A group no row owns is still an error unless a remove run retired it from that very file."""
    remove(indexed, PLACE0[0])
    with sqlite3.connect(indexed / "glueloc.sqlite") as connection:
        connection.execute("update images set name = 'ghost.jpg' where name = ?", (PLACE0[1],))
    report = audit(Layout.at(indexed))
    messages = [f.message for f in report.errors if f.code == "features-orphan"]
    assert len(messages) == 1 and PLACE0[1] in messages[0]
    assert {f.code for f in report.errors} >= {"features-missing", "vectors-orphan"}


def test_read_names_takes_the_labels_csv_or_a_name_list(workdir: Path, indexed: Path) -> None:
    assert len(read_names(workdir / "labels.csv")) == 24
    listed = workdir / "retire.csv"
    listed.write_text("\ufeffName,reason\nplace000_0.jpg,rehung\n\nplace000_1.jpg,\"mislabelled, says curator\"\n")
    assert read_names(listed) == PLACE0[:2]
    assert remove(indexed, *read_names(listed)).removed == 2


@pytest.mark.parametrize(("text", "message"), [
    ("file,x\na.jpg,1\n", "lacks the column 'name'"),
    ("name,name\na.jpg,b.jpg\n", "repeats the column 'name'"),
    ("", "empty file"),
    ("name\n\n", "no names after the header"),
    ("name,x\na.jpg\n", "line 2: 1 fields, header has 2"),
    ("name\nok.jpg\n../up.jpg\n", "line 3: name '../up.jpg' leaves the image folder"),
])
def test_read_names_refuses_a_bad_csv(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "names.csv"
    path.write_text(text)
    with pytest.raises(GluelocError, match=message) as caught:
        read_names(path)
    if message.startswith("line"):
        assert isinstance(caught.value, LabelsError)


def test_repair_of_real_damage_leaves_a_shard_with_retired_groups_alone(indexed: Path) -> None:
    """A shard that only holds retired groups beside live ones is healthy: repair must not re-extract it."""
    from glueloc.indexer.repair import repair
    from glueloc.storage.audit import audit

    with sqlite3.connect(indexed / "glueloc.sqlite") as connection:
        first, second = [r[0] for r in connection.execute("select filename from feature_shards order by id limit 2")]
        name = connection.execute("select i.name from images i join feature_shards s on i.shard_id = s.id "
                                  "where s.filename = ? order by i.id limit 1", (first,)).fetchone()[0]
    remove_images(Layout.at(indexed), [name], {})
    (indexed / "features" / second).write_bytes(b"damaged")  # real damage elsewhere
    actions = repair(Layout.at(indexed))
    assert any(second in action for action in actions) and not any(first in action for action in actions), actions
    assert audit(Layout.at(indexed), deep=True).clean
