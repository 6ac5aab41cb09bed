"""Shared fixtures: a small synthetic scene (generated, never real photos) and helpers."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from glueloc.synthetic import SyntheticDataset, write_dataset
from tests.catalogues import KINDS, Catalogue, PostgresServer, find_server, required


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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_catalogues: run the module's database tests on SQLite and PostgreSQL "
                                       "(tests/catalogues.py)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "catalogue" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_catalogues"):
        metafunc.parametrize("catalogue", KINDS, indirect=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer | None]:
    """The local PostgreSQL server, connected once (None when there is none: see tests/catalogues.py)."""
    server, _ = find_server()
    yield server
    if server is not None:
        server.drop_all()


@pytest.fixture()
def catalogue(request: pytest.FixtureRequest, postgres_server: PostgresServer | None) -> Catalogue:
    """The catalogue kind of this test: SQLite, unless its module is marked both_catalogues."""
    kind = getattr(request, "param", "sqlite")
    if kind == "sqlite":
        return Catalogue("sqlite")
    if postgres_server is None:
        why = find_server()[1]
        if required():
            pytest.fail(why)
        pytest.skip(why)
    return Catalogue(kind, postgres_server)


@pytest.fixture()
def new_db(workdir: Path, catalogue: Catalogue) -> Path:
    """A new database directory beside ``workdir``'s images, bound to this test's catalogue."""
    return catalogue.bind(workdir / "db")


def _index_scene(db: Path, scene: SyntheticDataset) -> Path:
    from tests.helpers import run_index

    run_index(db, scene.labels_csv, scene.images_dir, batch_size=5)
    return db


@pytest.fixture(scope="session")
def indexed_scene(tmp_path_factory: pytest.TempPathFactory, scene: SyntheticDataset) -> Path:
    """The scene indexed once with SIFT (SQLite); tests get copies through ``indexed``."""
    return _index_scene(tmp_path_factory.mktemp("indexed") / "db", scene)


@pytest.fixture(scope="session")
def indexed_on_server(tmp_path_factory: pytest.TempPathFactory, scene: SyntheticDataset) -> dict[str, Path]:
    """The same on the PostgreSQL server, indexed on first use (see ``indexed``)."""
    return {}


@pytest.fixture()
def indexed(request: pytest.FixtureRequest, workdir: Path, catalogue: Catalogue, scene: SyntheticDataset,
            indexed_on_server: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the indexed scene's database (and catalogue), beside ``workdir``'s images."""
    if catalogue.kind == "sqlite":
        template = request.getfixturevalue("indexed_scene")
    else:
        if catalogue.kind not in indexed_on_server:
            root = catalogue.bind(tmp_path_factory.mktemp(f"indexed-{catalogue.kind}") / "db")
            indexed_on_server[catalogue.kind] = _index_scene(root, scene)
        template = indexed_on_server[catalogue.kind]
    return catalogue.copy(template, workdir / "db")
