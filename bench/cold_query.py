"""What one cold ``glueloc query photo.jpg`` costs, from process start to answer, split by step.

Runs ``glueloc query`` in a fresh process for each of ``--queries`` dev photos (the first
ones of query.csv), times the whole process from the outside, and reads the split the
command prints itself: ``opened in:`` (snapshot — catalogue, FAISS, mapped vote segments —,
models — extractor, matcher, embedder weights —, votes) and ``seconds:`` (extract, embed,
retrieve, votes, verify, decide). What is left of the wall time is Python start-up and
imports. The page cache is warm after the first run (as for a user querying twice).

    python bench/cold_query.py --db bench/out/getty [--queries 5]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def parse(line: str) -> dict[str, float]:
    items = line.split(":", 1)[1].split(",")
    return {key: float(value) for key, value in (item.split() for item in items)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "benchdata" / "getty")
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    glueloc = shutil.which("glueloc")
    if glueloc is None:
        raise SystemExit("error: the glueloc command is not installed (make install)")
    with open(args.data / "query.csv", newline="") as handle:
        names = [row["name"] for row in csv.DictReader(handle)][: args.queries]
    rows = []
    for name in names:
        clock = time.perf_counter()
        done = subprocess.run([glueloc, "query", str(args.data / "query" / name), "--db", str(args.db)],
                              capture_output=True, text=True)
        wall = time.perf_counter() - clock
        lines = done.stdout.splitlines()
        opened = parse(next(line for line in lines if line.startswith("opened in:")))
        seconds = parse(next(line for line in lines if line.startswith("seconds:")))
        query = seconds.pop("total")
        open_total = sum(opened.values())
        rows.append({"photo": name, "wall": wall, "startup_and_imports": wall - open_total - query,
                     **{f"open {k}": v for k, v in opened.items()}, **seconds, "query": query,
                     "exit": done.returncode})
        print(json.dumps(rows[-1]), flush=True)
    keys = [k for k in rows[0] if k not in ("photo", "query", "exit")]
    print("| step | median s |\n|---|---|")
    for key in keys:
        print(f"| {key} | {np.median([r[key] for r in rows]):.2f} |")
    print(f"| query (extract to decide) | {np.median([r['query'] for r in rows]):.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
