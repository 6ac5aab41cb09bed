"""Recall of each ranking alone and fused, on held-out database places and the dev queries (issue 15).

Opens a Getty database indexed by this glueloc (it holds the image embeddings and the
learned retrieval model) and, for each query photo, asks the Localizer for its three
rankings of the database (``Localizer.rankings``: VLAD vector, descriptor votes, learned
image embedding), 50 deep. Reports the share of queries with a database photo within 5
units among the top 1/5/10/20/50 of:

* each ranking alone, and
* fusions: ``vlad+votes`` (the previous default shortlist), the image ranking with each
  of the others, and ``fused`` (all three in turns, the current default: exactly what a
  query verifies at that k), also with the image ranking taking the first turn.

Two query sets: ``--held-out N`` database photos of distinct capture points, each
queried with its own point excluded (stored features and embedding, and the image
ranking by the projection of the place's fold, as ``glueloc calibrate`` does) — what
choices are made on — and the dev queries of ``--data``, decoded, extracted and embedded
as ``glueloc query`` does, reported once.

Usage: python bench/image_retrieval.py --db bench/out/getty [--held-out 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from glueloc.core.labels import read_labels  # noqa: E402
from glueloc.query.crossfit import CrossFitRanking  # noqa: E402
from glueloc.query.localizer import Localizer, QueryOptions, Rankings  # noqa: E402
from glueloc.query.retrieval import interleave  # noqa: E402
from glueloc.storage.layout import Layout  # noqa: E402
from glueloc.vision.images import load_image  # noqa: E402

KS = (1, 5, 10, 20, 50)
DEPTH = 50


def rows_of(found: Rankings) -> dict[str, list[int]]:
    vlad = [c.image_id for c in found.by_vector]
    return {"vlad": vlad, "votes": found.by_votes, "image": found.by_image,
            "vlad+votes": interleave([vlad, found.by_votes], DEPTH),
            "image+vlad": interleave([found.by_image, vlad], DEPTH),
            "image+votes": interleave([found.by_image, found.by_votes], DEPTH),
            "fused": found.fused(DEPTH),
            "fused, image first": interleave([found.by_image, vlad, found.by_votes], DEPTH),
            **{f"rrf c={c}": reciprocal_rank_fusion([vlad, found.by_votes, found.by_image], c, DEPTH) for c in RRF_C}}


#: Reciprocal rank fusion constants compared (held-out places choose).
RRF_C = (1, 5, 20, 60)


def reciprocal_rank_fusion(rankings: list[list[int]], c: float, depth: int) -> list[int]:
    """Ids by the sum over rankings of 1 / (c + rank): agreement between rankings counts."""
    score: dict[int, float] = {}
    for ranking in rankings:
        for rank, image_id in enumerate(ranking):
            score[image_id] = score.get(image_id, 0.0) + 1.0 / (c + rank + 1)
    return sorted(score, key=lambda i: (-score[i], i))[:depth]


def recall(hits: list[dict[str, list[bool]]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in hits[0]:
        out[name] = {f"R@{k}": round(float(np.mean([any(h[name][:k]) for h in hits])), 4) for k in KS}
    return out


def near_flags(loc: Localizer, ranking: dict[str, list[int]], x: float, y: float, within: float) -> dict[str, list[bool]]:
    return {name: [float(np.hypot(loc.images[i].x - x, loc.images[i].y - y)) <= within for i in ids]
            for name, ids in ranking.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/benchdata/getty")
    parser.add_argument("--held-out", type=int, default=300)
    parser.add_argument("--within", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--held-out-only", action="store_true", help="skip the dev queries (while choosing)")
    args = parser.parse_args()
    result: dict[str, object] = {}
    with Localizer(Layout.at(args.db), QueryOptions(k=DEPTH)) as loc:
        assert loc.model is not None, "the database has no retrieval model"
        # Held-out database places: one photo of each of N random capture points.
        by_point: dict[tuple[float, float], list[int]] = {}
        for image in loc.images.values():
            by_point.setdefault((image.x, image.y), []).append(image.id)
        rng = np.random.default_rng(args.seed)
        points = sorted(by_point)
        chosen = rng.choice(len(points), size=min(args.held_out, len(points)), replace=False)
        crossfit = CrossFitRanking.of(loc)
        if crossfit is None:
            print("note: the model has no cross-fitted folds: held-out places are ranked by image in-sample")
        hits = []
        for n in chosen:
            point = points[n]
            image = loc.images[int(rng.choice(by_point[point]))]
            others = [i for i in loc.images.values() if (i.x, i.y) != point
                      and np.hypot(i.x - point[0], i.y - point[1]) <= args.within]
            if not others:
                continue
            features, embedding = loc.stored(image)
            # As calibration: the image ranking of a held-out place by the projection of its fold.
            fold = None if crossfit is None else crossfit.fold_of(*point)
            ranker = None if fold is None or crossfit is None else crossfit.ranker(fold)
            found = loc.rankings(features, exclude=point, embedding=embedding, depth=DEPTH, image_ranker=ranker)
            hits.append(near_flags(loc, rows_of(found), point[0], point[1], args.within))
        result["held_out"] = {"queries": len(hits), "recall": recall(hits), "cross_fitted": crossfit is not None}
        # Dev queries.
        rows = [] if args.held_out_only else read_labels(args.data / "query.csv", args.data / "query")
        hits, seconds = [], []
        for row in rows:
            if not any(np.hypot(i.x - row.x, i.y - row.y) <= args.within for i in loc.images.values()):
                continue
            decoded = load_image(row.path)
            features = loc.extractor.extract(decoded.rgb)
            clock = time.perf_counter()
            embedding = loc.embedder.embed(decoded.rgb)  # type: ignore[union-attr]
            seconds.append(time.perf_counter() - clock)
            found = loc.rankings(features, embedding=embedding, depth=DEPTH)
            hits.append(near_flags(loc, rows_of(found), row.x, row.y, args.within))
        if hits:
            result["dev"] = {"queries": len(hits), "recall": recall(hits),
                             "embed_ms_median": round(1000 * float(np.median(seconds)), 1)}
        result["model"] = {"id": loc.model.row.id, "method": loc.model.row.method, "dim": loc.model.row.dim}
    header = " | ".join(f"R@{k}" for k in KS)
    for split in [name for name in ("held_out", "dev") if name in result]:
        part = result[split]
        print(f"\n{split} ({part['queries']} queries with a db photo within {args.within:g} units)\n"  # type: ignore[index]
              f"| ranking | {header} |\n|---|{'---|' * len(KS)}")
        for name, r in part["recall"].items():  # type: ignore[index]
            print(f"| {name} | " + " | ".join(f"{100 * r[f'R@{k}']:.1f}" for k in KS) + " |")
    print(f"\nmodel {result['model']}")
    if "dev" in result:
        print(f"embedding {result['dev']['embed_ms_median']} ms per dev query")  # type: ignore[index]
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
