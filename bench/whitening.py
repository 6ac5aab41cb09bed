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

``--space image`` asks the same of the learned image ranking: the database's stored raw
image embeddings, projected as ``glueloc train`` fits them (``--method``, by default the
database's own choice; its verified positives and far negatives, indexer.train), in-sample
against refitted without the point.

Usage: python bench/whitening.py --db demo-data/db [--space image]   (after `make demo`; 12 s, image ~2 min)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from glueloc.core.places import near_radius  # noqa: E402
from glueloc.indexer.learn import fit_method, learn_conf, pairs_from_labels, restrict  # noqa: E402
from glueloc.indexer.train import verified_positives  # noqa: E402
from glueloc.query.localizer import Localizer  # noqa: E402
from glueloc.storage.database import open_database  # noqa: E402
from glueloc.storage.embeddings import stored_embeddings  # noqa: E402
from glueloc.storage.layout import Layout  # noqa: E402

KS = (1, 3, 5, 10)

#: (rows fitted on, components) -> every photo's projected, L2-normalised vector
Fit = Callable[[np.ndarray, int], np.ndarray]


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


def vlad_space(db: Path) -> tuple[np.ndarray, np.ndarray, Fit]:
    """Raw VLAD vectors of every photo (the database's codebook centres) and their PCA-whitening."""
    with Localizer(Layout.at(db)) as loc:
        images = sorted(loc.images.values(), key=lambda i: i.id)
        raws = np.stack([loc.codebook.raw(loc.stored(i)[0].descriptors) for i in images]).astype(np.float32)
    return raws, np.array([(i.x, i.y) for i in images]), lambda rows, d: whitened(raws, rows, d)


def image_space(db: Path, method: str | None) -> tuple[np.ndarray, np.ndarray, Fit]:
    """Raw image embeddings of every photo and the retrieval model's projection, fitted as indexer.train fits it."""
    database = open_database(Layout.at(db))
    _, xy, raw = stored_embeddings(database)
    conf = learn_conf()
    radius = near_radius(xy)
    if method is None:
        with Localizer(Layout.at(db)) as loc:
            method = loc.model.projection.method if loc.model is not None else "pca"
    positives = verified_positives(database, xy, radius, int(conf["best_positives"]), int(conf["verify_keypoints"]))
    _, far = pairs_from_labels(xy, radius, float(conf["far_factor"]))
    print(f"image model: {method}")

    def fit(rows: np.ndarray, d: int) -> np.ndarray:
        fitted = fit_method(method, raw[rows], restrict(positives, rows), far[np.ix_(rows, rows)],
                            {**conf, "dim": min(d, len(rows) - 1, raw.shape[1])})
        return fitted.project(raw)

    return raw.astype(np.float32), xy, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--space", choices=("vlad", "image"), default="vlad")
    parser.add_argument("--method", choices=("pca", "lw", "triplet"), default=None,
                        help="with --space image: the projection to fit (default: the database's)")
    args = parser.parse_args()
    raws, xy, fit = vlad_space(args.db) if args.space == "vlad" else image_space(args.db, args.method)
    n = len(raws)
    radius = near_radius(xy)
    print(f"{n} photos, {len({tuple(p) for p in xy})} points, raw {args.space} {raws.shape[1]}-d, "
          f"near radius {radius:.2f}\n")
    print("| components | in-sample " + " | ".join(f"R@{k}" for k in KS) + " | spread | refitted "
          + " | ".join(f"R@{k}" for k in KS) + " | spread |\n|---|" + "---|" * (2 * len(KS) + 2))
    everyone = np.arange(n)
    for d in sorted({n - 1, 2 * n // 3, n // 2, n // 3, n // 4}, reverse=True):
        if d < 8:
            continue
        fitted = fit(everyone, d)
        inside, inside_spread = recall(xy, radius, lambda same: fitted)
        fresh, fresh_spread = recall(xy, radius, lambda same: fit(np.flatnonzero(~same), d))
        print(f"| {d} | " + " | ".join(f"{inside[k]:.1f}" for k in KS) + f" | {inside_spread:.1e} | "
              + " | ".join(f"{fresh[k]:.1f}" for k in KS) + f" | {fresh_spread:.1e} |", flush=True)
    plain = raws / np.linalg.norm(raws, axis=1, keepdims=True)
    raw_recall, raw_spread = recall(xy, radius, lambda same: plain)
    print(f"| none (raw {args.space}) | " + " | ".join(f"{raw_recall[k]:.1f}" for k in KS)
          + f" | {raw_spread:.1e} | | | | | |")


if __name__ == "__main__":
    main()
