"""How many components should a small database's VLAD PCA-whitening keep? Its own photos, held out (issue 15).

``glueloc calibrate`` learns from database photos held out one capture point at a time,
ranked against the rest by the database's VLAD vectors. Those vectors were whitened
with a PCA fitted on every database photo, the held-out one included. Onto N - 1
components (what a database of N <= 513 photos got before), whitening maps the N
training vectors onto a regular simplex, so a held-out photo is equally similar to
every other one and its ranking is noise, while a new photo's is not.

For each number of components d this prints recall of each capture point's photos
(own point excluded; a hit is a photo of another point within the near radius) when

* **in-sample**: the PCA was fitted on every photo (what calibration sees), and
* **refitted**: the PCA was refitted without the held-out point's photos (what a new
  photo sees: a stand-in for the queries; d is capped at the refit's N - 1).

A good d makes the two agree and keeps "refitted" high. Raw VLAD vectors come from the
database's own codebook (centres) and stored descriptors; nothing is written.

Usage: python bench/whitening.py --db demo-data/db   (after `make demo`; 12 s)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from glueloc.core.places import near_radius  # noqa: E402
from glueloc.query.localizer import Localizer  # noqa: E402
from glueloc.storage.layout import Layout  # noqa: E402

KS = (1, 3, 5, 10)


def whitened(raws: np.ndarray, rows: np.ndarray, d: int) -> np.ndarray:
    """Every raw vector projected by a PCA-whitening fitted on ``rows`` onto ``d`` components, L2-normalised."""
    d = min(d, len(rows) - 1)
    pca = faiss.PCAMatrix(raws.shape[1], d, -0.5)
    pca.train(np.ascontiguousarray(raws[rows]))
    matrix = faiss.vector_to_array(pca.A).reshape(d, -1)
    vectors = raws @ matrix.T + faiss.vector_to_array(pca.b)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def recall(xy: np.ndarray, radius: float, vectors_without) -> tuple[dict[int, float], float]:
    """Recall at KS over every photo of every point with a near photo elsewhere, and the median spread of its similarities."""
    hits: dict[int, list[bool]] = {k: [] for k in KS}
    spread = []
    for point in sorted({tuple(p) for p in xy}):
        same = (xy == np.array(point)).all(1)
        near = (np.hypot(*(xy - np.array(point)).T) <= radius) & ~same
        if not near.any():
            continue
        vectors = vectors_without(same)
        for row in np.flatnonzero(same):
            sims = vectors @ vectors[row]
            spread.append(float(np.std(sims[~same])))
            sims[same] = -np.inf
            order = np.argsort(-sims)
            for k in KS:
                hits[k].append(bool(near[order[:k]].any()))
    return {k: 100.0 * float(np.mean(h)) for k, h in hits.items()}, float(np.median(spread))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    args = parser.parse_args()
    with Localizer(Layout.at(args.db)) as loc:
        images = sorted(loc.images.values(), key=lambda i: i.id)
        raws = np.stack([loc.codebook.raw(loc.stored(i)[0].descriptors) for i in images]).astype(np.float32)
    xy = np.array([(i.x, i.y) for i in images])
    n = len(images)
    radius = near_radius(xy)
    print(f"{n} photos, {len({tuple(p) for p in xy})} points, raw VLAD {raws.shape[1]}-d, near radius {radius:.2f}\n")
    print("| components | in-sample " + " | ".join(f"R@{k}" for k in KS) + " | spread | refitted "
          + " | ".join(f"R@{k}" for k in KS) + " | spread |\n|---|" + "---|" * (2 * len(KS) + 2))
    everyone = np.arange(n)
    for d in sorted({n - 1, 2 * n // 3, n // 2, n // 3, n // 4}, reverse=True):
        if d < 8:
            continue
        fitted = whitened(raws, everyone, d)
        inside, inside_spread = recall(xy, radius, lambda same: fitted)
        fresh, fresh_spread = recall(xy, radius, lambda same: whitened(raws, np.flatnonzero(~same), d))
        print(f"| {d} | " + " | ".join(f"{inside[k]:.1f}" for k in KS) + f" | {inside_spread:.1e} | "
              + " | ".join(f"{fresh[k]:.1f}" for k in KS) + f" | {fresh_spread:.1e} |")
    plain = raws / np.linalg.norm(raws, axis=1, keepdims=True)
    raw_recall, raw_spread = recall(xy, radius, lambda same: plain)
    print("| none (raw VLAD) | " + " | ".join(f"{raw_recall[k]:.1f}" for k in KS) + f" | {raw_spread:.1e} | | | | | |")


if __name__ == "__main__":
    main()
