"""Does a fine-tuned image ranking move the *fused* shortlist? Held-out database places (issue 15).

Reads the database vectors bench/finetune_getty.py saved (``--save``: the frozen
network's and the fine-tuned one's, both whitened on the training photos only, and
``indexer.learn``'s held-out split they were trained without). For each held-out photo
(stored features, its own capture point excluded, as ``glueloc calibrate`` queries) the
Localizer gives the VLAD and vote rankings; the image ranking is taken from each saved
set of vectors, ranked against the whole database with the same point excluded. Prints
recall within 5 units of each ranking alone and of the default fusion (VLAD, votes,
image in turns) at 1/5/10/20/50.

Usage: python bench/fused_held_out.py --db bench/out/getty --vectors bench/out/finetuned-vectors.npz [--limit N]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from glueloc.query.localizer import Localizer, QueryOptions  # noqa: E402
from glueloc.query.retrieval import interleave  # noqa: E402
from glueloc.storage.layout import Layout  # noqa: E402

KS = (1, 5, 10, 20, 50)
DEPTH = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=REPO / "bench/out/getty")
    parser.add_argument("--vectors", type=Path, default=REPO / "bench/out/finetuned-vectors.npz")
    parser.add_argument("--within", type=float, default=5.0)
    parser.add_argument("--limit", type=int, default=None, help="first N held-out photos only")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    saved = np.load(args.vectors)
    names = [str(n) for n in saved["names"]]
    test = saved["test"][: args.limit]
    sets = {"frozen": saved["frozen"], "fine-tuned": saved["trained"]}
    hits: dict[str, list[list[bool]]] = {}
    with Localizer(Layout.at(args.db), QueryOptions(k=DEPTH)) as loc:
        by_name = {image.name: image for image in loc.images.values()}
        ids = np.array([by_name[n].id for n in names])
        xy = np.array([(by_name[n].x, by_name[n].y) for n in names])
        for row in test:
            image = by_name[names[row]]
            point = (image.x, image.y)
            same = (xy == np.array(point)).all(1)
            near_ids = {int(i) for i in ids[(np.hypot(*(xy - np.array(point)).T) <= args.within) & ~same]}
            if not near_ids:
                continue
            features, embedding = loc.stored(image)
            found = loc.rankings(features, exclude=point, embedding=embedding, depth=DEPTH)
            vlad = [c.image_id for c in found.by_vector]
            rankings = {"vlad": vlad, "votes": found.by_votes,
                        "database's image model (trained on every photo)": found.by_image,
                        "fused, database's image model (default)": found.fused(DEPTH)}
            for tag, vectors in sets.items():
                sims = vectors @ vectors[row]
                sims[same] = -np.inf
                image_rank = [int(i) for i in ids[np.argsort(-sims)[:DEPTH]]]
                rankings[f"image, {tag}"] = image_rank
                rankings[f"fused, image {tag}"] = interleave([vlad, found.by_votes, image_rank], DEPTH)
            for tag, ranking in rankings.items():
                hits.setdefault(tag, []).append([i in near_ids for i in ranking])
    counted = len(next(iter(hits.values())))
    result = print_recall(hits, f"{counted} held-out photos with a photo of another point within {args.within:g} units")
    if args.json:
        args.json.write_text(json.dumps({"held_out": counted, "recall": result}, indent=1))


def print_recall(hits: dict[str, list[list[bool]]], heading: str) -> dict[str, dict[str, float]]:
    """Recall at KS of each ranking (one list of hit flags per held-out photo), printed under
    ``heading`` as a markdown table and returned as fractions; bench/expansion.py prints the same way."""
    result = {tag: {f"R@{k}": round(float(np.mean([any(h[:k]) for h in flags])), 4) for k in KS}
              for tag, flags in hits.items()}
    print(f"{heading}\n| ranking | {' | '.join(f'R@{k}' for k in KS)} |\n|---|{'---|' * len(KS)}")
    for tag, r in result.items():
        print(f"| {tag} | " + " | ".join(f"{100 * v:.1f}" for v in r.values()) + " |")
    return result


if __name__ == "__main__":
    main()
