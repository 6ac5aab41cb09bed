"""The command line: one clear line per problem, the right exit codes, JSON that parses."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from glueloc.cli import app
from glueloc.synthetic import SyntheticDataset
from glueloc.storage.database import head_revision

runner = CliRunner()


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [str(a) for a in args])


def test_index_audit_inspect_round_trip(workdir: Path) -> None:
    """The defaults end to end: a new database gets XFeat + LighterGlue and a VLAD codebook."""
    db = workdir / "db"
    result = invoke("index", workdir / "labels.csv", "--images", workdir / "images", "--db", db, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "added 24, skipped 0" in result.output and "images/s" in result.output
    result = invoke("index", workdir / "labels.csv", "--images", workdir / "images", "--db", db, "--json")
    assert json.loads(result.stdout)["skipped"] == 24
    result = invoke("audit", "--db", db, "--deep")
    assert result.exit_code == 0 and "clean" in result.output
    summary = json.loads(invoke("inspect", "--db", db, "--json").stdout)
    assert summary["images"] == 24 and summary["extractor"]["name"] == "xfeat"
    assert summary["matcher"] == {"name": "lightglue", "config": {**summary["matcher"]["config"], "features": "xfeat"}}
    assert summary["global_descriptor"]["name"] == "vlad:1" and summary["global_descriptor"]["dim"] > 0
    assert [r["outcome"] for r in summary["runs"]] == ["completed", "completed"]
    name = (workdir / "labels.csv").read_text().splitlines()[1].split(",")[0]
    record = json.loads(invoke("inspect", name, "--db", db, "--json").stdout)
    assert record["name"] == name and record["stored_keypoints"] == record["num_keypoints"] > 0


def test_bad_csv_is_one_line_per_problem_and_exit_2(workdir: Path) -> None:
    (workdir / "bad.csv").write_text("name,x,y\na.jpg,nan,1\n../b.jpg,1,1\n")
    result = invoke("index", workdir / "bad.csv", "--images", workdir / "images", "--db", workdir / "db")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: bad.csv: line ") for line in lines)
    assert not (workdir / "db").exists()


def test_rejected_images_exit_1_with_reasons(workdir: Path) -> None:
    (workdir / "images" / "empty.jpg").write_bytes(b"")
    (workdir / "one.csv").write_text("name,x,y\nempty.jpg,1,1\n")
    result = invoke("index", workdir / "one.csv", "--images", workdir / "images", "--db", workdir / "db", "--no-progress",
                    "--extractor", "sift")
    assert result.exit_code == 1
    assert "rejected: empty.jpg: empty file (0 bytes)" in result.output


def test_read_commands_on_missing_database(tmp_path: Path) -> None:
    for args in (["audit"], ["inspect"], ["query", tmp_path / "q.jpg"]):
        result = invoke(*args, "--db", tmp_path / "none")
        assert result.exit_code == 2, args
        assert result.output.strip() == f"error: no glueloc database at {tmp_path / 'none'} (run `glueloc index` to create one)"


def test_audit_exit_1_on_damage(indexed: Path) -> None:
    for path in (indexed / "vectors").iterdir():
        path.unlink()
    result = invoke("audit", "--db", indexed)
    assert result.exit_code == 1 and "[faiss-missing]" in result.output
    result = invoke("audit", "--db", indexed, "--repair")
    assert result.exit_code == 0 and "rebuilt 24 global vectors and the FAISS index" in result.output


def test_query_and_evaluate_on_held_out_views(indexed: Path, scene: SyntheticDataset, tmp_path: Path) -> None:
    query = next(scene.queries_dir.glob("*.jpg"))
    result = invoke("query", query, "--db", indexed, "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["verified"] and answer["neighbours"][0]["inliers"] >= 0
    out = tmp_path / "eval.json"
    result = invoke("evaluate", scene.queries_csv, "--images", scene.queries_dir, "--db", indexed, "--json", out, "--no-progress")
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["queries"] == 4
    assert {"extract_p50_s", "retrieve_p50_s", "votes_p50_s", "verify_p95_s"} <= set(metrics)
    # held-out views 0.5-1.5 units from a capture point in a 24 x 16 room: verification must place them close
    assert metrics["mae"] < 3.0, metrics


def test_db_upgrade_and_current(tmp_path: Path) -> None:
    result = invoke("db", "upgrade", "--db", tmp_path / "db")
    assert result.exit_code == 0 and "schema (empty) ->" in result.output
    result = invoke("db", "current", "--db", tmp_path / "db")
    assert result.exit_code == 0 and result.output.strip() == f"database: {head_revision()}  code: {head_revision()}"


def test_query_of_a_corrupt_image_is_one_line(indexed: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    result = invoke("query", bad, "--db", indexed)
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: bad.jpg: ") and len(result.output.strip().splitlines()) == 1


def test_query_estimators_and_unknown_one(indexed: Path, scene: SyntheticDataset) -> None:
    query = str(sorted(scene.queries_dir.glob("*.jpg"))[0])
    for method in ("auto", "best", "weighted-mean", "cluster"):
        result = invoke("query", query, "--db", indexed, "--estimator", method, "--json")
        answer = json.loads(result.stdout)
        assert result.exit_code == 0 and answer["uncertainty"] is not None and 0 <= answer["confidence"] <= 1
    result = invoke("query", query, "--db", indexed, "--estimator", "median")
    assert result.exit_code == 2 and result.output.strip() == "error: unknown estimator 'median' (auto, calibrated, best, weighted-mean, cluster)"


def test_query_refuses_bad_databases_and_images_in_one_line(indexed: Path, scene: SyntheticDataset,
                                                             tmp_path: Path) -> None:
    """Issue 5's bad input: each case is one ``error:`` line, a non-zero exit, and no output file."""
    import shutil
    import sqlite3

    from tests.reliability.corpus import png_declaring

    good = sorted(scene.queries_dir.glob("*.jpg"))[0]
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "corrupt.jpg").write_bytes(good.read_bytes()[:300])
    (tmp_path / "bomb.png").write_bytes(png_declaring(60_000, 60_000))
    old = tmp_path / "old-db"
    shutil.copytree(indexed, old)
    with sqlite3.connect(old / "glueloc.sqlite") as connection:
        connection.execute("update alembic_version set version_num = '0001'")
    no_images = tmp_path / "no-images"
    shutil.copytree(indexed, no_images)
    with sqlite3.connect(no_images / "glueloc.sqlite") as connection:
        connection.execute("update store_state set faiss_file = null, faiss_count = 0")
    lost_shard = tmp_path / "lost-shard"
    shutil.copytree(indexed, lost_shard)
    sorted((lost_shard / "features").glob("shard-*.h5"))[0].unlink()
    cases = [
        (good, tmp_path / "missing-db", "no glueloc database"),
        (good, tmp_path / "empty-folder", "no glueloc database"),
        (good, old, "schema revision 0001"),
        (good, no_images, "holds no indexed images"),
        (good, lost_shard, "is missing or unreadable"),  # every shard is read when the vote index is built
        (tmp_path / "missing.jpg", indexed, "missing.jpg: file not found"),
        (tmp_path / "empty.jpg", indexed, "empty.jpg: empty file"),
        (tmp_path / "corrupt.jpg", indexed, "corrupt.jpg: corrupt or truncated"),
        (tmp_path / "bomb.png", indexed, "possible decompression bomb"),
    ]
    for image, db, expected in cases:
        result = invoke("query", image, "--db", db, "--json", "--map", tmp_path / "map.png")
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2, (image, db, result.output)
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (image, db, result.output)
        assert not (tmp_path / "map.png").exists()
