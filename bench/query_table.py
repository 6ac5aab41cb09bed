"""Issue 5's benchmark table: the seed method against glueloc, on the same queries.

Rows: (a) the seed method (``bench/seed.py``: exhaustive matching, copy the image with
the most matches) on its fixed 10-query sample; (b) retrieval only (the position of the
VLAD top-1, which the fused shortlist lists first); (c) glueloc's default query; (d)
glueloc on a SIFT database — (a)–(c) on the sample, (b)–(d) on every dev query. (b) and
(c) come from one ``glueloc evaluate --json`` run on the default database (the shortlist
it saves is the retrieval answer; its seconds are the extract + retrieve stages), (d)
from an evaluate run on a SIFT one (without ``--seed``, name the sample with ``--sample``
and row (a) is left out):

    python bench/seed.py DB query.csv --images query/ --out seed/        # hours; resumable
    glueloc evaluate query.csv --images query/ --db DB --json default.json
    glueloc evaluate query.csv --images query/ --db SIFT_DB --json sift.json
    python bench/query_table.py --seed seed/ --default default.json --sift sift.json \\
        --labels ../shared/benchdata/getty/db.csv [--before no-resection.json]

(``--before``: the default database evaluated with ``--no-resection``; the table then
also says how many answers resection moved and what it did to their errors.)
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np


def metrics(errors: list[float], seconds: list[float]) -> str:
    e = np.array(errors)
    return (f"{len(e)} | {e.mean():.2f} | {np.median(e):.2f} | {(e <= 2).mean():.0%} | {(e > 20).sum()} | "
            f"{np.median(seconds):.2f}")


def analysis(records: dict, where: dict[str, tuple[float, float]]) -> None:
    """Where the default's error comes from: retrieval misses, wrong choices, copying."""
    places = np.array(sorted(set(where.values())))
    rows = []
    for record in records.values():
        truth = np.array(record["true"])
        shortlist = [abs(where[name][0] - truth[0]) + abs(where[name][1] - truth[1]) for name, *_ in record["shortlist"]]
        nearest = float(np.abs(places - truth).sum(1).min())
        rows.append((record["error"], min(shortlist), nearest))
    error, best, nearest = (np.array(column) for column in zip(*rows))
    miss, gross = best > 5, error > 20
    chosen_near = ~miss & (error <= best + 5)
    print(f"analysis of the default on {len(error)} queries: MAE {error.mean():.2f}")
    print(f"  nearest db position (oracle for copying): MAE {nearest.mean():.3f}")
    print(f"  best of the verified shortlist (hindsight): MAE {best.mean():.2f}, {(best > 20).sum()} gross")
    print(f"  no shortlisted photo within 5 units: {miss.sum()} queries, {error[miss].sum() / error.sum():.0%} of the MAE")
    print(f"  gross failures: {gross.sum()}, {error[gross].sum() / error.sum():.0%} of the MAE, "
          f"{(gross & miss).sum()} of them retrieval misses")
    print(f"  a near photo was shortlisted but a place > 5 units worse chosen: {(~miss & ~chosen_near).sum()} queries, "
          f"{error[~miss & ~chosen_near].sum() / error.sum():.0%} of the MAE")
    print(f"  answered near the truth: {chosen_near.sum()} queries, mean error {error[chosen_near].mean():.2f} "
          f"(nearest db position: {nearest[chosen_near].mean():.2f})")


def resection(before: dict, after: dict) -> None:
    """What resection changed: the answers it moved, and their errors before and after."""
    moved = [n for n in after if n in before and
             abs(after[n]["predicted"][0] - before[n]["predicted"][0]) + abs(after[n]["predicted"][1] - before[n]["predicted"][1]) > 1e-9]
    old = np.array([before[n]["error"] for n in moved])
    new = np.array([after[n]["error"] for n in moved])
    everything = np.array([before[n]["error"] for n in after if n in before])
    print(f"resection: moved {len(moved)} of {len(after)} answers; on them mean error {old.mean():.2f} -> {new.mean():.2f} "
          f"({(new < old).sum()} better, {(new > old).sum()} worse); MAE over all {everything.mean():.3f} without it")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=Path, help="bench/seed.py's output folder (without it, row (a) is not printed)")
    parser.add_argument("--sample", nargs="+", help="the sample's query names, when --seed is not given")
    parser.add_argument("--default", type=Path, required=True, help="evaluate --json of the default database")
    parser.add_argument("--sift", type=Path, required=True, help="evaluate --json of a SIFT database")
    parser.add_argument("--labels", type=Path, required=True, help="the database's labels CSV (name,x,y)")
    parser.add_argument("--before", type=Path,
                        help="evaluate --json of the same database with --no-resection: what resection changed")
    args = parser.parse_args()
    with open(args.labels, newline="", encoding="utf-8-sig") as handle:
        where = {r["name"]: (float(r["x"]), float(r["y"])) for r in csv.DictReader(handle)}
    seed = {p.name.removesuffix(".json"): json.loads(p.read_text()) for p in sorted(args.seed.glob("*.json"))} \
        if args.seed else {}
    default = {r["name"]: r for r in json.loads(args.default.read_text())["queries"] if "true" in r}
    sift = {r["name"]: r for r in json.loads(args.sift.read_text())["queries"] if "true" in r}
    sample = sorted(seed) if seed else sorted(args.sample or [])
    if not sample:
        parser.error("give --seed, or the sample's names with --sample")

    def error(record: dict, x: float, y: float) -> float:
        return abs(x - record["true"][0]) + abs(y - record["true"][1])

    def seed_row(names: list[str]) -> str:
        errors, seconds = [], []
        for name in names:
            best = max(seed[name]["pairs"], key=lambda p: p[3])  # most matches
            errors.append(error(seed[name], best[1], best[2]))
            seconds.append(seed[name]["seconds"])
        return metrics(errors, seconds)

    def retrieval_row(records: dict, names: list[str]) -> str:
        errors = [error(records[n], *where[records[n]["shortlist"][0][0]]) for n in names]
        seconds = [records[n]["seconds"]["extract"] + records[n]["seconds"]["retrieve"] for n in names]
        return metrics(errors, seconds)

    def glueloc_row(records: dict, names: list[str]) -> str:
        errors = [error(records[n], *records[n]["predicted"]) for n in names]
        return metrics(errors, [records[n]["seconds"]["total"] for n in names])

    everything = sorted(default)
    analysis(default, where)
    if args.before:
        before = {r["name"]: r for r in json.loads(args.before.read_text())["queries"] if "true" in r}
        resection(before, default)
    print(f"sample ({len(sample)} queries): {', '.join(sample)}")
    print("| method | queries | MAE | median | within 2 | > 20 units | median s/query |")
    print("|---|---|---|---|---|---|---|")
    if seed:
        print(f"| (a) seed: match all {len(where)} db images, copy most matches (sample) | {seed_row(sample)} |")
    print(f"| (b) retrieval only, VLAD top-1 (sample) | {retrieval_row(default, sample)} |")
    print(f"| (c) glueloc default (sample) | {glueloc_row(default, sample)} |")
    print(f"| (d) glueloc with SIFT (sample) | {glueloc_row(sift, sample)} |")
    print(f"| (b) retrieval only, VLAD top-1 (all) | {retrieval_row(default, everything)} |")
    print(f"| (c) glueloc default (all) | {glueloc_row(default, everything)} |")
    print(f"| (d) glueloc with SIFT (all) | {glueloc_row(sift, sorted(sift))} |")


if __name__ == "__main__":
    main()
