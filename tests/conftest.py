"""Shared fixtures: a small synthetic scene (generated, never real photos) and helpers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from glueloc.synthetic import SyntheticDataset, write_dataset


def pytest_sessionstart(session: pytest.Session) -> None:
    """``.ci/wheel-check`` runs the suite against the installed wheel: make sure it really does."""
    if os.environ.get("GLUELOC_TESTS_AGAINST") == "installed":
        import glueloc.query

        where = Path(glueloc.query.__file__).resolve()
        if "site-packages" not in where.parts:
            raise pytest.UsageError(f"glueloc.query comes from {where}, not from the installed wheel")


@pytest.fixture(scope="session")
def scene(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    """8 capture points x 3 views, and 4 held-out query views (about a second to render)."""
    return write_dataset(tmp_path_factory.mktemp("scene"), n_places=8, views_per_place=3, n_queries=4, seed=1)


@pytest.fixture()
def workdir(tmp_path: Path, scene: SyntheticDataset) -> Path:
    """A private, writable copy of the scene's images and labels."""
    shutil.copytree(scene.images_dir, tmp_path / "images")
    shutil.copy(scene.labels_csv, tmp_path / "labels.csv")
    return tmp_path


@pytest.fixture(scope="session")
def indexed_scene(tmp_path_factory: pytest.TempPathFactory, scene: SyntheticDataset) -> Path:
    """The scene indexed once with SIFT; tests get copies through ``indexed``."""
    from tests.helpers import run_index

    db = tmp_path_factory.mktemp("indexed") / "db"
    run_index(db, scene.labels_csv, scene.images_dir, batch_size=5)
    return db


@pytest.fixture()
def indexed(workdir: Path, indexed_scene: Path) -> Path:
    """A private copy of the indexed scene's database, beside ``workdir``'s images."""
    shutil.copytree(indexed_scene, workdir / "db")
    return workdir / "db"
