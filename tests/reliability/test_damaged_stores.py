"""Damaged stores: each kind of damage, what ``glueloc audit`` says, what ``--repair`` does.

Every case damages a private copy of an indexed database by hand, then runs the real
commands: ``audit`` (``--deep`` where only content hashes can see it) must exit 1 and
name the damage by its code; ``audit --repair`` must rebuild what is derivable from the
other stores or the image files (features, vectors, codebook, FAISS, leftovers) and say
plainly what is not (features whose image file is gone, a catalogue row whose features
and file are gone); a second audit shows which.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from glueloc.cli import app
from tests.reliability.common import record
from tests.test_audit import codebook_file, current_faiss, first_shard, vector_shard

pytestmark = pytest.mark.slow

runner = CliRunner()


@dataclass(frozen=True)
class Damage:
    label: str
    apply: Callable[[Path], None]
    codes: set[str]  # what the audit must name
    deep: bool  # only a deep audit can see it
    derivable: bool  # --repair must leave a clean audit


def _truncate(path: Path, keep: int = 200) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _stale_faiss(db: Path) -> None:
    import faiss

    from glueloc.storage.vectors import VectorIndex

    index = VectorIndex.load(current_faiss(db))
    stale = VectorIndex.empty(index.dim)
    stale.add(index.ids()[:-1], index.vectors()[:-1])
    faiss.write_index(stale.index, str(current_faiss(db)))


def _shuffled_faiss(db: Path) -> None:
    import faiss

    from glueloc.storage.vectors import VectorIndex

    index = VectorIndex.load(current_faiss(db))
    wrong = VectorIndex.empty(index.dim)
    wrong.add(index.ids(), np.roll(index.vectors(), 1, axis=0))
    faiss.write_index(wrong.index, str(current_faiss(db)))


def vote_segment(db: Path) -> Path:
    with sqlite3.connect(db / "glueloc.sqlite") as connection:
        return db / "vectors" / connection.execute("select filename from vote_segments order by id").fetchone()[0]


def vote_codec(db: Path) -> Path:
    with sqlite3.connect(db / "glueloc.sqlite") as connection:
        return db / "vectors" / connection.execute(
            "select filename from vote_codecs where id = (select vote_codec_id from store_state)").fetchone()[0]


def _flip_last_byte(which: Callable[[Path], Path]) -> Callable[[Path], None]:
    def apply(db: Path) -> None:
        data = bytearray(which(db).read_bytes())
        data[-1] ^= 1
        which(db).write_bytes(bytes(data))
    return apply


def _sql(statement: str) -> Callable[[Path], None]:
    def apply(db: Path) -> None:
        with sqlite3.connect(db / "glueloc.sqlite") as connection:
            connection.execute(statement)
    return apply


def _flip_shard_value(db: Path) -> None:
    import h5py

    with h5py.File(first_shard(db), "r+") as handle:
        handle[next(iter(handle))]["scores"][0] = 123.0


def _leftovers(db: Path) -> None:
    (db / "features" / ".tmp-shard-x.h5").write_bytes(b"partial")
    (db / "vectors" / "faiss-old.index").write_bytes(b"old")


def _image_gone(db: Path) -> None:
    """Point the runs at a private copy of the images and delete one image of the first shard."""
    images = db.parent / f"{db.name}-images"
    with sqlite3.connect(db / "glueloc.sqlite") as connection:
        (folder,) = connection.execute("select images_dir from index_runs limit 1").fetchone()
        shutil.copytree(folder, images)
        connection.execute("update index_runs set images_dir = ?", (str(images),))
        (name,) = connection.execute("select images.name from images join feature_shards on images.shard_id = "
                                     "feature_shards.id order by feature_shards.id, images.id limit 1").fetchone()
    (images / name).unlink()


def _both(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def apply(db: Path) -> None:
        for step in steps:
            step(db)
    return apply


DAMAGES = [
    Damage("HDF5 shard truncated", lambda db: _truncate(first_shard(db)), {"shard-unreadable"}, False, True),
    Damage("HDF5 shard deleted", lambda db: first_shard(db).unlink(), {"shard-missing"}, False, True),
    Damage("HDF5 shard edited in place", _flip_shard_value, {"shard-changed"}, True, True),
    Damage("HDF5 shard deleted and one of its image files gone", _both(_image_gone, lambda db: first_shard(db).unlink()),
           {"shard-missing"}, False, False),
    Damage("FAISS file deleted", lambda db: current_faiss(db).unlink(), {"faiss-missing"}, False, True),
    Damage("FAISS file garbage", lambda db: current_faiss(db).write_bytes(b"not faiss"), {"faiss-unreadable"}, False, True),
    Damage("FAISS file truncated", lambda db: _truncate(current_faiss(db), 100), {"faiss-unreadable"}, False, True),
    Damage("FAISS file stale (one image behind)", _stale_faiss, {"faiss-count"}, False, True),
    Damage("FAISS vectors swapped between images", _shuffled_faiss, {"faiss-stale"}, True, True),
    Damage("vector shard deleted", lambda db: vector_shard(db).unlink(), {"vectors-shard-missing"}, False, True),
    Damage("codebook file deleted", lambda db: codebook_file(db).unlink(), {"codebook-missing", "codebook-unreadable"},
           False, True),
    Damage("SQLite row without features", _sql("update images set name = 'ghost.jpg' where id = 1"),
           {"features-missing", "features-orphan"}, False, False),
    Damage("leftover files of a killed run", _leftovers, set(), False, True),
    Damage("vote segment deleted", lambda db: vote_segment(db).unlink(), {"vote-segment-missing"}, False, True),
    Damage("vote segment truncated", lambda db: _truncate(vote_segment(db), 5000), {"vote-segment-truncated"}, False,
           True),
    Damage("vote segment edited in place", _flip_last_byte(vote_segment), {"vote-segment-changed"}, True, True),
    Damage("vote segment stale (of another codec)", _sql("update vote_segments set codec_id = 99"),
           {"vote-segment-stale"}, False, True),
    Damage("vote codec deleted", lambda db: vote_codec(db).unlink(), {"vote-codec-missing"}, False, True),
]


def invoke(*args: object):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [str(a) for a in args])


def finding_codes(output: str) -> set[str]:
    return {line.split("[", 1)[1].split("]", 1)[0] for line in output.splitlines() if "[" in line and "]" in line}


def test_damaged_stores(tmp_path: Path, indexed_scene: Path) -> None:
    rows: list[dict] = []
    problems: list[str] = []
    for number, damage in enumerate(DAMAGES):
        db = tmp_path / f"db{number}"
        shutil.copytree(indexed_scene, db)
        damage.apply(db)
        deep = ["--deep"] if damage.deep else []
        found = invoke("audit", "--db", db, *deep)
        codes = finding_codes(found.output)
        fixed = invoke("audit", "--db", db, "--repair")
        after = invoke("audit", "--db", db, "--deep")
        row = {"damage": damage.label, "audit exit": found.exit_code, "codes": sorted(codes),
               "repair": [line for line in fixed.output.splitlines() if line.startswith("repair: ")],
               "audit after repair": after.exit_code}
        rows.append(row)
        for result in (found, fixed, after):
            if "Traceback" in result.output or (result.exception and not isinstance(result.exception, SystemExit)):
                problems.append(f"{damage.label}: traceback: {result.output[-300:]}")
        want_exit = 1 if damage.codes else 0
        if found.exit_code != want_exit or not damage.codes <= codes:
            problems.append(f"{damage.label}: audit exit {found.exit_code}, codes {sorted(codes)}")
        if damage.derivable and after.exit_code != 0:
            problems.append(f"{damage.label}: still damaged after --repair: {after.output[-300:]}")
        if not damage.derivable and ("not derivable" not in fixed.output or after.exit_code != 1):
            problems.append(f"{damage.label}: --repair must say what is not derivable: {fixed.output[-300:]}")
    # The catalogue itself: a truncated or deleted SQLite file is refused in one line.
    for label, spoil in (("SQLite file truncated", lambda p: _truncate(p, 1000)), ("SQLite file deleted", Path.unlink),
                         ("SQLite file garbage", lambda p: p.write_bytes(b"x" * 5000))):
        db = tmp_path / label.replace(" ", "-")
        shutil.copytree(indexed_scene, db)
        spoil(db / "glueloc.sqlite")
        found = invoke("audit", "--db", db)
        lines = found.output.strip().splitlines()
        rows.append({"damage": label, "audit exit": found.exit_code, "codes": [], "repair": [], "message": lines[-1:]})
        if found.exit_code == 0 or "Traceback" in found.output or len(lines) != 1 or not lines[0].startswith("error: "):
            problems.append(f"{label}: {found.exit_code}: {found.output[-300:]}")
    record("damaged_stores", {"cases": len(rows), "problems": problems, "rows": rows})
    for row in rows:
        print(row)
    assert not problems, "\n".join(problems)
