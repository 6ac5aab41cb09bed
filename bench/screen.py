"""Screen every candidate with a few keypoints, confirm the best with all: measured on held-out database places (issue 16).

A pair's cost grows faster than its keypoints (147 ms at 1024 a side, 28 ms at 256, 2
cores). Matching only the strongest 512 everywhere cut a query's verification by
more than half but lost precision on held-out places (docs/SCALE.md): resection needs
the bearings of many good correspondences. The candidates that decide an answer are
few, though. This bench asks whether a cheap pass can say which they are:

1. **Held-out places the calibration never saw**, as ``bench/early_stop.py`` draws them
   (same ``--places`` and ``--seed`` give the same places): each goes through the real query
   path, its capture point excluded, with the calibration's k and every pair verified
   with all keypoints. The same candidates are then verified again at each screening
   budget (``--budgets``), timed.
2. **Every screening rule, replayed.** Keep the full verification only of the candidates
   the screen ranks best (the top ``R`` by screened inliers, or those with at least ``T``);
   the others count as not verified (0 inliers: ``zero``) or are left out (``drop``). The
   answer is what the calibrated rule and resection give on that list, in retrieval order.

It prints, per rule, MAE (|dx| + |dy|), median, share within 2 units, answers > 20, the
pairs confirmed (mean, median), and the verification time it implies from the measured
cost per pair of each budget.

    python bench/screen.py --db bench/out/getty --places 150 --save bench/out/screen.pkl
    python bench/screen.py --db bench/out/getty --load bench/out/screen.pkl
"""

from __future__ import annotations

import itertools
import json
import pickle
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from early_stop import calibrated_localizer, held_out_parser, hold_out_unseen, print_table  # noqa: E402
from early_stop import summary as stop_summary  # noqa: E402

from glueloc.query.bearings import InlierPoints  # noqa: E402
from glueloc.query.calibrate import HeldOut  # noqa: E402
from glueloc.query.localizer import Localizer, QueryOptions  # noqa: E402
from glueloc.query.retrieval import Candidate  # noqa: E402
from glueloc.storage.layout import Layout  # noqa: E402


@dataclass(frozen=True)
class Screened:
    """One held-out view verified in full, and the inliers of the same candidates at each budget."""

    sample: HeldOut
    inliers: dict[int, list[int]]  # budget -> inliers of each candidate, in retrieval order


def screen(db: Path, samples: list[HeldOut], budgets: list[int]) -> tuple[list[Screened], dict[int, float]]:
    """Verify every sample's candidates again at each budget; also the ms per pair of each."""
    inliers: dict[int, list[list[int]]] = {}
    ms: dict[int, float] = {}
    for budget in budgets:
        with Localizer(Layout.at(db), QueryOptions(deepen_to=0, stop_above=None, match_keypoints=budget)) as loc:
            by_name = {image.name: image for image in loc.images.values()}
            rows, seconds, pairs = [], 0.0, 0
            for sample in samples:
                features, _ = loc.stored(by_name[sample.name])
                candidates = [Candidate(n.image_id, n.similarity) for n in sample.neighbours]
                clock = time.perf_counter()
                checked, _ = loc.verify(features, candidates)
                seconds += time.perf_counter() - clock
                pairs += len(candidates)
                rows.append([n.inliers for n in checked])
            inliers[budget] = rows
            ms[budget] = 1000.0 * seconds / max(pairs, 1)
            print(f"screened at {budget}: {ms[budget]:.1f} ms per pair", file=sys.stderr, flush=True)
    screened = [Screened(s, {b: inliers[b][i] for b in budgets}) for i, s in enumerate(samples)]
    return screened, ms


def confirmed(s: Screened, budget: int, top: int | None, at_least: int | None) -> list[int]:
    """Which candidates the rule verifies in full: the ``top`` best screened, or those with ``at_least``."""
    scores = s.inliers[budget]
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if top is not None:
        return sorted(order[:top])
    return [i for i in range(len(scores)) if scores[i] >= at_least]


def answer(localizer: Localizer, s: Screened, keep: list[int], rest: str) -> float:
    """The error of the calibrated answer when only ``keep`` is verified in full."""
    kept = set(keep)
    neighbours, pairs = [], []
    for i, (n, p) in enumerate(zip(s.sample.neighbours, s.sample.pairs)):
        if i in kept:
            neighbours.append(n)
            pairs.append(p)
        elif rest == "zero":
            neighbours.append(replace(n, matches=0, inliers=0, inlier_ratio=0.0))
            pairs.append(InlierPoints(p.query[:0], p.candidate[:0], p.query_size, p.candidate_size))
    found, _, _ = localizer.decide(neighbours, pairs)
    return float("inf") if found is None else abs(found.x - s.sample.x) + abs(found.y - s.sample.y)


def summary(errors: list[float], pairs: list[int], ms: float) -> dict:
    """bench/early_stop.py's row, plus the verification time the rule implies."""
    return {**stop_summary(errors, pairs), "verify_ms_mean": round(ms, 1)}


def main() -> None:
    parser = held_out_parser(__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[128, 256, 384])
    parser.add_argument("--pair-ms", nargs="+", default=[], metavar="BUDGET=MS",
                        help="ms per pair to estimate with instead of this run's (0 = all keypoints), "
                             "e.g. from bench/verify_speed.py with nothing else running")
    args = parser.parse_args()
    with calibrated_localizer(args.db) as localizer:
        k = localizer.k
        if args.load:
            screened, ms = pickle.loads(args.load.read_bytes())
        else:
            clock = time.perf_counter()
            samples = hold_out_unseen(localizer, args.places, args.seed)
            full_ms = 1000.0 * sum(s.seconds for s in samples) / sum(len(s.neighbours) for s in samples)
            print(f"held out {len(samples)} places in {time.perf_counter() - clock:.0f} s, "
                  f"{full_ms:.1f} ms per pair with all keypoints", file=sys.stderr, flush=True)
            screened, ms = screen(args.db, samples, args.budgets)
            ms[0] = full_ms  # 0: every keypoint
            if args.save:
                args.save.write_bytes(pickle.dumps((screened, ms)))
        ms.update({int(b): float(v) for b, v in (item.split("=") for item in args.pair_ms)})
        budgets = sorted(b for b in ms if b)
        everything = list(range(k))
        rows = {"no screen, all k in full": summary(
            [answer(localizer, s, everything, "zero") for s in screened], [k] * len(screened), k * ms[0])}
        for budget, rest in itertools.product(budgets, ("zero", "drop")):
            rules = [(f"top {r}", r, None) for r in (2, 3, 4, 5, 6, 8, 10)]
            rules += [(f">= {t} inliers", None, t) for t in (5, 10, 15, 20, 30)]
            for name, top, at_least in rules:
                keeps = [confirmed(s, budget, top, at_least) for s in screened]
                pairs = [len(keep) for keep in keeps]
                cost = k * ms[budget] + float(np.mean(pairs)) * ms[0]
                rows[f"screen {budget}, {name}, rest {rest}"] = summary(
                    [answer(localizer, s, keep, rest) for s, keep in zip(screened, keeps)], pairs, cost)
    print(f"{len(screened)} held-out places, k = {k}; ms per pair: "
          + ", ".join(f"{b or 'all'} {v:.1f}" for b, v in sorted(ms.items())))
    print_table(rows, "rule", "confirmed", (("verify ms (est.)", "{verify_ms_mean:.0f}"),))
    if args.json:
        args.json.write_text(json.dumps({"places": len(screened), "k": k, "ms_per_pair": ms, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
