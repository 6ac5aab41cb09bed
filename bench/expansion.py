"""Query expansion and database-side augmentation of the vector rankings: held-out database places (issue 15).

Both XFeat rankings and the image ranking miss the same few views. Two classic
retrieval steps need no training and no pixels, only the vectors the database already
has (Radenović, Tolias & Chum, "Fine-tuning CNN image retrieval with no human
annotation", 2018, section 5):

* **alpha-QE** (query side): the query vector plus its top ``n`` database vectors,
  each weighted by its similarity to the query to the power ``alpha``, normalised and
  searched again.
* **DBA** (database side): every database vector replaced by itself plus its ``n`` most
  similar database vectors, weighted the same way. ``labels`` restricts those to photos
  within the near radius of it by the database's own labels — the map supervising
  itself, with no matcher.

A held-out photo's own capture point is excluded from its results *and* from every
database vector's augmentation (otherwise its own views would leak into the vectors
of its neighbours). One photo of each of ``--held-out`` random capture points, as
``bench/image_retrieval.py`` draws them; recall within 5 units of each vector ranking
alone and of the default fusion (VLAD, votes, image in turns), votes unchanged.

Usage: python bench/expansion.py --db bench/out/getty [--held-out 600] [--json out.json]
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

from glueloc.query.localizer import Localizer, QueryOptions  # noqa: E402
from glueloc.query.retrieval import interleave  # noqa: E402
from glueloc.storage.layout import Layout  # noqa: E402

from fused_held_out import print_recall  # noqa: E402  (the same recall table)

DEPTH = 50
GRAPH = 40  # neighbours kept per database vector for DBA (enough after masking a point)


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def neighbour_graph(vectors: np.ndarray, xy: np.ndarray, radius: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Each vector's GRAPH most similar others (ids into ``vectors``, similarities); ``radius``: only near ones by label."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    if radius is not None:
        far = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1]) > radius
        sims[far] = -np.inf
    order = np.argsort(-sims, axis=1)[:, :GRAPH]
    return order, np.take_along_axis(sims, order, axis=1)


def augmented(vectors: np.ndarray, graph: tuple[np.ndarray, np.ndarray], masked: np.ndarray, n: int,
              alpha: float) -> np.ndarray:
    """DBA with the rows in ``masked`` (a boolean per row) neither augmented from nor used."""
    order, sims = graph
    ok = ~masked[order] & np.isfinite(sims)
    rank = np.cumsum(ok, axis=1)
    use = ok & (rank <= n)
    weights = np.where(use, np.clip(sims, 0.0, None) ** alpha, 0.0)
    out = vectors + np.einsum("ij,ijd->id", weights, vectors[order])
    return normalise(out)


def ranked(vectors: np.ndarray, query: np.ndarray, excluded: np.ndarray, depth: int) -> np.ndarray:
    sims = vectors @ query
    sims[excluded] = -np.inf
    return np.argsort(-sims)[:depth]


def expanded(vectors: np.ndarray, query: np.ndarray, excluded: np.ndarray, n: int, alpha: float) -> np.ndarray:
    sims = vectors @ query
    sims[excluded] = -np.inf
    top = np.argsort(-sims)[:n]
    weights = np.clip(sims[top], 0.0, None) ** alpha
    return normalise(query + weights @ vectors[top])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=REPO / "bench/out/getty")
    parser.add_argument("--held-out", type=int, default=600)
    parser.add_argument("--within", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    hits: dict[str, list[list[bool]]] = {}
    with Localizer(Layout.at(args.db), QueryOptions(k=DEPTH)) as loc:
        assert loc.model is not None, "the database has no retrieval model"
        spaces = {"vlad": loc.index, "image": loc.model.index}
        ids = {s: index.ids() for s, index in spaces.items()}
        row_ids = ids["vlad"]
        mats = {s: normalise(index.vectors().astype(np.float32)) for s, index in spaces.items()}
        where = {int(i): r for r, i in enumerate(ids["image"])}
        mats["image"] = mats["image"][[where[int(i)] for i in row_ids]]  # rows in the VLAD index's order
        xy = np.array([(loc.images[int(i)].x, loc.images[int(i)].y) for i in row_ids])
        radius = float(loc.model.row.radius)  # the near radius the model was trained with
        graphs = {(s, lab): neighbour_graph(mats[s], xy, radius if lab else None)
                  for s in spaces for lab in (False, True)}
        print(f"graphs in {time.perf_counter() - started:.0f} s (radius {radius})", file=sys.stderr, flush=True)
        points = sorted({(float(a), float(b)) for a, b in xy})
        rng = np.random.default_rng(args.seed)
        chosen = rng.choice(len(points), size=min(args.held_out, len(points)), replace=False)
        for count, p in enumerate(chosen):
            point = np.array(points[p])
            same = (xy == point).all(1)
            near = (np.hypot(*(xy - point).T) <= args.within) & ~same
            if not near.any():
                continue
            row = int(rng.choice(np.flatnonzero(same)))
            image = loc.images[int(row_ids[row])]
            features, embedding = loc.stored(image)
            found = loc.rankings(features, exclude=(image.x, image.y), embedding=embedding, depth=DEPTH)
            queries = {"vlad": mats["vlad"][row], "image": mats["image"][row]}
            per: dict[str, dict[str, list[int]]] = {"vlad": {}, "image": {}}
            for s in spaces:
                base = mats[s]
                per[s]["base"] = ranked(base, queries[s], same, DEPTH).tolist()
                for n, alpha in ((1, 3.0), (2, 3.0), (3, 3.0), (5, 3.0)):
                    q = expanded(base, queries[s], same, n, alpha)
                    per[s][f"QE n{n}"] = ranked(base, q, same, DEPTH).tolist()
                for lab in (False, True):
                    for n in (1, 2, 3, 5):
                        dba = augmented(base, graphs[(s, lab)], same, n, 3.0)
                        tag = f"DBA{' labels' if lab else ''} n{n}"
                        per[s][tag] = ranked(dba, queries[s], same, DEPTH).tolist()
                        q = expanded(dba, queries[s], same, 2, 3.0)
                        per[s][tag + " + QE n2"] = ranked(dba, q, same, DEPTH).tolist()
            votes = [int(np.flatnonzero(row_ids == i)[0]) for i in found.by_votes]
            rankings: dict[str, list[int]] = {"votes": votes}
            for s in spaces:
                for tag, r in per[s].items():
                    rankings[f"{s} {tag}"] = r
            for tag in per["vlad"]:
                rankings[f"fused, both {tag}"] = interleave([per["vlad"][tag], votes, per["image"][tag]], DEPTH)
            for tag, r in rankings.items():
                hits.setdefault(tag, []).append([bool(near[i]) for i in r])
            if count % 50 == 49:
                print(f"{count + 1} places, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    counted = len(hits["votes"])
    result = print_recall(hits, f"{counted} held-out photos of distinct points with a photo of another point "
                                f"within {args.within:g} units; {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"held_out": counted, "recall": result,
                                         "hits": {t: [h[:10] for h in f] for t, f in hits.items()}}, indent=1))


if __name__ == "__main__":
    main()
