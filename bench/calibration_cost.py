"""Can ``glueloc calibrate`` be cheaper without a worse held-out MAE? (issue 14)

Calibration pays twice: it runs the query path once per held-out place (``hold_out``),
then fits and cross-validates every shortlist length, rule and camera (``fit``). This
bench measures both and asks what fewer places cost in accuracy — on the database's own
held-out places, never on development queries:

1. hold out ``--places`` capture points once (the query path, timed by stage), and keep
   that evidence (``--save``; ``--samples`` re-uses a saved file instead of querying);
2. set aside ``--eval`` of them as a fixed test set E;
3. for each size n of ``--sizes``, fit a calibration (exactly ``query.calibrate.fit``) on
   n places drawn from the rest (nested: the first n of one shuffle), then answer every
   place of E with it — shortlist k, the calibrated rule, resection with its camera — and
   report E's MAE next to the fit's own cross-validated MAE and what that n costs;
4. repeat for ``--repeats`` shuffles (the split of E and the draw of the n).

Usage: python bench/calibration_cost.py --db DB [--places 300] [--eval 100] [--sizes 50 100 200]
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from glueloc.query.calibrate import CalibrationOptions, HeldOut, fit, hold_out, near_radius, rule_of, variant  # noqa: E402
from glueloc.query.localizer import Localizer, QueryOptions  # noqa: E402
from glueloc.query.rules import estimate_ranked  # noqa: E402
from glueloc.query.sightings import resected  # noqa: E402
from glueloc.storage.layout import Layout  # noqa: E402


def answer_errors(samples: list[HeldOut], model, k: int, rule_name: str, bearings, radius: float,
                  min_inliers: int) -> np.ndarray:
    """|dx| + |dy| of each sample answered with one fitted calibration, as a query would be."""
    rule, sharpness = rule_of(rule_name)
    errors = []
    for s in samples:
        neighbours, pairs = s.neighbours[:k], s.pairs[:k]
        p = model.probabilities(neighbours)
        answer = estimate_ranked(neighbours, p, rule, sharpness, radius, min_inliers)
        if answer is not None and bearings is not None:
            answer, _, _ = resected(answer, neighbours, pairs, bearings, radius, min_inliers)
        errors.append(float("inf") if answer is None else abs(answer.x - s.x) + abs(answer.y - s.y))
    return np.array(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--places", type=int, default=300)
    parser.add_argument("--eval", type=int, default=100, help="held-out places kept as the fixed test set")
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=Path, help="re-use held-out evidence saved by --save")
    parser.add_argument("--save", type=Path, help="save the held-out evidence here (pickle; bench/out)")
    parser.add_argument("--out", type=Path, help="write the table as JSON")
    args = parser.parse_args()

    options = CalibrationOptions(places=args.places)
    with Localizer(Layout.at(args.db), QueryOptions(k=options.k_max, estimator="best")) as localizer:
        radius = near_radius(np.array(list(localizer.positions.values()), float))
        min_inliers = localizer.options.min_inliers
        if args.samples:
            samples = pickle.loads(args.samples.read_bytes())
            hold_seconds = float("nan")
        else:
            clock = time.perf_counter()
            samples, _ = hold_out(localizer, options)
            hold_seconds = time.perf_counter() - clock
            if args.save:
                args.save.parent.mkdir(parents=True, exist_ok=True)
                args.save.write_bytes(pickle.dumps(samples))
    per_place = hold_seconds / len(samples)
    print(f"held out {len(samples)} places in {hold_seconds:.0f} s ({per_place:.2f} s per place, k = {options.k_max}); "
          f"near radius {radius:.2f}")

    clock = time.perf_counter()
    full = fit(samples, radius, options, min_inliers)
    full_fit_seconds = time.perf_counter() - clock
    model, k, rule_name, metrics, bearings = full.model, full.k, full.rule, full.metrics, full.bearings
    print(f"fit on all {len(samples)}: {variant(rule_name, k)}, camera {bearings}, CV MAE "
          f"{metrics[variant(rule_name, k)]['mae']:.2f}; fit {full_fit_seconds:.0f} s")

    rows = []
    for repeat in range(args.repeats):
        order = np.random.default_rng(100 + repeat).permutation(len(samples))
        test = [samples[i] for i in order[:args.eval]]
        pool = [samples[i] for i in order[args.eval:]]
        for n in sorted(args.sizes):
            if n > len(pool):
                continue
            train = pool[:n]
            clock = time.perf_counter()
            part = fit(train, radius, replace(options, places=n), min_inliers)
            model, k, rule_name, metrics, bearings = part.model, part.k, part.rule, part.metrics, part.bearings
            seconds = time.perf_counter() - clock
            errors = answer_errors(test, model, k, rule_name, bearings, radius, min_inliers)
            rows.append({"repeat": repeat, "places": n, "chosen": variant(rule_name, k),
                         "camera": None if bearings is None else f"{bearings.fov:g}-{bearings.axes}",
                         "cv_mae": metrics[variant(rule_name, k)]["mae"], "test_mae": round(float(errors.mean()), 3),
                         "test_median": round(float(np.median(errors)), 3),
                         "test_gross": int((errors > 20).sum()), "fit_s": round(seconds, 1),
                         "hold_out_s": round(per_place * n, 0)})
            r = rows[-1]
            print(f"repeat {repeat} n {n:4d}: {r['chosen']:18s} camera {r['camera']!s:9s} CV MAE {r['cv_mae']:6.2f}  "
                  f"test MAE {r['test_mae']:6.2f} (median {r['test_median']:.2f}, > 20: {r['test_gross']})  "
                  f"cost {r['hold_out_s']:.0f} + {r['fit_s']:.0f} s", flush=True)

    print(f"\n| places held out | test MAE on the same {args.eval} other places (mean of {args.repeats}) | "
          "min–max | chosen (rule@k, camera) | calibration cost, 2 cores |")
    print("|---|---|---|---|---|")
    for n in sorted(args.sizes):
        these = [r for r in rows if r["places"] == n]
        if not these:
            continue
        maes = [r["test_mae"] for r in these]
        chosen = ", ".join(sorted({f"{r['chosen']} {r['camera']}" for r in these}))
        cost = np.mean([r["hold_out_s"] + r["fit_s"] for r in these])
        print(f"| {n} | {np.mean(maes):.2f} | {min(maes):.2f}–{max(maes):.2f} | {chosen} | {cost / 60:.1f} min |")
    if args.out:
        args.out.write_text(json.dumps({"hold_out_seconds": hold_seconds, "full_fit_seconds": full_fit_seconds,
                                        "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
