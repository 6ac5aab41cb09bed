"""Audit names each kind of damage precisely; --repair rebuilds what is derivable."""

from __future__ import annotations

from pathlib import Path

import pytest

from glueloc.indexer.repair import repair
from glueloc.storage.audit import audit
from glueloc.storage.layout import Layout
from tests.helpers import sql

pytestmark = pytest.mark.both_catalogues


def codes(db: Path, deep: bool = False) -> set[str]:
    return {f.code for f in audit(Layout.at(db), deep=deep).errors}


def stored_file(db: Path, folder: str, statement: str) -> Path:
    """The store file the catalogue names through ``statement`` (one row, one column)."""
    ((name,),) = sql(db, statement)
    return db / folder / name


def current_faiss(db: Path) -> Path:
    return stored_file(db, "vectors", "select faiss_file from store_state")


def first_shard(db: Path) -> Path:
    return stored_file(db, "features", "select filename from feature_shards order by id limit 1")


def vector_shard(db: Path) -> Path:
    return stored_file(db, "vectors", "select filename from vector_shards order by id limit 1")


def codebook_file(db: Path) -> Path:
    return stored_file(db, "vectors", "select filename from codebooks, store_state "
                                      "where codebooks.id = store_state.codebook_id")


def test_fresh_index_is_clean(indexed: Path) -> None:
    report = audit(Layout.at(indexed), deep=True)
    assert report.clean and report.images == 24 and report.vectors == 24 and report.shards == 5
    assert not report.findings


def test_lost_vector_shard_is_rebuilt_from_features(indexed: Path) -> None:
    vector_shard(indexed).unlink()
    assert codes(indexed) == {"vectors-shard-missing"}
    actions = repair(Layout.at(indexed))
    assert any("rebuilt 24 global vectors" in a and "retrained" not in a for a in actions)
    assert audit(Layout.at(indexed), deep=True).clean


def test_lost_codebook_is_retrained(indexed: Path) -> None:
    codebook_file(indexed).unlink()
    assert codes(indexed) == {"codebook-missing", "codebook-unreadable"}
    actions = repair(Layout.at(indexed))
    assert any("codebook retrained as 2" in a for a in actions)
    report = audit(Layout.at(indexed), deep=True)
    assert report.clean and [f.code for f in report.findings] == ["codebook-missing"]  # the old one, as a note


def test_deleted_faiss_is_reported_and_repaired(indexed: Path) -> None:
    current_faiss(indexed).unlink()
    assert codes(indexed) == {"faiss-missing"}
    actions = repair(Layout.at(indexed))
    assert any("rebuilt 24 global vectors and the FAISS index" in a for a in actions)
    assert audit(Layout.at(indexed), deep=True).clean


def test_garbage_faiss_is_reported_and_repaired(indexed: Path) -> None:
    current_faiss(indexed).write_bytes(b"not a faiss index")
    assert codes(indexed) == {"faiss-unreadable"}
    repair(Layout.at(indexed))
    assert audit(Layout.at(indexed), deep=True).clean


def test_stale_faiss_is_reported(indexed: Path, tmp_path: Path) -> None:
    import numpy as np

    from glueloc.storage.vectors import VectorIndex

    index = VectorIndex.load(current_faiss(indexed))
    stale = VectorIndex.empty(index.dim)
    ids = index.ids()
    stale.add(ids[:-1], index.vectors()[:-1])  # one image behind
    import faiss

    faiss.write_index(stale.index, str(current_faiss(indexed)))
    assert codes(indexed) == {"faiss-count"}  # the missing id alone would be a pending vector (a note)
    # same ids, different vectors: only the deep audit can see it
    wrong = VectorIndex.empty(index.dim)
    wrong.add(ids, np.roll(index.vectors(), 1, axis=0))
    faiss.write_index(wrong.index, str(current_faiss(indexed)))
    assert codes(indexed) == set()
    assert codes(indexed, deep=True) == {"faiss-stale"}
    repair(Layout.at(indexed))
    assert audit(Layout.at(indexed), deep=True).clean


def use_workdir_images(db: Path) -> Path:
    """Point the database's runs at the test's private copy of the images (safe to damage)."""
    images = db.parent / "images"
    sql(db, "update index_runs set images_dir = :dir", {"dir": str(images)})
    return images


def test_truncated_shard_is_re_extracted_from_the_images(indexed: Path) -> None:
    use_workdir_images(indexed)
    shard = first_shard(indexed)
    shard.write_bytes(shard.read_bytes()[:200])
    assert codes(indexed) == {"shard-unreadable"}
    actions = repair(Layout.at(indexed))
    assert any(a.startswith("re-extracted the features of 5 image(s)") and shard.name in a for a in actions)
    report = audit(Layout.at(indexed), deep=True)
    assert report.clean and report.images == 24 and not shard.exists()


def test_deleted_shard_with_an_image_gone_is_not_derivable(indexed: Path) -> None:
    images = use_workdir_images(indexed)
    shard = first_shard(indexed)
    ((name,),) = sql(indexed, "select images.name from images join feature_shards "
                              "on images.shard_id = feature_shards.id order by images.id limit 1")
    (images / name).unlink()
    shard.unlink()
    actions = repair(Layout.at(indexed))
    assert any(a.startswith(f"not derivable, left as is: shard {shard.name}") and name in a for a in actions)
    assert "shard-missing" in codes(indexed)


def test_missing_shard_and_row_without_features(indexed: Path) -> None:
    first_shard(indexed).unlink()
    assert codes(indexed) == {"shard-missing"}


def test_row_without_features_in_its_shard(indexed: Path) -> None:
    sql(indexed, "update images set name = 'ghost.jpg' where id = 1")
    found = codes(indexed)
    assert "features-missing" in found and "features-orphan" in found


def test_edited_shard_is_caught_by_deep_audit(indexed: Path) -> None:
    import h5py

    shard = first_shard(indexed)
    with h5py.File(shard, "r+") as handle:
        name = next(iter(handle))
        handle[name]["scores"][0] = 123.0
    assert codes(indexed) == set()
    assert codes(indexed, deep=True) == {"shard-changed"}


def test_leftovers_are_notes_and_repair_removes_them(indexed: Path) -> None:
    (indexed / "features" / ".tmp-shard-x.h5").write_bytes(b"partial")
    (indexed / "features" / "shard-unregistered.h5").write_bytes(b"complete but uncommitted")
    (indexed / "vectors" / "faiss-old.index").write_bytes(b"old")
    report = audit(Layout.at(indexed))
    assert report.clean
    assert [f.code for f in report.findings] == ["leftover-files"]
    assert "3 unreferenced file(s)" in report.findings[0].message
    repair(Layout.at(indexed))
    assert not audit(Layout.at(indexed)).findings


def test_changed_image_file_is_caught_by_deep_audit(indexed: Path) -> None:
    ((root,),) = sql(indexed, "select images_dir from index_runs where id = 1")
    ((name,),) = sql(indexed, "select name from images where id = 1")
    sql(indexed, "update index_runs set images_dir = :dir", {"dir": str(indexed.parent / "images")})
    assert Path(root).is_dir()
    image = indexed.parent / "images" / name
    image.write_bytes(image.read_bytes() + b"!")
    assert codes(indexed, deep=True) == {"image-changed"}
