"""When may verification stop early? Measured on held-out database places, never on dev queries (issue 16).

Verification is most of a query's time: each candidate of the calibrated shortlist costs
one LighterGlue pair. A query whose first few candidates already hold one that the
calibration says is almost surely right gains little from the rest. This bench measures
what stopping costs and buys, as ``glueloc calibrate`` measures its own choices:

1. **Held-out places the calibration never saw.** The capture points of the database's
   calibration (its ``places`` and ``seed``) are set aside; ``--places`` others are drawn
   (``--seed``), one view each, and each goes through the real query path against the rest
   of the database (its own capture point excluded), with the calibration's full k. The
   evidence is kept (``--save``; ``--load`` re-uses it).
2. **Every stopping rule, on that evidence.** Candidates are verified in the fused order,
   ``step`` at a time. After each step from ``min`` pairs on, the calibrated probability of
   each verified candidate is computed on what has been verified so far; once the best
   reaches ``above``, the rest is skipped. The answer is then what the query path would
   give on that prefix: the calibrated rule and resection (``Decision.decide``).

A second family also waits until the sure candidate's place is seen, verified, from
``places`` distinct capture points (resection needs three).

For each rule it prints MAE (|dx| + |dy|), median, share within 2 units, answers > 20
units, and the mean and median number of pairs verified, beside the full shortlist.

    python bench/early_stop.py --db bench/out/getty --places 150 --save bench/out/early-stop.pkl
    python bench/early_stop.py --db bench/out/getty --load bench/out/early-stop.pkl
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from glueloc.query.calibrate import HeldOut  # noqa: E402
from glueloc.query.localizer import Localizer, QueryOptions  # noqa: E402
from glueloc.query.stopping import StopRule, stop_point  # noqa: E402
from glueloc.storage.layout import Layout  # noqa: E402
from glueloc.storage.models import Calibration  # noqa: E402


def calibration_places(localizer: Localizer) -> tuple[list[tuple[float, float]], set[int], dict]:
    """The database's capture points (sorted, as calibrate sorts them) and those its calibration held out."""
    with localizer.db.session() as session:
        options = dict(session.get(Calibration, localizer.calibration.id).options)
    places = sorted(set(localizer.positions.values()))
    rng = np.random.default_rng(int(options["seed"]))
    used = set(rng.choice(len(places), size=min(int(options["places"]), len(places)), replace=False).tolist())
    return places, used, options


def hold_out_unseen(localizer: Localizer, count: int, seed: int) -> list[HeldOut]:
    places, used, _ = calibration_places(localizer)
    by_place: dict[tuple[float, float], list[int]] = {}
    for image_id in sorted(localizer.images):
        by_place.setdefault(localizer.positions[image_id], []).append(image_id)
    free = [p for p in range(len(places)) if p not in used]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(free, size=min(count, len(free)), replace=False).tolist())
    samples = []
    for done, p in enumerate(chosen):
        views = by_place[places[p]]
        image = localizer.images[views[int(rng.integers(len(views)))]]
        features, embedding = localizer.stored(image)
        location, pairs = localizer.locate_with_evidence(image.name, features, exclude=places[p],
                                                         embedding=embedding)
        samples.append(HeldOut(image.name, image.x, image.y, location.neighbours, location.seconds["verify"], pairs))
        if (done + 1) % 10 == 0:
            print(f"held out {done + 1}/{len(chosen)}", file=sys.stderr, flush=True)
    return samples


def answer(localizer: Localizer, sample: HeldOut, length: int) -> float:
    found, _, _ = localizer.decide(list(sample.neighbours[:length]), list(sample.pairs[:length]))
    return float("inf") if found is None else abs(found.x - sample.x) + abs(found.y - sample.y)


def placed_stop(sample: HeldOut, model, above: float, places: int, min_inliers: int) -> int:  # noqa: ANN001
    """Like ``StopRule(above, 2, 2)``, but stopping also needs ``places`` distinct capture points
    that verify within the near radius of the sure candidate."""
    k = len(sample.neighbours)
    for m in StopRule(above, 2, 2).lengths(k)[:-1]:
        seen = sample.neighbours[:m]
        p = model.probabilities(seen)
        verified = [i for i, n in enumerate(seen) if n.inliers >= min_inliers]
        if not verified:
            continue
        best = max(verified, key=lambda i: p[i])
        near = {(seen[i].x, seen[i].y) for i in verified
                if abs(seen[i].x - seen[best].x) + abs(seen[i].y - seen[best].y) <= model.radius}
        if p[best] >= above and len(near) >= places:
            return m
    return k


def summary(errors: list[float], pairs: list[int]) -> dict:
    e = np.array(errors)
    return {"mae": round(float(e.mean()), 3), "median": round(float(np.median(e)), 3),
            "within_2": round(float((e <= 2).mean()), 3), "over_20": int((e > 20).sum()),
            "pairs_mean": round(float(np.mean(pairs)), 2), "pairs_median": float(np.median(pairs))}


def print_table(rows: dict[str, dict], rule: str, pairs: str, extra: tuple[tuple[str, str], ...] = ()) -> None:
    """The rows as a markdown table: the rule, the error columns of :func:`summary`, the pairs
    (called ``pairs``), then each ``extra`` (header, format of a row's fields)."""
    headers = [rule, "MAE", "median", "within 2", "> 20", f"{pairs} mean", f"{pairs} median", *(h for h, _ in extra)]
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for name, r in rows.items():
        cells = [name, r["mae"], r["median"], r["within_2"], r["over_20"], r["pairs_mean"], f"{r['pairs_median']:g}",
                 *(f.format(**r) for _, f in extra)]
        print("| " + " | ".join(str(c) for c in cells) + " |")


def held_out_parser(description: str) -> argparse.ArgumentParser:
    """The options of a bench that replays rules on held-out places (this one and bench/screen.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--places", type=int, default=150)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--save", type=Path, default=None)
    parser.add_argument("--load", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    return parser


def calibrated_localizer(db: Path) -> Localizer:
    """A Localizer that verifies the calibration's whole shortlist, never stopping or deepening."""
    localizer = Localizer(Layout.at(db), QueryOptions(deepen_to=0, stop_above=None))
    if localizer.calibration is None:
        localizer.close()
        raise SystemExit("error: the database has no calibration: run `glueloc calibrate` first")
    return localizer


def main() -> None:
    args = held_out_parser(__doc__.splitlines()[0]).parse_args()
    with calibrated_localizer(args.db) as localizer:
        k = localizer.k
        if args.load:
            samples = pickle.loads(args.load.read_bytes())
        else:
            clock = time.perf_counter()
            samples = hold_out_unseen(localizer, args.places, args.seed)
            print(f"held out {len(samples)} places in {time.perf_counter() - clock:.0f} s "
                  f"(verify {np.median([s.seconds for s in samples]):.2f} s median at k={k})", file=sys.stderr)
            if args.save:
                args.save.write_bytes(pickle.dumps(samples))
        model, radius = localizer.calibration.model, localizer.calibration.model.radius
        rows = {"full": summary([answer(localizer, s, k) for s in samples], [len(s.neighbours) for s in samples])}
        for step, above, first in itertools.product((1, 2), (0.6, 0.7, 0.8, 0.9, 0.95, 0.98), (1, 2, 4, 6)):
            if first % step:
                continue
            rule = StopRule(above, first, step)
            lengths = [stop_point(rule, [n.inliers for n in s.neighbours],
                                  lambda m, s=s: model.probabilities(s.neighbours[:m]), localizer.options.min_inliers)
                       for s in samples]
            rows[f"step {step}, p >= {above}, from {first}"] = summary(
                [answer(localizer, s, m) for s, m in zip(samples, lengths)], lengths)
        # The same, also waiting until the sure candidate's place is seen from ``places`` distinct
        # capture points that verify (resection needs three): does precision come back?
        for above, places in itertools.product((0.5, 0.7, 0.9), (3, 4)):
            lengths = [placed_stop(s, model, above, places, localizer.options.min_inliers) for s in samples]
            rows[f"step 2, p >= {above}, from 2, {places} near places"] = summary(
                [answer(localizer, s, m) for s, m in zip(samples, lengths)], lengths)
    print(f"{len(samples)} held-out places, k = {k}, near radius {radius:.2f}")
    print_table(rows, "stopping rule", "pairs")
    if args.json:
        args.json.write_text(json.dumps({"places": len(samples), "k": k, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
