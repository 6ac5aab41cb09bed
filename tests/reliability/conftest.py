"""Fixtures of the reliability suites: a larger synthetic scene than the unit tests'."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from glueloc.synthetic import SyntheticDataset, write_dataset
from tests.catalogues import Catalogue
from tests.helpers import run_index


@pytest.fixture(scope="session")
def big_scene(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    """12 capture points x 3 views (36 images) and 4 queries: enough batches to kill between."""
    return write_dataset(tmp_path_factory.mktemp("big-scene"), n_places=12, views_per_place=3, n_queries=4, seed=7)


@pytest.fixture(scope="session")
def half_indexed_by_kind() -> dict[str, Path]:
    """``half_indexed``'s databases, one per catalogue kind, made on first use."""
    return {}


@pytest.fixture()
def half_indexed(tmp_path_factory: pytest.TempPathFactory, big_scene: SyntheticDataset, catalogue: Catalogue,
                 half_indexed_by_kind: dict[str, Path]) -> tuple[Path, Path]:
    """A database holding the first half of ``big_scene`` (codebook trained), and the full CSV."""
    if catalogue.kind not in half_indexed_by_kind:
        root = tmp_path_factory.mktemp(f"half-{catalogue.kind}")
        lines = big_scene.labels_csv.read_text().splitlines()
        half = root / "half.csv"
        half.write_text("\n".join(lines[: 1 + (len(lines) - 1) // 2]) + "\n")
        db = catalogue.bind(root / "db")
        run_index(db, half, big_scene.images_dir, batch_size=4)
        half_indexed_by_kind[catalogue.kind] = db
    return half_indexed_by_kind[catalogue.kind], big_scene.labels_csv


def copy_db(template: Path, to: Path, catalogue: Catalogue | None = None) -> Path:
    """A private copy of a database directory (and of its catalogue, when that is on a server)."""
    if catalogue is not None:
        return catalogue.copy(template, to)
    shutil.copytree(template, to)
    return to
