"""Which retrieval projection? Held-out database places first, the dev queries once (issue 15).

Reads the raw image embeddings of bench/embed_getty.py and, for each projection method
of ``glueloc.vision.projection`` (and the raw embedding without one):

1. **held-out database places** — exactly ``indexer.learn``'s split: a fraction of the
   capture points is held out, the method is fitted on the rest, each held-out photo
   is ranked against the whole database (its own point excluded); recall of a photo
   within the near radius (L1, as calibration) and within 5 units (Euclidean, as the
   issue measures) at 1/5/10/20/50 — this is what chooses the method;
2. **the dev queries** — fitted on every database photo, each of the 142 dev queries
   that has a database photo within 5 units ranked against the database.

Prints both tables and the training time and peak RSS of each method.

Usage: python bench/retrieval_models.py [--embeddings bench/out/embeddings.npz] [--methods pca lw triplet]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from glueloc.core.places import near_radius  # noqa: E402
from glueloc.indexer.learn import RECALL_AT, fit_method, held_out_places, learn_conf, pairs_from_labels, recall_at  # noqa: E402
from glueloc.vision import projection as proj  # noqa: E402


def query_recall(db_vectors: np.ndarray, db_xy: np.ndarray, q_vectors: np.ndarray, q_xy: np.ndarray,
                 within: float = 5.0) -> tuple[dict[str, float], int]:
    dist = np.sqrt(((q_xy[:, None, :] - db_xy[None]) ** 2).sum(-1))
    near = dist <= within
    has = near.any(1)
    order = np.argsort(-(q_vectors @ db_vectors.T), axis=1)[:, : max(RECALL_AT)]
    found = np.take_along_axis(near, order, axis=1)[has]
    return {f"R@{k}": round(float(found[:, :k].any(1).mean()), 4) for k in RECALL_AT}, int(has.sum())


def euclidean_recall(vectors: np.ndarray, xy: np.ndarray, test: np.ndarray, within: float) -> dict[str, float]:
    sims = vectors[test] @ vectors.T
    same = (xy[test, None, :] == xy[None]).all(-1)
    sims[same] = -np.inf
    near = (np.sqrt(((xy[test, None, :] - xy[None]) ** 2).sum(-1)) <= within) & ~same
    has = near.any(1)
    order = np.argsort(-sims, axis=1)[:, : max(RECALL_AT)]
    found = np.take_along_axis(near, order, axis=1)[has]
    return {f"R@{k}": round(float(found[:, :k].any(1).mean()), 4) for k in RECALL_AT}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embeddings", type=Path, default=REPO / "bench/out/embeddings.npz")
    parser.add_argument("--methods", nargs="+", default=["raw", *proj.METHODS])
    parser.add_argument("--conf", type=json.loads, default={}, help="indexer.learn options as JSON")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    data = np.load(args.embeddings)
    raw, xy = data["db_vectors"], data["db_xy"]
    q_raw, q_xy = data["query_vectors"], data["query_xy"]
    conf = learn_conf({**args.conf, "methods": [m for m in args.methods if m != "raw"] or ["pca"]})
    radius = near_radius(xy)
    test = held_out_places(xy, float(conf["held_out"]), int(conf["seed"]))
    train = np.setdiff1d(np.arange(len(xy)), test)
    print(f"{len(raw)} db photos, {len(np.unique(xy, axis=0))} capture points; near radius {radius:.2f} (L1); "
          f"held out {len(test)} photos of {len(np.unique(xy[test], axis=0))} points; "
          f"embedding {np.median(data['db_ms']):.1f} ms median per image")
    positives, far = pairs_from_labels(xy[train], radius, float(conf["far_factor"]))
    all_pos, all_far = pairs_from_labels(xy, radius, float(conf["far_factor"]))
    rows = {}
    for method in args.methods:
        clock = time.perf_counter()
        if method == "raw":
            held = raw
            final_db, final_q = raw, q_raw
            seconds = 0.0
        else:
            fitted = fit_method(method, raw[train], positives, far, conf)
            held = fitted.project(raw)
            clock = time.perf_counter()
            final = fit_method(method, raw, all_pos, all_far, conf)
            seconds = time.perf_counter() - clock
            final_db, final_q = final.project(raw), final.project(q_raw)
        rows[method] = {
            "held_out_near": recall_at(held, xy, test, radius),
            "held_out_5": euclidean_recall(held, xy, test, 5.0),
            "dev_5": query_recall(final_db, xy, final_q, q_xy)[0],
            "train_seconds": round(seconds, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }
    n = query_recall(raw, xy, q_raw, q_xy)[1]
    header = " | ".join(f"R@{k}" for k in RECALL_AT)
    for key, title in (("held_out_near", f"held-out db places, within the near radius ({radius:.2f} L1)"),
                       ("held_out_5", "held-out db places, within 5 units"),
                       ("dev_5", f"dev queries ({n} with a db photo within 5 units), within 5 units")):
        print(f"\n{title}\n| method | {header} |\n|---|{'---|' * len(RECALL_AT)}")
        for method, row in rows.items():
            print(f"| {method} | " + " | ".join(f"{100 * row[key][f'R@{k}']:.1f}" for k in RECALL_AT) + " |")
    print("\n| method | training s (all 4500) | peak RSS MB |\n|---|---|---|")
    for method, row in rows.items():
        print(f"| {method} | {row['train_seconds']} | {row['peak_rss_mb']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
