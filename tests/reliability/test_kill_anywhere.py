"""Kill anywhere: index runs killed at a random moment lose nothing and duplicate nothing.

Each trial starts a real ``glueloc index`` (or ``glueloc reindex --retrain``, or
``glueloc remove``) in a subprocess, sends SIGKILL (most trials), SIGINT or SIGTERM at a
random moment between its start and a little past its expected end, then runs
``glueloc audit`` and the same command again, and finally checks with a deep audit that
every labelled image is indexed exactly once. Four situations rotate so kills land in
every phase: a new database (first batches, codebook training, the first FAISS file), an
existing database growing (vectors appended with a trained codebook), a codebook retrain
(every vector replaced in one commit) and a removal (rows, a shard and FAISS ids retired
in one commit). A killed removal must have left the database exactly before or exactly
after it; re-run after it went through, ``glueloc remove`` refuses in one line (none of
the names is indexed any more), which is its right answer.

Trials go on until ``GLUELOC_KILL_RUNS`` signals (default 100) have hit a running process; a
run that finished before its signal is counted apart.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from glueloc.synthetic import SyntheticDataset
from tests.reliability.common import (deep_audit_clean, image_names, index_args, labels, one_line_errors, record,
                                      run_cli, run_count, start_cli)
from tests.reliability.conftest import copy_db

pytestmark = pytest.mark.slow

SCENARIOS = ("new database", "growing database", "reindex --retrain", "remove")
#: Images the remove scenario retires from the half database, in id order: its first shard
#: (batches of 4) whole, so a shard is collected, and one image of the second.
REMOVED = 5


def plan(trial: int) -> tuple[str, int]:
    """The scenario and signal of one trial: SIGKILL mostly; every tenth trial a clean stop,
    SIGINT and SIGTERM in turn, each pair on the next scenario, so that both clean stops hit
    every scenario (a plain rotation would give them only every other one)."""
    if trial % 10 == 9:
        return SCENARIOS[(trial // 20) % len(SCENARIOS)], (signal.SIGINT, signal.SIGTERM)[(trial // 10) % 2]
    return SCENARIOS[trial % len(SCENARIOS)], signal.SIGKILL


def removal(db: Path) -> list[str]:
    with sqlite3.connect(f"file:{db / 'glueloc.sqlite'}?mode=ro", uri=True, timeout=30) as connection:
        return [row[0] for row in connection.execute("select name from images order by id limit ?", (REMOVED,))]


def remove_args(names: list[str], db: Path) -> list[str]:
    return ["remove", *names, "--db", str(db)]


def last_outcome(db: Path) -> str | None:
    with sqlite3.connect(f"file:{db / 'glueloc.sqlite'}?mode=ro", uri=True, timeout=30) as connection:
        row = connection.execute("select outcome from index_runs order by id desc limit 1").fetchone()
    return None if row is None else row[0]


def timed_full_run(args: list[str]) -> float:
    clock = time.monotonic()
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    return time.monotonic() - clock


def test_kill_anywhere(tmp_path: Path, big_scene: SyntheticDataset, half_indexed: tuple[Path, Path]) -> None:
    trials = int(os.environ.get("GLUELOC_KILL_RUNS", "100"))
    half_db, full_csv = half_indexed
    images = big_scene.images_dir
    expected = set(labels(full_csv))
    retired = removal(half_db)
    half = set(image_names(half_db))
    assert set(retired) < half
    # How long an uninterrupted run of each kind takes here: kills are drawn over that span.
    durations = {
        "new database": timed_full_run(index_args(full_csv, images, tmp_path / "t-new", 2)),
        "growing database": timed_full_run(index_args(full_csv, images, copy_db(half_db, tmp_path / "t-grow"), 2)),
        "reindex --retrain": timed_full_run(["reindex", "--db", str(copy_db(half_db, tmp_path / "t-re")), "--retrain"]),
        "remove": timed_full_run(remove_args(retired, copy_db(half_db, tmp_path / "t-rm"))),
    }
    rng = random.Random(20261125)
    counts: Counter[str] = Counter()
    problems: list[str] = []
    trial = 0
    while counts["kills delivered"] < trials and trial < 2 * trials:  # a run that ends first is not a kill
        trial += 1
        scenario, signum = plan(trial)
        db = tmp_path / f"db{trial:03d}"
        if scenario == "new database":
            args, want = index_args(full_csv, images, db, 2), expected
        elif scenario == "growing database":
            copy_db(half_db, db)
            args, want = index_args(full_csv, images, db, 2), expected
        elif scenario == "reindex --retrain":
            copy_db(half_db, db)
            args, want = ["reindex", "--db", str(db), "--retrain"], set(image_names(db))
        else:
            copy_db(half_db, db)
            args, want = remove_args(retired, db), half - set(retired)
        delay = rng.uniform(0.0, 1.1 * durations[scenario])
        runs_before = run_count(db)
        process = start_cli(*args)
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signum)
            counts["kills delivered"] += 1
            counts[f"killed ({signal.Signals(signum).name})"] += 1
        else:
            counts["finished before the signal"] += 1
        _, err = process.communicate(timeout=120)
        if process.returncode == -signum and signum != signal.SIGKILL:
            # The default action ran: either before the interpreter installed any handler
            # (then nothing may have been written) or after the command had finished and the
            # interpreter was tearing down (then its run must be recorded as completed).
            if run_count(db) == runs_before:
                counts["stopped before Python started (nothing written)"] += 1
            elif last_outcome(db) == "completed":
                counts["stopped while exiting after the run completed"] += 1
            else:
                problems.append(f"trial {trial}: killed by the default {signal.Signals(signum).name} action mid-run")
        elif signum != signal.SIGKILL and ("Traceback" in err or process.returncode not in (0, 130, 128 + signum)):
            problems.append(f"trial {trial}: exit {process.returncode} on {signal.Signals(signum).name}: {err[-300:]}")
        audit_run = run_cli("audit", "--db", str(db))
        if db.exists() and (db / "glueloc.sqlite").exists():
            counts["audits after the kill"] += 1
            if audit_run.returncode == 0:
                counts["audits clean after the kill"] += 1
            else:
                problems.append(f"trial {trial} ({scenario}, {delay:.2f} s): audit: {audit_run.stdout[-400:]}")
        else:
            counts["killed before the database existed"] += 1
        removed_already = False
        if scenario == "remove" and (db / "glueloc.sqlite").exists():
            now = image_names(db)
            removed_already = sorted(now) == sorted(want)
            if removed_already or sorted(now) == sorted(half):
                counts[f"removals {'done' if removed_already else 'not done'} after the signal"] += 1
            else:
                problems.append(f"trial {trial} (remove, {delay:.2f} s): neither before nor after: "
                                f"{len(now)} images, {sorted(set(retired) & set(now))[:3]} of the retired left")
        rerun = run_cli(*args)
        if removed_already:
            if rerun.returncode != 2 or "none of" not in rerun.stderr or not one_line_errors(rerun.stderr):
                problems.append(f"trial {trial} (remove): re-run after the removal went through: exit "
                                f"{rerun.returncode}: {rerun.stderr[-300:]}")
                continue
        elif rerun.returncode != 0:
            problems.append(f"trial {trial} ({scenario}): re-run exit {rerun.returncode}: {rerun.stderr[-300:]}")
            continue
        counts["re-runs completed"] += 1
        names = image_names(db)
        lost, duplicated = want - set(names), len(names) - len(set(names))
        counts["images lost"] += len(lost)
        counts["images duplicated"] += duplicated
        clean, messages = deep_audit_clean(db)
        counts["deep audits clean at the end"] += int(clean)
        if lost or duplicated or not clean:
            problems.append(f"trial {trial} ({scenario}, {delay:.2f} s): lost {sorted(lost)[:3]}, "
                            f"duplicated {duplicated}, audit {messages[:2]}")
    figures = {"runs started": trial, "images per run": len(expected),
               "scenarios": {s: round(d, 2) for s, d in durations.items()}, **counts, "problems": problems}
    record("kill_anywhere", figures)
    print(figures)
    assert not problems, problems[:5]
    assert counts["kills delivered"] >= trials
    assert counts["re-runs completed"] == trial
    assert counts["images lost"] == 0 and counts["images duplicated"] == 0
