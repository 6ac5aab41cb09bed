"""How long must the shortlist be, and can a cheap check choose within it?

For every dev query this ranks *all* database images by VLAD similarity (the database's
own codebook and FAISS vectors) and reports, at several shortlist lengths K:

- recall: the share of queries with a db photo within 5 units among the top K;
- hindsight: the MAE if the best of the top K were always chosen (an upper bound for
  any verifier working on that shortlist);
- a cheap verifier: mutual nearest neighbours of the stored descriptors + RANSAC
  (the same USAC MAGSAC fundamental fit as ``query.verify``) on the top K, copying the
  position of the candidate with the most inliers — milliseconds per pair instead of a
  learned matcher's ~0.2 s, if it chose well it would buy a longer shortlist.

    python bench/shortlist.py DB ../shared/benchdata/getty/query.csv --images ../shared/benchdata/getty/query
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from glueloc.vision.extractors.base import Features  # noqa: E402
from glueloc.vision.images import load_image  # noqa: E402
from glueloc.core.labels import read_labels  # noqa: E402
from glueloc.query.localizer import Localizer  # noqa: E402
from glueloc.query.verify import ransac_inliers  # noqa: E402
from glueloc.storage.layout import Layout  # noqa: E402

LENGTHS = (1, 5, 10, 20, 50, 100)
CHEAP_LENGTHS = (10, 20, 50)
NEAR = 5.0  # units: a shortlisted photo this close counts as "the right place"


def mutual_nearest_inliers(query: Features, candidate: Features) -> int:
    """RANSAC inliers of the mutual nearest neighbours of L2-normalised descriptors."""
    if len(query) < 8 or len(candidate) < 8:
        return 0
    a = query.descriptors / (np.linalg.norm(query.descriptors, axis=1, keepdims=True) + 1e-9)
    b = candidate.descriptors / (np.linalg.norm(candidate.descriptors, axis=1, keepdims=True) + 1e-9)
    similarity = a @ b.T
    forward, backward = similarity.argmax(1), similarity.argmax(0)
    mutual = np.flatnonzero(backward[forward] == np.arange(len(forward)))
    points0 = query.keypoints[mutual].astype(np.float64)
    points1 = candidate.keypoints[forward[mutual]].astype(np.float64)
    return int(ransac_inliers(points0, points1).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path)
    parser.add_argument("queries", type=Path)
    parser.add_argument("--images", type=Path, required=True)
    args = parser.parse_args()
    rows = read_labels(args.queries, args.images)
    with Localizer(Layout.at(args.db)) as loc:
        ids = loc.index.ids()
        vectors = loc.index.vectors()
        positions = np.array([loc.positions[int(i)] for i in ids])
        errors_at = {k: [] for k in LENGTHS}
        recall_at = {k: 0 for k in LENGTHS}
        cheap_errors = {k: [] for k in CHEAP_LENGTHS}
        cheap_seconds = []
        for row in rows:
            features = loc.extractor.extract(load_image(row.path).rgb)
            order = np.argsort(-(vectors @ loc.codebook.aggregate(features.descriptors)))
            distance = np.abs(positions[order] - np.array([row.x, row.y])).sum(1)
            for k in LENGTHS:
                errors_at[k].append(distance[:k].min())
                recall_at[k] += int(distance[:k].min() <= NEAR)
            clock = time.perf_counter()
            top = max(CHEAP_LENGTHS)
            inliers = [mutual_nearest_inliers(features, loc.reader.features(loc.images[int(ids[i])].shard,
                                                                             loc.images[int(ids[i])].name))
                       for i in order[:top]]
            cheap_seconds.append(time.perf_counter() - clock)
            for k in CHEAP_LENGTHS:
                cheap_errors[k].append(distance[int(np.argmax(inliers[:k]))])
    n = len(rows)
    print(f"{n} queries, {len(ids)} db images")
    print("| top K | recall (a photo within 5 units) | hindsight MAE (best of top K) | hindsight > 20 units |")
    print("|---|---|---|---|")
    for k in LENGTHS:
        e = np.array(errors_at[k])
        print(f"| {k} | {recall_at[k] / n:.1%} | {e.mean():.2f} | {(e > 20).sum()} |")
    print()
    print(f"cheap verifier (mutual NN + RANSAC on stored descriptors), {np.median(cheap_seconds) / max(CHEAP_LENGTHS) * 1000:.0f} ms/pair (median):")
    print("| top K | MAE | median | > 20 units |")
    print("|---|---|---|---|")
    for k in CHEAP_LENGTHS:
        e = np.array(cheap_errors[k])
        print(f"| {k} | {e.mean():.2f} | {np.median(e):.2f} | {(e > 20).sum()} |")


if __name__ == "__main__":
    main()
