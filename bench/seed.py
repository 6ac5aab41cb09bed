"""The seed method: match a query against *every* database image, copy the best one's position.

This is the baseline glueloc must beat (issue 5, row (a)): no retrieval, no estimator;
the database's own matcher (the default XFeat+LighterGlue) is run on all N query–db
pairs with the db features read from the index's HDF5 shards, and the position of the
image with the most matches is the answer. RANSAC inliers are recorded for every pair as
well, so "most inliers" can be reported beside "most matches" and the per-pair counts
can be studied later without re-running hours of matching.

It costs about N × (one matcher call) per query, so it runs on a fixed, listed sample:
every 15th row of the query CSV (10 of the 150 Getty dev queries). Each query's counts
go to ``OUT/<query>.json`` as soon as it finishes, so the run is resumable: a query
whose file exists is not matched again.

Usage: python bench/seed.py DB QUERY_CSV --images DIR --out DIR [--every 15] [--threads 1] [--reverse]
Then:  python bench/seed.py DB QUERY_CSV --images DIR --out DIR --report
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("bench.seed")


def sample_rows(rows: list, every: int) -> list:
    """The fixed sample: rows 0, every, 2*every, ... of the CSV, in file order."""
    return rows[::every]


def run(args: argparse.Namespace) -> None:
    import torch

    from glueloc.vision.images import load_image
    from glueloc.core.labels import read_labels
    from glueloc.query.verify import verify_pair
    from glueloc.query.localizer import Localizer
    from glueloc.storage.layout import Layout

    torch.set_num_threads(args.threads)
    rows = sample_rows(read_labels(args.queries, args.images), args.every)
    args.out.mkdir(parents=True, exist_ok=True)
    todo = [r for r in rows if not (args.out / f"{r.name}.json").exists()]
    print(f"sample of {len(rows)} queries ({', '.join(r.name for r in rows)}); {len(todo)} to match", flush=True)
    if not todo:
        return
    with Localizer(Layout.at(args.db)) as loc:
        db_images = sorted(loc.images.values(), key=lambda i: i.name)
        clock = time.perf_counter()
        db_features = [loc.reader.features(i.shard, i.name) for i in db_images]
        print(f"read {len(db_features)} db feature sets in {time.perf_counter() - clock:.1f} s", flush=True)
        for row in reversed(todo) if args.reverse else todo:
            if (args.out / f"{row.name}.json").exists():
                continue  # another worker (--reverse) finished it meanwhile
            clock = time.perf_counter()
            query = loc.extractor.extract(load_image(row.path).rgb)
            pairs = []
            for image, features in zip(db_images, db_features):
                check = verify_pair(query, features, loc.matcher)
                pairs.append([image.name, image.x, image.y, check.matches, check.inliers])
            seconds = time.perf_counter() - clock
            record = {"name": row.name, "true": [row.x, row.y], "seconds": round(seconds, 2),
                      "threads": args.threads, "pairs": pairs}
            tmp = args.out / f".{row.name}.json.tmp"
            tmp.write_text(json.dumps(record))
            tmp.replace(args.out / f"{row.name}.json")
            best = max(pairs, key=lambda p: p[3])
            error = abs(best[1] - row.x) + abs(best[2] - row.y)
            print(f"{row.name}: {seconds:.0f} s, best {best[0]} ({best[3]} matches), error {error:.2f}", flush=True)


def seed_answer(record: dict, key: str = "matches") -> tuple[float, float]:
    """Position of the db image with the most matches (or inliers); ties go to the first by name."""
    column = 3 if key == "matches" else 4
    best = max(record["pairs"], key=lambda p: p[column])
    return best[1], best[2]


def report(args: argparse.Namespace) -> None:
    from glueloc.core.labels import read_labels

    rows = sample_rows(read_labels(args.queries, args.images), args.every)
    records = [json.loads((args.out / f"{r.name}.json").read_text()) for r in rows
               if (args.out / f"{r.name}.json").exists()]
    print(f"{len(records)} of {len(rows)} sample queries matched")
    for key in ("matches", "inliers"):
        errors = []
        for rec in records:
            x, y = seed_answer(rec, key)
            errors.append(abs(x - rec["true"][0]) + abs(y - rec["true"][1]))
        e = np.array(errors)
        seconds = np.median([rec["seconds"] for rec in records])
        print(f"seed (most {key}): MAE {e.mean():.2f}  median {np.median(e):.2f}  within 2 {100 * (e <= 2).mean():.0f} %  "
              f"gross {(e > 20).sum()}  median {seconds:.0f} s/query")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("db", type=Path)
    parser.add_argument("queries", type=Path)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--every", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reverse", action="store_true",
                        help="take the sample from its end: a second worker on another core meets the first halfway")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    report(args) if args.report else run(args)


if __name__ == "__main__":
    main()
