"""How optimistic the learned image ranking is about the database's own photos.

Every photo of the database is ranked against the others (its own capture point left
out, as calibration holds a point out) twice: by the retrieval model itself, which was
trained on it and its near pairs (**in-sample**: what calibration saw before the model
kept cross-fitted folds), and by the projection of its fold, fitted without it
(**cross-fitted**: what ``glueloc calibrate`` sees now, and what a new photo gets). Recall
within the model's near radius, a photo of another point, as ``indexer.learn.recall_at``.

Usage: python bench/crossfit.py --db DB   (a database whose model has folds: `glueloc train`)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from glueloc.indexer.learn import RECALL_AT, recall_at  # noqa: E402
from glueloc.storage.database import open_database  # noqa: E402
from glueloc.storage.embeddings import stored_embeddings  # noqa: E402
from glueloc.storage.globals import read_cross_fit, read_model  # noqa: E402
from glueloc.storage.layout import Layout  # noqa: E402
from glueloc.storage.models import RetrievalModel, StoreState  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    args = parser.parse_args()
    db = open_database(Layout.at(args.db))
    with db.session() as session:
        state = session.get(StoreState, 1)
        row = session.get(RetrievalModel, state.model_id) if state is not None and state.model_id else None
        if row is None:
            raise SystemExit(f"error: {args.db} has no retrieval model")
        filename, method, radius = row.filename, row.method, row.radius
    path = db.layout.vectors_dir / filename
    model, folds = read_model(path), read_cross_fit(path)
    if folds is None:
        raise SystemExit(f"error: retrieval model file {filename} has no cross-fitted folds: run `glueloc train`")
    _, xy, raw = stored_embeddings(db)
    fold = np.array([-1 if (f := folds.fold_of(x, y)) is None else f for x, y in xy])
    everyone = np.flatnonzero(fold >= 0)
    print(f"{len(raw)} photos, {len(folds.points)} points, model {method} {model.dim}-d, "
          f"{len(folds.projections)} folds, near radius {radius:.2f}\n")
    inside = recall_at(model.project(raw), xy, everyone, radius)
    weights = [np.sum(fold == f) / len(everyone) for f in range(len(folds.projections))]
    cross = {k: 0.0 for k in inside}
    for f, projection in enumerate(folds.projections):
        scored = recall_at(projection.project(raw), xy, np.flatnonzero(fold == f), radius)
        for k in cross:
            cross[k] += weights[f] * scored[k]
    plain = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    untrained = recall_at(plain, xy, everyone, radius)
    print("| image ranking of the database's own photos | " + " | ".join(f"R@{k}" for k in RECALL_AT)
          + " |\n|---|" + "---|" * len(RECALL_AT))
    for name, scores in (("in-sample (the model, trained on them)", inside),
                         ("cross-fitted (each fold's projection, fitted without it)", cross),
                         ("raw embedding (nothing learned)", untrained)):
        print(f"| {name} | " + " | ".join(f"{100 * scores[f'R@{k}']:.1f}" for k in RECALL_AT) + " |")


if __name__ == "__main__":
    main()
