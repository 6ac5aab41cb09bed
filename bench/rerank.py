"""Re-ranking variants on the Getty dev queries: one table, every variant timed.

Each dev query goes once through the real query path stages — decode + extract,
retrieve the top ``--k-max`` by the database's VLAD vectors, verify every candidate
with the database's matcher + RANSAC, each pair timed on its own — and the evidence is
cached (``--cache``). Every variant is then a rule over that evidence, so variants
differ only in what they do, and a variant's seconds per query are the extraction,
the retrieval and the pairs it verifies.

The calibrated rows use the database's newest calibration (``glueloc calibrate``,
leave-one-place-out on the database): nothing here is fitted on the dev queries.

    python bench/rerank.py --db DB [--data ../shared/benchdata/getty] [--cache out/rerank.json] [--expand]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from glueloc.vision.extractors import Features  # noqa: E402
from glueloc.vision.images import load_image  # noqa: E402
from glueloc.core.labels import read_labels  # noqa: E402
from glueloc.query.calibrate import RULES  # noqa: E402
from glueloc.query.evaluate import confidence_metrics, error_metrics  # noqa: E402
from glueloc.query.localizer import Localizer, QueryOptions  # noqa: E402
from glueloc.query.estimators import estimate  # noqa: E402
from glueloc.query.evidence import Neighbour  # noqa: E402
from glueloc.query.rules import estimate_ranked  # noqa: E402
from glueloc.query.retrieval import RETRIEVALS  # noqa: E402
from glueloc.query.verify import verify_pair  # noqa: E402
from glueloc.storage.layout import Layout  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "benchdata" / "getty"


def timed_check(loc: Localizer, features: Features, image_id: int, similarity: float) -> dict:
    """Verify one candidate with the database's matcher + RANSAC, timing the pair alone."""
    image = loc.images[image_id]
    clock = time.perf_counter()
    check = verify_pair(features, loc.reader.features(image.shard, image.name), loc.matcher)
    return {"id": image.id, "name": image.name, "x": image.x, "y": image.y, "similarity": float(similarity),
            "matches": check.matches, "inliers": check.inliers, "ratio": round(check.inlier_ratio, 4),
            "seconds": time.perf_counter() - clock}


def collect(db: Path, data: Path, k_max: int, retrieval: str) -> list[dict]:
    """Per query: true position, stage seconds, and the top ``k_max`` candidates verified."""
    rows = read_labels(data / "glueloc.query.csv", data / "query")
    out = []
    with Localizer(Layout.at(db), QueryOptions(k=k_max, estimator="best", retrieval=retrieval)) as loc:
        for n, row in enumerate(rows):
            clock = time.perf_counter()
            features = loc.extractor.extract(load_image(row.path).rgb)
            extract = time.perf_counter() - clock
            clock = time.perf_counter()
            candidates = loc.shortlist(features)
            retrieve = time.perf_counter() - clock
            verified = [timed_check(loc, features, c.image_id, c.similarity) for c in candidates]
            out.append({"name": row.name, "true": [row.x, row.y], "extract": extract, "retrieve": retrieve,
                        "candidates": verified})
            print(f"\r{n + 1}/{len(rows)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return out


def hypotheses(candidates: list[dict], radius: float, count: int) -> list[tuple[float, float]]:
    """The positions of the ``count`` strongest candidates that lie more than ``radius`` apart."""
    found: list[tuple[float, float]] = []
    for c in sorted(candidates, key=lambda c: -c["inliers"]):
        if all(abs(c["x"] - x) + abs(c["y"] - y) > radius for x, y in found):
            found.append((c["x"], c["y"]))
        if len(found) == count:
            break
    return found


def collect_expansion(db: Path, data: Path, evidence: list[dict], k: int, radius: float,
                      places: int = 3, per_place: int = 6) -> None:
    """Spatial expansion: around each of the top ``places`` hypotheses of the top-k, verify the
    ``per_place`` most similar db images within ``radius`` not verified yet (timed per pair)."""
    rows = {r.name: r for r in read_labels(data / "glueloc.query.csv", data / "query")}
    with Localizer(Layout.at(db), QueryOptions(k=k, estimator="best")) as loc:
        ids = loc.index.ids()
        vectors = loc.index.vectors()
        xy = np.array([loc.positions[int(i)] for i in ids])
        for n, query in enumerate(evidence):
            features = loc.extractor.extract(load_image(rows[query["name"]].path).rgb)
            similarity = vectors @ loc.codebook.aggregate(features.descriptors)
            seen = {c["id"] for c in query["candidates"][:k]}
            extra = []
            for hx, hy in hypotheses(query["candidates"][:k], radius, places):
                around = [j for j in np.flatnonzero(np.abs(xy - (hx, hy)).sum(1) <= radius) if int(ids[j]) not in seen]
                for j in sorted(around, key=lambda j: -similarity[j])[:per_place]:
                    seen.add(int(ids[j]))
                    extra.append(timed_check(loc, features, int(ids[j]), similarity[j]))
            query["expansion"] = extra
            print(f"\r{n + 1}/{len(evidence)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def neighbours(query: dict, k: int) -> list[Neighbour]:
    return [Neighbour(c["id"], c["name"], c["x"], c["y"], c["similarity"], c["matches"], c["inliers"], c["ratio"])
            for c in query["candidates"][:k]]


Rule = Callable[[dict], tuple[tuple[float, float], float]]  # query -> ((x, y), confidence)


def row(label: str, evidence: list[dict], k: int, rule: Rule, expansion: bool = False) -> dict:
    errors, confidence, seconds = [], [], []
    for query in evidence:
        (x, y), conf = rule(query)
        errors.append(abs(x - query["true"][0]) + abs(y - query["true"][1]))
        confidence.append(conf)
        verified = query["candidates"][:k] + (query["expansion"] if expansion else [])
        seconds.append(query["extract"] + query["retrieve"] + sum(c["seconds"] for c in verified))
    e = np.array(errors)
    return {"variant": label, **error_metrics(e), "median_s": round(float(np.median(seconds)), 3),
            "p90_s": round(float(np.percentile(seconds, 90)), 3), "confidence": confidence_metrics(e, np.array(confidence))}


def variants(evidence: list[dict], loc: Localizer) -> list[dict]:
    def top1(q: dict) -> tuple[tuple[float, float], float]:
        c = q["candidates"][0]
        return (c["x"], c["y"]), c["similarity"]

    def by_estimator(k: int, method: str) -> Rule:
        def rule(q: dict) -> tuple[tuple[float, float], float]:
            answer = estimate(neighbours(q, k), method, loc.options.min_inliers)
            return (answer.x, answer.y), answer.confidence
        return rule

    def place_sum(k: int) -> Rule:
        """Sum inliers over the views of one capture point; the place with the most wins."""
        def rule(q: dict) -> tuple[tuple[float, float], float]:
            total: dict[tuple[float, float], int] = {}
            for c in q["candidates"][:k]:
                total[(c["x"], c["y"])] = total.get((c["x"], c["y"]), 0) + c["inliers"]
            best = max(total, key=total.__getitem__)
            return best, total[best] / max(sum(total.values()), 1)
        return rule

    rows = [row("retrieval top-1 (no verification)", evidence, 0, top1)]
    for k in (10, 15, 20):
        if len(evidence[0]["candidates"]) >= k:
            rows.append(row(f"top-{k}, most inliers", evidence, k, by_estimator(k, "best")))
    rows.append(row("top-10, place with most inliers in sum", evidence, 10, place_sum(10)))
    rows.append(row("top-10, 5-unit cluster with most inliers", evidence, 10, by_estimator(10, "cluster")))
    if "expansion" in evidence[0]:
        radius = loc.calibration.model.radius if loc.calibration else 5.0

        def expanded(q: dict) -> tuple[tuple[float, float], float]:
            """The hypothesis whose surroundings hold the most inliers wins; copy its strongest image."""
            pool = q["candidates"][:10] + q["expansion"]
            scored = []
            for hx, hy in hypotheses(q["candidates"][:10], radius, 3):
                members = [c for c in pool if abs(c["x"] - hx) + abs(c["y"] - hy) <= radius]
                scored.append((sum(c["inliers"] for c in members), max(members, key=lambda c: c["inliers"])))
            total, best = max(scored, key=lambda t: t[0])
            return (best["x"], best["y"]), total / max(sum(c["inliers"] for c in pool), 1)
        rows.append(row("top-10 + spatial expansion (3 places x 6 views around them)", evidence, 10, expanded,
                        expansion=True))
    calibration = loc.calibration
    if calibration is None:
        print("the database has no calibration of its current codebook: run `glueloc calibrate` for the calibrated rows",
              file=sys.stderr)
        return rows
    k = calibration.k
    for name, rule_name, sharpness in RULES:
        def rule(q: dict, rule_name: str = rule_name, sharpness: float = sharpness) -> tuple[tuple[float, float], float]:
            nb = neighbours(q, k)
            answer = estimate_ranked(nb, calibration.model.probabilities(nb), rule_name, sharpness,
                                     calibration.model.radius, loc.options.min_inliers)
            return (answer.x, answer.y), answer.confidence
        chosen = " (calibrated default)" if (rule_name, sharpness) == (calibration.rule, calibration.sharpness) else ""
        rows.append(row(f"top-{k}, calibrated, rule {name}{chosen}", evidence, k, rule))
    return rows


def hindsight(evidence: list[dict], k: int) -> float:
    return float(np.mean([min(abs(c["x"] - q["true"][0]) + abs(c["y"] - q["true"][1]) for c in q["candidates"][:k])
                          for q in evidence]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--k-max", type=int, default=20)
    parser.add_argument("--retrieval", default="fused", choices=RETRIEVALS,
                        help="How shortlists are drawn (query.retrieval); calibrated rows use its calibration.")
    parser.add_argument("--cache", type=Path, help="Evidence JSON: read if it exists, else written.")
    parser.add_argument("--json", type=Path, help="Write the table rows here.")
    parser.add_argument("--expand", action="store_true",
                        help="Also verify db images around the top hypotheses (spatial expansion; extra pairs).")
    args = parser.parse_args()
    if args.cache and args.cache.exists():
        evidence = json.loads(args.cache.read_text())
    else:
        evidence = collect(args.db, args.data, args.k_max, args.retrieval)
    if args.expand and "expansion" not in evidence[0]:
        with Localizer(Layout.at(args.db)) as loc:
            radius = loc.calibration.model.radius if loc.calibration else 5.0
        collect_expansion(args.db, args.data, evidence, 10, radius)
    if args.cache:
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        args.cache.write_text(json.dumps(evidence))
    with Localizer(Layout.at(args.db), QueryOptions(retrieval=args.retrieval)) as loc:
        rows = variants(evidence, loc)
        calibration = loc.calibration
    print(f"{len(evidence)} dev queries; calibration: "
          + (f"{calibration.id} (rule {calibration.rule}, p^{calibration.sharpness:g}, k={calibration.k})"
             if calibration else "none"))
    print("| variant | MAE | median | within 2 | > 20 units | median s | p90 s | MAE of most confident 50 % / 80 % | Spearman(conf, error) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        c = r["confidence"]
        print(f"| {r['variant']} | {r['mae']:.2f} | {r['median']:.2f} | {r['within_2']:.0%} | {r['gross_failures']} | "
              f"{r['median_s']:.2f} | {r['p90_s']:.2f} | {c['mae_top_50']:.2f} / {c['mae_top_80']:.2f} | "
              f"{c['spearman_confidence_error']:.2f} |")
    for k in (10, 15, 20):
        if len(evidence[0]["candidates"]) >= k:
            print(f"| best of the top-{k} chosen with hindsight (bound) | {hindsight(evidence, k):.2f} | | | | | | | |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
