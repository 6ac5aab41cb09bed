"""Compare position estimators offline, on the verified neighbours ``glueloc evaluate --json`` saved.

Verification is the expensive part of a query; the estimators that turn verified
neighbours into a position are cheap, so they can be compared on one evaluation run:

    glueloc evaluate query.csv --images query/ --db DB --json eval.json
    python bench/estimators.py eval.json --labels ../shared/benchdata/getty/db.csv

Prints MAE (mean |dx| + |dy|), median, share within 2 units and gross failures (> 20
units) per estimator. Thresholds here are fixed by hand, not tuned: this is evidence for
the query issue, which must calibrate them on the database, not on the queries.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

Neighbour = tuple[float, float, int]  # x, y, inliers


def copy_best(ns: list[Neighbour], top1: tuple[float, float]) -> tuple[float, float]:
    best = max(ns, key=lambda n: n[2]) if ns else None
    return (best[0], best[1]) if best and best[2] > 0 else top1


def weighted_mean(ns: list[Neighbour], top1: tuple[float, float], n: int = 3, threshold: int = 15) -> tuple[float, float]:
    chosen = sorted([m for m in ns if m[2] >= threshold], key=lambda m: -m[2])[:n]
    if not chosen:
        return copy_best(ns, top1)
    w = np.array([m[2] for m in chosen], float)
    xy = np.array([(m[0], m[1]) for m in chosen])
    return tuple((w[:, None] * xy).sum(0) / w.sum())  # type: ignore[return-value]


def densest_cluster(ns: list[Neighbour], top1: tuple[float, float], radius: float = 5.0,
                    threshold: int = 15) -> tuple[float, float]:
    """Group verified neighbours within ``radius`` of each other; the group with the most
    inliers in total wins; its inlier-weighted mean is the answer."""
    verified = [m for m in ns if m[2] >= threshold]
    if not verified:
        return copy_best(ns, top1)
    best_score, best_members = -1.0, []
    for seed in verified:
        members = [m for m in verified if abs(m[0] - seed[0]) + abs(m[1] - seed[1]) <= radius]
        score = sum(m[2] for m in members)
        if score > best_score:
            best_score, best_members = score, members
    w = np.array([m[2] for m in best_members], float)
    xy = np.array([(m[0], m[1]) for m in best_members])
    return tuple((w[:, None] * xy).sum(0) / w.sum())  # type: ignore[return-value]


ESTIMATORS: dict[str, Callable[[list[Neighbour], tuple[float, float]], tuple[float, float]]] = {
    "retrieval top-1": lambda ns, top1: top1,
    "copy most inliers": copy_best,
    "inlier-weighted mean of top 3 (>= 15 inliers)": weighted_mean,
    "densest 5-unit cluster, weighted mean": densest_cluster,
}


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
    for name, estimate in ESTIMATORS.items():
        errors = []
        for r in records:
            ns = [(*where[n], int(i)) for n, i in r["neighbours"]]
            top1 = where[r["shortlist"][0][0]]
            x, y = estimate(ns, top1)
            errors.append(abs(x - r["true"][0]) + abs(y - r["true"][1]))
        e = np.array(errors)
        print(f"| {name} | {e.mean():.2f} | {np.median(e):.2f} | {(e <= 2).mean():.0%} | {(e > 20).sum()} |")


if __name__ == "__main__":
    main()
