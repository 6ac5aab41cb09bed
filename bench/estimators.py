"""Compare position estimators offline, on the verified neighbours ``glueloc evaluate --json`` saved.

Verification is the expensive part of a query; the estimators that turn verified
neighbours into a position are cheap, so they can be compared on one evaluation run:

    glueloc evaluate query.csv --images query/ --db DB --json eval.json
    python bench/estimators.py eval.json --labels ../shared/benchdata/getty/db.csv

Prints MAE (mean |dx| + |dy|), median, share within 2 units and gross failures (> 20
units) for retrieval top-1 and each estimator of ``query.estimators`` with its default
thresholds (15 inliers, 5 units, top 3) — fixed by hand, not tuned on these queries.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from glueloc.query.estimators import ESTIMATORS, estimate  # noqa: E402
from glueloc.query.evidence import Neighbour  # noqa: E402

def records_neighbours(record: dict, where: dict[str, tuple[float, float]]) -> list[Neighbour]:
    """The verified neighbours of one evaluated query, as the estimators take them."""
    similarity = dict((name, s) for name, s, *_ in record["shortlist"])
    # entries are [name, inliers] or, from a calibrated database, [name, inliers, probability]
    return [Neighbour(0, entry[0], *where[entry[0]], similarity.get(entry[0], 0.0), 0, int(entry[1]), 0.0)
            for entry in record["neighbours"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evaluation", type=Path)
    parser.add_argument("--labels", type=Path, required=True, help="the database's labels CSV (name,x,y)")
    args = parser.parse_args()
    with open(args.labels, newline="", encoding="utf-8-sig") as handle:
        where = {r["name"]: (float(r["x"]), float(r["y"])) for r in csv.DictReader(handle)}
    records = [r for r in json.loads(args.evaluation.read_text())["queries"] if "true" in r]
    print(f"{len(records)} queries from {args.evaluation}")
    print("| estimator | MAE | median | within 2 | > 20 units |")
    print("|---|---|---|---|---|")
    rows = [("retrieval top-1", None)] + [(name, name) for name in ESTIMATORS]
    for label, method in rows:
        errors = []
        for r in records:
            if method is None:
                x, y = where[r["shortlist"][0][0]]
            else:
                answer = estimate(records_neighbours(r, where), method)
                x, y = answer.x, answer.y
            errors.append(abs(x - r["true"][0]) + abs(y - r["true"][1]))
        e = np.array(errors)
        print(f"| {label} | {e.mean():.2f} | {np.median(e):.2f} | {(e <= 2).mean():.0%} | {(e > 20).sum()} |")


if __name__ == "__main__":
    main()
