"""What a query hands a person: pictures, the predictions CSV (resumable), the evaluation plot."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

from glueloc.cli import app
from glueloc.synthetic import SyntheticDataset

runner = CliRunner()
pytestmark = pytest.mark.both_catalogues


def test_query_writes_match_picture_and_map(indexed: Path, scene: SyntheticDataset, tmp_path: Path) -> None:
    query = sorted(scene.queries_dir.glob("*.jpg"))[0]
    viz, map_png = tmp_path / "viz.png", tmp_path / "map.png"
    result = runner.invoke(app, ["query", str(query), "--db", str(indexed), "--viz", str(viz), "--map", str(map_png)])
    assert result.exit_code == 0, result.output
    matches = cv2.imread(str(viz))
    assert matches.shape[0] == 480 and matches.shape[1] > 900
    drawn = cv2.imread(str(map_png))
    assert drawn.shape == (800, 800, 3) and (drawn < 250).any()


def test_evaluate_plot(indexed: Path, scene: SyntheticDataset, tmp_path: Path) -> None:
    plot = tmp_path / "errors.png"
    result = runner.invoke(app, ["evaluate", str(scene.queries_csv), "--images", str(scene.queries_dir), "--db",
                                 str(indexed), "--plot", str(plot), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(plot)).shape == (600, 1200, 3)


def test_predict_writes_and_resumes(indexed: Path, scene: SyntheticDataset, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    shutil.copytree(scene.queries_dir, folder)
    out = tmp_path / "predictions.csv"
    args = ["predict", str(folder), "-o", str(out), "--db", str(indexed), "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[0] == "id,x,y,confidence" and len(lines) == 5
    assert sorted(line.split(",")[0] for line in lines[1:]) == sorted(p.name for p in folder.iterdir())
    # a crash mid-row leaves a torn last line: the next run drops it and answers that image again
    out.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:7])
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "wrote 1 rows, kept 3 from before" in result.output
    assert out.read_text().splitlines() == lines


def test_predict_reports_bad_images_and_foreign_files(indexed: Path, scene: SyntheticDataset, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    shutil.copytree(scene.queries_dir, folder)
    (folder / "broken.jpg").write_bytes(b"")
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", str(folder), "-o", str(out), "--db", str(indexed), "--no-progress"])
    assert result.exit_code == 1 and "failed: broken.jpg: empty file (0 bytes)" in result.output
    assert len(out.read_text().splitlines()) == 5
    other = tmp_path / "other.csv"
    other.write_text("name,x,y\n")
    result = runner.invoke(app, ["predict", str(folder), "-o", str(other), "--db", str(indexed), "--no-progress"])
    assert result.exit_code == 2 and "not a glueloc predictions file" in result.output
