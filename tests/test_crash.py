"""A killed index run loses nothing: audit is clean, and the same command finishes the set.

These run the real CLI in a subprocess and kill it with SIGKILL (no chance to clean
up) or SIGINT/SIGTERM (the clean stop) while batches are being committed.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from glueloc.storage.audit import audit
from glueloc.storage.layout import Layout



def start_index(workdir: Path, db: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)  # glueloc as installed (editable or the wheel), nothing from PYTHONPATH
    return subprocess.Popen(
        [sys.executable, "-m", "glueloc", "index", str(workdir / "labels.csv"), "--images", str(workdir / "images"),
         "--db", str(db), "--batch-size", "2", "--no-progress", "--extractor", "sift"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=workdir,
    )


def wait_for_commits(db: Path, at_least: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """Block until ``at_least`` batches are committed (or the process ended); returns the count."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with sqlite3.connect(f"file:{db / 'glueloc.sqlite'}?mode=ro", uri=True, timeout=5) as connection:
                count = connection.execute("select count(*) from feature_shards").fetchone()[0]
            if count >= at_least:
                return count
        except sqlite3.OperationalError:
            pass  # not created yet
        time.sleep(0.02)
    return -1


def assert_complete(db: Path, expected_names: set[str]) -> None:
    report = audit(Layout.at(db), deep=True)
    assert report.clean, [f.message for f in report.errors]
    with sqlite3.connect(db / "glueloc.sqlite") as connection:
        names = [row[0] for row in connection.execute("select name from images")]
    assert len(names) == len(set(names)), "an image was indexed twice"
    assert set(names) == expected_names, "an image was lost"
    assert report.vectors == len(expected_names)


def expected(workdir: Path) -> set[str]:
    lines = (workdir / "labels.csv").read_text().splitlines()[1:]
    return {line.split(",")[0] for line in lines}


@pytest.mark.parametrize("kills", [1, 3])
def test_sigkill_mid_run_then_rerun_completes(workdir: Path, kills: int) -> None:
    db = workdir / "db"
    for attempt in range(kills):
        process = start_index(workdir, db)
        committed = wait_for_commits(db, at_least=2 + 3 * attempt, process=process)
        time.sleep(0.05 * attempt)  # vary the moment inside a batch
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        assert committed > 0
        report = audit(Layout.at(db))
        assert report.clean, [f.message for f in report.errors]
    rerun = start_index(workdir, db)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err.decode()
    assert "skipped" in out.decode()
    assert_complete(db, expected(workdir))
    leftovers = [p.name for p in (db / "features").iterdir()] + [p.name for p in (db / "vectors").iterdir()]
    assert not any(name.startswith(".tmp-") for name in leftovers)
    with sqlite3.connect(db / "glueloc.sqlite") as connection:
        outcomes = [row[0] for row in connection.execute("select outcome from index_runs order by id")]
    assert outcomes == ["interrupted"] * kills + ["completed"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_clean_stop_records_interruption(workdir: Path, signum: int) -> None:
    db = workdir / "db"
    process = start_index(workdir, db)
    assert wait_for_commits(db, at_least=2, process=process) > 0
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err.decode()
    assert "interrupted" in err.decode() and "Traceback" not in err.decode()
    with sqlite3.connect(db / "glueloc.sqlite") as connection:
        (outcome,) = connection.execute("select outcome from index_runs").fetchone()
    assert outcome == "interrupted"
    assert audit(Layout.at(db)).clean
    rerun = start_index(workdir, db)
    assert rerun.wait(timeout=120) == 0
    assert_complete(db, expected(workdir))
