"""The bad-input corpus: every malformed input gets a clear answer and loses nothing.

Each image case is tried twice — added by ``glueloc index`` beside one good new image,
and asked about with ``glueloc query`` — and each CSV case once, always through the
real command line (in-process, so 200+ cases take a minute). What must hold:

- no traceback, ever; an error is one ``error:`` line per problem, with a non-zero exit;
- a refused CSV leaves the database byte-identical;
- a rejected image is reported (``rejected: NAME: reason``, exit 1) while the good row
  lands; afterwards a deep audit is clean and the database holds exactly the images
  that were accepted;
- a query of a rejected image fails with one line (exit 2), of an accepted one answers.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glueloc.cli import app
from glueloc.synthetic import SyntheticDataset
from tests.helpers import run_index, tree_digest
from tests.reliability.common import deep_audit_clean, image_names, record
from tests.reliability.corpus import ACCEPTED, REFUSED, csv_cases, image_cases

pytestmark = pytest.mark.slow

runner = CliRunner()


def invoke(*args: object):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, scene: SyntheticDataset) -> tuple[Path, Path, str]:
    """A database of every scene image but one (the 'good' row each case adds), and its images."""
    root = tmp_path_factory.mktemp("bad-inputs")
    lines = scene.labels_csv.read_text().splitlines()
    (root / "labels.csv").write_text("\n".join(lines[:-1]) + "\n")
    good = lines[-1].split(",")[0]
    run_index(root / "db", root / "labels.csv", scene.images_dir, batch_size=8)
    return root / "db", scene.images_dir, good


def fresh(tmp_path: Path, base: tuple[Path, Path, str]) -> tuple[Path, Path, Path]:
    db, images, _ = base
    shutil.copytree(db, tmp_path / "db")
    shutil.copytree(images, tmp_path / "images", symlinks=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.jpg").write_bytes((images / sorted(p.name for p in images.iterdir())[0]).read_bytes())
    return tmp_path / "db", tmp_path / "images", tmp_path / "outside"


def clear_failure(output: str, code: int) -> bool:
    lines = [line for line in output.splitlines() if line.strip()]
    return code != 0 and "Traceback" not in output and bool(lines) and all(
        line.startswith(("error: ", "rejected: ", "run ")) for line in lines)


def test_bad_input_corpus(tmp_path: Path, base: tuple[Path, Path, str]) -> None:
    good = base[2]
    before = set(image_names(base[0]))
    outcomes: Counter[str] = Counter()
    problems: list[str] = []
    images_cases, text_cases = image_cases(), csv_cases()

    for number, case in enumerate(images_cases):
        work = tmp_path / f"image{number:03d}"
        db, images, _ = fresh(work, base)
        case.make(images / case.filename)
        (work / "labels.csv").write_text(f"name,x,y\n{case.filename},3,4\n{good},1.5,2.5\n")
        result = invoke("index", work / "labels.csv", "--images", images, "--db", db, "--no-progress")
        want = before | {good} | ({case.filename} if case.expect == ACCEPTED else set())
        names = image_names(db)
        clean, messages = deep_audit_clean(db)
        ok = (clean and sorted(names) == sorted(want) and "Traceback" not in result.output
              and (result.exception is None or isinstance(result.exception, SystemExit)))
        if case.expect == ACCEPTED:
            ok = ok and result.exit_code == 0
        else:
            ok = ok and result.exit_code == 1 and f"rejected: {case.filename}: " in result.output \
                and clear_failure(result.output, result.exit_code)
        outcomes[f"index: image {case.expect}"] += 1
        if not ok:
            problems.append(f"index {case.label}: exit {result.exit_code}, audit {messages[:1]}, "
                            f"{len(names)} images: {result.output.strip()[-300:]}")
        # The same file as a query against the same database.
        query = invoke("query", images / case.filename, "--db", db)
        outcomes[f"query: image {case.expect}"] += 1
        if case.expect == ACCEPTED:
            ok = query.exit_code == 0 and "Traceback" not in query.output
        else:
            lines = query.output.strip().splitlines()
            ok = query.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
        if not ok:
            problems.append(f"query {case.label}: exit {query.exit_code}: {query.output.strip()[-300:]}")

    for number, case in enumerate(text_cases):
        work = tmp_path / f"csv{number:03d}"
        db, images, outside = fresh(work, base)
        if case.prepare:
            case.prepare(images, outside, good)
        (work / "labels.csv").write_bytes(case.text.replace(b"{good}", good.encode()))
        digest = tree_digest(db)
        result = invoke("index", work / "labels.csv", "--images", images, "--db", db, "--no-progress")
        outcomes[f"csv {case.expect}"] += 1
        if case.expect == REFUSED:
            ok = result.exit_code == 2 and clear_failure(result.output, 2) and tree_digest(db) == digest
        else:
            clean, _ = deep_audit_clean(db)
            landed = good in image_names(db) or case.text.count(b"{good}") == 0
            want_code = 0 if case.expect == ACCEPTED else 1
            ok = result.exit_code == want_code and clean and landed and "Traceback" not in result.output
        if not ok:
            problems.append(f"csv {case.label}: exit {result.exit_code}: {result.output.strip()[-300:]}")

    figures = {"image files": len(images_cases), "csv files": len(text_cases),
               "cases (image cases run twice: index and query)": 2 * len(images_cases) + len(text_cases),
               **outcomes, "handled as specified": 2 * len(images_cases) + len(text_cases) - len(problems),
               "problems": problems,
               "labels": {"image": [[c.label, c.expect] for c in images_cases],
                          "csv": [[c.label, c.expect] for c in text_cases]}}
    record("bad_inputs", figures)
    print({k: v for k, v in figures.items() if k != "labels"})
    assert len(images_cases) * 2 + len(text_cases) >= 200
    assert not problems, "\n".join(problems)
