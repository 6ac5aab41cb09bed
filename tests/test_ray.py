"""Indexing on a Ray cluster (indexer.distributed): a local 2-CPU cluster, started by these tests.

The index it builds equals a single-process index of the same photos; a worker killed
mid-run is restarted and its batch retried; a driver killed mid-run leaves a database
that audits clean and that a re-run completes.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from glueloc.indexer.distributed import RayOptions
from glueloc.indexer.pipeline import IndexOptions, IndexRunner, IndexSummary
from glueloc.core.labels import read_labels
from glueloc.storage.audit import audit
from glueloc.storage.features import FeatureReader
from glueloc.storage.globals import read_vectors
from glueloc.storage.layout import Layout
from tests.helpers import run_index, sql
from tests.reliability.common import environment, glueloc_command, image_names, run_count

IMAGE_COLUMNS = "id, name, sha256, x, y, width, height, num_keypoints, extractor, file_size, status"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray head on this machine with 2 CPUs: 2 extraction workers. Yields its address.

    With token authentication, as Ray sets up new clusters: a token of the test's own in
    RAY_AUTH_TOKEN, which the head, this process and the drivers the tests start all read.
    """
    ray_cli = str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "token")
        patch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        started = subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2",
                                  "--include-dashboard=false", "--disable-usage-stats",
                                  f"--temp-dir={tmp_path_factory.mktemp('ray')}"],
                                 capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stderr[-2000:]
        try:
            yield f"127.0.0.1:{port}"
        finally:
            subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120)


def ray_runner(db: Path, address: str, batch_size: int, progress: Callable[[int], None] | None = None) -> IndexRunner:
    """An index run as tests/helpers.run_index makes it (SIFT, no embedder), extracting on Ray."""
    options = IndexOptions(extractor="sift", embedder="none", batch_size=batch_size, ray=RayOptions(address=address))
    return IndexRunner(Layout.at(db), options, progress=progress)


def run(runner: IndexRunner, workdir: Path) -> IndexSummary:
    return runner.run(read_labels(workdir / "labels.csv", workdir / "images"), workdir / "images", {"test": True})


def assert_same_index(a: Path, b: Path) -> None:
    """Same image rows, same features, same global vectors; both audit clean."""
    assert sql(a, f"select {IMAGE_COLUMNS} from images order by id") == sql(b, f"select {IMAGE_COLUMNS} from images order by id")
    located = {}
    for db in (a, b):
        rows = sql(db, "select images.name, feature_shards.filename, vector_shards.filename from images join "
                       "feature_shards on images.shard_id = feature_shards.id join vector_shards on "
                       "images.vector_shard_id = vector_shards.id")
        located[db] = {name: (shard, vectors) for name, shard, vectors in rows}
    assert located[a].keys() == located[b].keys() and len(located[a]) > 0
    with FeatureReader(a / "features") as reader_a, FeatureReader(b / "features") as reader_b:
        for name in located[a]:
            fa, fb = reader_a.features(located[a][name][0], name), reader_b.features(located[b][name][0], name)
            np.testing.assert_array_equal(fa.keypoints, fb.keypoints)
            np.testing.assert_array_equal(fa.descriptors, fb.descriptors)  # both stored as float16
            va = read_vectors(a / "vectors" / located[a][name][1])[1][name]
            vb = read_vectors(b / "vectors" / located[b][name][1])[1][name]
            np.testing.assert_allclose(va, vb, atol=1e-3)
    for db in (a, b):
        assert audit(Layout.at(db), deep=True).clean


def test_a_ray_index_equals_a_single_process_index(cluster: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Run from a folder holding a `glueloc` package of its own (as a checkout does): Ray puts the
    # driver's directory first on its workers' path unless glueloc keeps it out (a CI run caught it).
    (workdir / "elsewhere" / "glueloc").mkdir(parents=True)
    (workdir / "elsewhere" / "glueloc" / "__init__.py").write_text("raise ImportError('not the installed glueloc')\n")
    monkeypatch.chdir(workdir / "elsewhere")
    local = workdir / "local"
    run_index(local, workdir / "labels.csv", workdir / "images", batch_size=5)
    assert run(ray_runner(workdir / "on-ray", cluster, batch_size=5), workdir).added == 24
    assert_same_index(local, workdir / "on-ray")
    assert sql(workdir / "on-ray", "select count(*) from feature_shards") == [(5,)]  # 24 images in batches of 5


def test_a_killed_worker_is_restarted_and_the_run_completes(cluster: str, workdir: Path) -> None:
    killed: list[int] = []

    def kill_a_worker_after_the_first_commit(_: int) -> None:
        if not killed and runner.cluster is not None:
            killed.append(runner.cluster.worker_pids[0])
            os.kill(killed[0], signal.SIGKILL)  # its queued batches are still to come

    runner = ray_runner(workdir / "db", cluster, batch_size=2, progress=kill_a_worker_after_the_first_commit)
    summary = run(runner, workdir)
    assert killed and summary.added == 24 and summary.rejected == 0
    local = workdir / "local"
    run_index(local, workdir / "labels.csv", workdir / "images", batch_size=2)
    assert_same_index(local, workdir / "db")


def test_a_killed_driver_leaves_a_clean_database_and_a_rerun_completes(cluster: str, workdir: Path) -> None:
    db = workdir / "db"
    args = ["index", str(workdir / "labels.csv"), "--images", str(workdir / "images"), "--db", str(db), "--ray",
            cluster, "--batch-size", "2", "--extractor", "sift", "--embedder", "none", "--no-progress"]
    driver = subprocess.Popen(glueloc_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=environment())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None:
        if run_count(db) > 0 and len(image_names(db)) >= 4:
            break
        time.sleep(0.05)
    assert driver.poll() is None, "the driver ended before it could be killed"
    driver.kill()
    driver.communicate(timeout=60)
    committed = image_names(db)
    assert 4 <= len(committed) < 24
    report = audit(Layout.at(db), deep=True)
    assert report.clean, [finding.message for finding in report.errors]
    rerun = subprocess.run(glueloc_command(*args), capture_output=True, text=True, env=environment(), timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-1000:]
    assert f"skipped {len(committed)}" in rerun.stdout
    assert sorted(image_names(db)) == sorted(row.name for row in read_labels(workdir / "labels.csv", workdir / "images"))
    assert audit(Layout.at(db), deep=True).clean
