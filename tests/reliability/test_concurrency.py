"""Concurrent use: queries while a writer commits, and two writers at once.

Readers: while ``glueloc index`` adds images (or ``glueloc reindex --retrain`` replaces
the codebook and every vector), the test process opens ``Localizer`` after
``Localizer`` and locates a query with each. Every query must succeed, and everything
it answers from must be committed: each shortlisted or verified name is in the snapshot
the Localizer took, and still in the database afterwards.

Writers: a second ``glueloc index`` started while the first runs, at a random moment,
— at the same moment as the first, or up to a second after the first has recorded its run
and so holds the lock — is refused with one line (the writer lock), or runs after it when
the first has already finished; never are the two interleaved. Afterwards the database audits clean
and holds every image exactly once.

Both run on the default SQLite catalogue and on PostgreSQL (tests/catalogues.py), where the
snapshot is a REPEATABLE READ transaction and the lock also an advisory lock on the server.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from glueloc.core.errors import DatabaseError
from glueloc.synthetic import SyntheticDataset
from glueloc.query.localizer import Localizer
from glueloc.storage.layout import Layout
from tests.reliability.common import (deep_audit_clean, image_names, index_args, labels, record, run_cli, run_count,
                                      start_cli)
from tests.catalogues import Catalogue
from tests.reliability.conftest import copy_db


def suite_name(suite: str, catalogue: Catalogue) -> str:
    """The figures' name: the SQLite run keeps the suite's own, a server's run says which."""
    return suite if catalogue.kind == "sqlite" else f"{suite}_{catalogue.kind}"

pytestmark = [pytest.mark.slow, pytest.mark.both_catalogues]

ROUNDS = 6


def test_queries_while_writing(tmp_path: Path, big_scene: SyntheticDataset, half_indexed: tuple[Path, Path],
                               catalogue: Catalogue) -> None:
    half_db, full_csv = half_indexed
    queries = sorted(big_scene.queries_dir.iterdir())
    counts: Counter[str] = Counter()
    problems: list[str] = []
    for round_ in range(ROUNDS):
        db = copy_db(half_db, tmp_path / f"db{round_}", catalogue)
        writer_kind = "index" if round_ % 2 == 0 else "reindex --retrain"
        args = index_args(full_csv, big_scene.images_dir, db, 1) if writer_kind == "index" else \
            ["reindex", "--db", str(db), "--retrain"]
        writer = start_cli(*args)
        sizes: list[int] = []
        while writer.poll() is None:
            query = queries[len(sizes) % len(queries)]
            try:
                with Localizer(Layout.at(db)) as localizer:
                    snapshot = {image.name for image in localizer.images.values()}
                    answer = localizer.locate(query)
            except DatabaseError as exc:  # a clear refusal is not an answer from uncommitted data
                counts[f"queries refused during {writer_kind}"] += 1
                problems.append(f"round {round_}: refused: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - any other failure is the finding
                problems.append(f"round {round_}: {type(exc).__name__}: {exc}")
                continue
            sizes.append(len(snapshot))
            counts[f"queries answered during {writer_kind}"] += 1
            used = {name for name, *_ in answer.candidates} | {n.name for n in answer.neighbours}
            if not used <= snapshot:
                problems.append(f"round {round_}: answer used {sorted(used - snapshot)} outside its snapshot")
            if not snapshot <= set(image_names(db)):
                problems.append(f"round {round_}: snapshot holds images that are not committed")
        _, err = writer.communicate(timeout=120)
        if writer.returncode != 0:
            problems.append(f"round {round_}: writer failed: {err[-300:]}")
        if sizes != sorted(sizes):
            problems.append(f"round {round_}: a later query saw fewer images ({sizes})")
        counts["distinct database sizes seen by queries"] += len(set(sizes))
        clean, messages = deep_audit_clean(db)
        counts["deep audits clean afterwards"] += int(clean)
        if not clean:
            problems.append(f"round {round_}: audit {messages[:2]}")
    record(suite_name("concurrent_queries", catalogue), {"rounds": ROUNDS, **counts, "problems": problems})
    print(dict(counts), problems[:3])
    assert not problems, problems[:5]
    assert counts["queries answered during index"] > 0 and counts["queries answered during reindex --retrain"] > 0


def wait_until_writing(db: Path, process: subprocess.Popen[str], timeout: float = 60.0) -> None:
    """Block until ``process`` has recorded its run (it then holds the writer lock) or ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if run_count(db) > 0:
            return
        time.sleep(0.02)


def test_two_writers(tmp_path: Path, big_scene: SyntheticDataset, catalogue: Catalogue) -> None:
    csv, images = big_scene.labels_csv, big_scene.images_dir
    expected = set(labels(csv))
    rng = random.Random(11)
    counts: Counter[str] = Counter()
    problems: list[str] = []
    trials = 12
    for trial in range(trials):
        db = catalogue.bind(tmp_path / f"db{trial}")
        first = start_cli(*index_args(csv, images, db, 2))
        if trial % 4:  # trials 0, 4, 8 start both at once; the others once the first holds the lock
            wait_until_writing(db, first)
            time.sleep(rng.uniform(0.0, 1.0))
        second = run_cli(*index_args(csv, images, db, 2))
        first.communicate(timeout=120)
        codes = (first.returncode, second.returncode)
        if second.returncode == 2 and "is being written by pid" in second.stderr:
            counts["second writer refused by the lock"] += 1
            if len(second.stderr.strip().splitlines()) != 1:
                problems.append(f"trial {trial}: refusal is not one line: {second.stderr!r}")
        elif second.returncode == 0:
            counts["second writer ran after the first (serialised)"] += 1
        else:
            problems.append(f"trial {trial}: second writer exit {second.returncode}: {second.stderr[-300:]}")
        if first.returncode not in (0, 2):
            problems.append(f"trial {trial}: first writer exit codes {codes}")
        finish = run_cli(*index_args(csv, images, db, 2))  # whoever lost, the set completes
        names = image_names(db)
        clean, messages = deep_audit_clean(db)
        if finish.returncode != 0 or set(names) != expected or len(names) != len(set(names)) or not clean:
            problems.append(f"trial {trial}: exit {finish.returncode}, {len(names)} rows, audit {messages[:2]}")
        else:
            counts["databases complete and clean"] += 1
    record(suite_name("two_writers", catalogue), {"trials": trials, **counts, "problems": problems})
    print(dict(counts), problems[:3])
    assert not problems, problems[:5]
