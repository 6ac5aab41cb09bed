"""What single-threaded codebook training costs (issue 14's determinism fix), on a real database.

Trains the VLAD codebook from the database's own descriptors twice — as glueloc does
(``vision.vlad.train_codebook``: one BLAS / OpenMP thread, identical on any machine) and
with every core (the same steps without ``single_threaded``) — and prints both wall
times and whether the two codebooks agree.

Usage: python bench/codebook_threads.py --db DB
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sqlalchemy import select

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from glueloc.storage.database import open_database  # noqa: E402
from glueloc.storage.features import FeatureReader  # noqa: E402
from glueloc.storage.layout import Layout  # noqa: E402
from glueloc.storage.models import FeatureShard, Image  # noqa: E402
from glueloc.vision import vlad  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    args = parser.parse_args()
    layout = Layout.at(args.db)
    db = open_database(layout)
    with db.session() as session:
        rows = session.execute(select(FeatureShard.filename, Image.name).join(Image, Image.shard_id == FeatureShard.id)
                               .order_by(Image.id)).all()
    db.close()
    reader = FeatureReader(layout.features_dir)
    sets = [reader.descriptors(shard, name) for shard, name in rows]
    reader.close()
    conf = vlad.vlad_conf()
    print(f"{len(sets)} images, {sum(len(s) for s in sets)} descriptors; K {conf['num_clusters']}, PCA {conf['pca_dim']}")
    clock = time.perf_counter()
    single, _, _ = vlad.train_codebook(sets, conf)
    single_s = time.perf_counter() - clock
    clock = time.perf_counter()
    threaded, _, _ = vlad._train_codebook(sets, conf)  # the same steps on every core
    threaded_s = time.perf_counter() - clock
    same = np.array_equal(single.centroids, threaded.centroids) and np.array_equal(single.pca_matrix, threaded.pca_matrix)
    print(f"single-threaded (glueloc): {single_s:.1f} s; all cores: {threaded_s:.1f} s; identical codebooks: {same}; "
          f"max |difference| of centres {np.abs(single.centroids - threaded.centroids).max():.2e}")


if __name__ == "__main__":
    main()
