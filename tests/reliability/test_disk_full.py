"""Resource edges: the disk fills up (or a file-size limit is hit) in the middle of indexing.

Two ways to run out, each at many sizes so the failure lands in different places (a
feature shard, a vector shard, the FAISS file, SQLite's journal, the codebook):

- a small tmpfs mounted for the database (needs root; skipped with the reason otherwise),
  grown again after the failure so the re-run can finish;
- ``RLIMIT_FSIZE`` on the index process (any user): a write past the limit fails with
  EFBIG (Python ignores SIGXFSZ), as a full disk would.

Each failure must be one ``error:`` line with exit 1 (no traceback), the database must
audit clean right after, and the same command with room again must finish the set with
every image exactly once.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import uuid
from collections import Counter
from pathlib import Path

import pytest

from glueloc.synthetic import SyntheticDataset
from tests.reliability.common import (deep_audit_clean, environment, glueloc_command, image_names, index_args, labels,
                                      record, run_cli)

pytestmark = pytest.mark.slow


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def check_failure(db: Path, failed: subprocess.CompletedProcess[str], counts: Counter[str], problems: list[str],
                  label: str) -> None:
    """The failed run: one line, exit 1; the database it left audits clean."""
    if failed.returncode == 0:
        counts["runs that fitted (no failure)"] += 1
    else:
        lines = [line for line in failed.stderr.splitlines() if line.strip()]
        if failed.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: could not write to "):
            counts["clean one-line failures"] += 1
        else:
            problems.append(f"{label}: exit {failed.returncode}: {failed.stderr[-400:]}")
    if (db / "glueloc.sqlite").exists():
        audit_run = run_cli("audit", "--db", str(db))
        counts["audits right after"] += 1
        if audit_run.returncode == 0:
            counts["audits clean right after"] += 1
        else:
            problems.append(f"{label}: audit after the failure: {audit_run.stdout[-300:]}")


def finish(db: Path, args: list[str], expected: set[str], counts: Counter[str], problems: list[str], label: str) -> None:
    rerun = run_cli(*args)
    names = image_names(db) if (db / "glueloc.sqlite").exists() else []
    clean, messages = deep_audit_clean(db) if names else (False, ["no database"])
    if rerun.returncode != 0 or set(names) != expected or len(names) != len(set(names)) or not clean:
        problems.append(f"{label}: re-run exit {rerun.returncode}, {len(names)} rows, audit {messages[:2]}: "
                        f"{rerun.stderr[-200:]}")
    else:
        counts["re-runs complete and clean"] += 1


def test_file_size_limit(tmp_path: Path, big_scene: SyntheticDataset) -> None:
    csv, images = big_scene.labels_csv, big_scene.images_dir
    expected = set(labels(csv))
    reference = tmp_path / "reference"
    assert run_cli(*index_args(csv, images, reference, 4)).returncode == 0
    largest = max(p.stat().st_size for p in reference.rglob("*") if p.is_file())
    counts: Counter[str] = Counter()
    problems: list[str] = []
    limits = sorted({int(largest * f) for f in (0.002, 0.01, 0.03, 0.06, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 0.95)})
    for limit in limits:
        db = tmp_path / f"db-{limit}"
        args = index_args(csv, images, db, 4)

        def cap(limit: int = limit) -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        failed = subprocess.run(glueloc_command(*args), capture_output=True, text=True, env=environment(),
                                timeout=300, preexec_fn=cap)
        check_failure(db, failed, counts, problems, f"limit {limit} bytes")
        finish(db, args, expected, counts, problems, f"limit {limit} bytes")
    record("disk_full_rlimit", {"limits tried": len(limits), "largest file (bytes)": largest, **counts,
                                "problems": problems})
    print(dict(counts), problems[:3])
    assert not problems, "\n".join(problems[:5])
    assert counts["clean one-line failures"] >= len(limits) - 2


def _mount_tmpfs(where: Path, size: int) -> str | None:
    where.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", f"glueloc-{uuid.uuid4().hex[:6]}", str(where)],
                            capture_output=True, text=True)
    return None if result.returncode == 0 else (result.stderr.strip() or "mount failed")


def test_full_disk(tmp_path: Path, big_scene: SyntheticDataset) -> None:
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    csv, images = big_scene.labels_csv, big_scene.images_dir
    expected = set(labels(csv))
    reference = tmp_path / "reference"
    assert run_cli(*index_args(csv, images, reference, 4)).returncode == 0
    full = tree_bytes(reference)
    probe = tmp_path / "probe"
    reason = _mount_tmpfs(probe, 1 << 20)
    if reason:
        record("disk_full_tmpfs", {"skipped": reason})
        pytest.skip(f"cannot mount a tmpfs here: {reason}")
    subprocess.run(["umount", str(probe)], check=True)
    counts: Counter[str] = Counter()
    problems: list[str] = []
    sizes = sorted({max(64 << 10, int(full * f)) for f in (0.05, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.0)})
    for size in sizes:
        mount = tmp_path / f"disk-{size}"
        assert _mount_tmpfs(mount, size) is None
        try:
            db = mount / "db"
            args = index_args(csv, images, db, 4)
            failed = run_cli(*args)
            check_failure(db, failed, counts, problems, f"disk of {size} bytes")
            subprocess.run(["mount", "-o", f"remount,size={4 * full}", str(mount)], check=True)
            finish(db, args, expected, counts, problems, f"disk of {size} bytes")
        finally:
            subprocess.run(["umount", "-l", str(mount)], check=False)
    record("disk_full_tmpfs", {"disk sizes tried": len(sizes), "full database (bytes)": full, **counts,
                               "problems": problems})
    print(dict(counts), problems[:3])
    assert not problems, "\n".join(problems[:5])
    assert counts["clean one-line failures"] >= len(sizes) - 2
