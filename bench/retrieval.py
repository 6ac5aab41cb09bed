"""Does the shortlist hold a true neighbour? Recall@k of global descriptors on Getty.

Uses the local features already stored in a glueloc database of the Getty db images
(index it first: ``bash bench/index_getty.sh EXTRACTOR``), extracts the 150 development
queries with the same extractor, and for each variant trains the codebook on the
database exactly as ``glueloc index`` does, aggregates every image, and searches FAISS.

A query counts as found at k if one of its top-k db images lies within 5 units of its
true position (also reported within 2 units), over the queries that have any db image
that close at all. Because the museum has floors sharing (x, y), some "near" db images
show another room: with ``--verify-near`` each query is matched (the database's matcher
+ RANSAC) against all its near db images, and the report counts the near images that
do not verify and the queries none of whose near images verifies.

The ``database-votes`` and ``database-fused`` rows rank by the database's descriptor
votes (query.votes) alone and in turns with its VLAD ranking (the default shortlist).

    python bench/retrieval.py --db bench/out/getty-sift [--variants ...] [--verify-near]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from glueloc.vision.extractors import Features, load_extractor  # noqa: E402
from glueloc.vision.images import load_image  # noqa: E402
from glueloc.vision.matchers import load_matcher  # noqa: E402
from glueloc.vision.vlad import VLADCodebook, train_codebook, vlad_conf  # noqa: E402
from glueloc.query.retrieval import COLLAPSE_OVERFETCH, collapse_ranked  # noqa: E402
from glueloc.query.verify import verify_pair  # noqa: E402
from glueloc.storage.database import open_database  # noqa: E402
from glueloc.storage.features import FeatureReader  # noqa: E402
from glueloc.storage.layout import Layout  # noqa: E402
from glueloc.storage.models import FeatureShard, Image  # noqa: E402
from glueloc.storage.vectors import VectorIndex  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "benchdata" / "getty"
KS = (1, 5, 10, 20, 50)
# Every option spelled out, so a row means the same thing whatever indexer.vlad's defaults become.
HARD_2000 = {"assignment": "hard", "train_images": 2000}
SOFT_2000 = {"assignment": "soft", "train_images": 2000}
SOFT_ALL = {"assignment": "soft", "train_images": 5000}
VARIANTS = {
    "database": None,  # the codebook and FAISS index the database itself holds (glueloc index/reindex)
    "database-votes": None,  # the database's descriptor votes (query.votes), as queries draw them
    "database-fused": None,  # its VLAD ranking and descriptor votes in turns: the default shortlist
    "random": None,
    "mean-descriptor": None,
    "vlad-k16-pca256": {"num_clusters": 16, "pca_dim": 256, **HARD_2000},
    "vlad-k64-pca256": {"num_clusters": 64, "pca_dim": 256, **HARD_2000},
    "vlad-k256-pca256": {"num_clusters": 256, "pca_dim": 256, **HARD_2000},
    "vlad-k64-raw": {"num_clusters": 64, "pca_dim": 0, **HARD_2000},
    "vlad-k64-pca256-nowhiten": {"num_clusters": 64, "pca_dim": 256, "whiten": False, **HARD_2000},
    "vlad-k64-pca256-soft": {"num_clusters": 64, "pca_dim": 256, **SOFT_2000},
    "vlad-k256-pca256-soft": {"num_clusters": 256, "pca_dim": 256, **SOFT_2000},
    "vlad-k256-pca512-soft": {"num_clusters": 256, "pca_dim": 512, **SOFT_2000},
    "vlad-k512-pca512-soft": {"num_clusters": 512, "pca_dim": 512, **SOFT_2000},
    "vlad-k256-pca512-soft-all": {"num_clusters": 256, "pca_dim": 512, **SOFT_ALL},
    "vlad-k16-pca256-soft-all": {"num_clusters": 16, "pca_dim": 256, **SOFT_ALL},
    "vlad-k64-pca256-soft-all": {"num_clusters": 64, "pca_dim": 256, **SOFT_ALL},
    "vlad-k256-pca256-soft-all": {"num_clusters": 256, "pca_dim": 256, **SOFT_ALL},
    "vlad-k64-raw-soft-all": {"num_clusters": 64, "pca_dim": 0, **SOFT_ALL},
}


@dataclass
class Row:
    variant: str
    recall5: dict[int, float]
    recall2: dict[int, float]
    dim: int
    ms_search: float
    index_mb: float
    train_s: float
    collapsed5: dict[int, float] | None = None  # recall when one image per position is kept


def read_labels(path: Path) -> dict[str, tuple[float, float]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return {r["name"]: (float(r["x"]), float(r["y"])) for r in csv.DictReader(handle)}


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def mean_vector(descriptors: np.ndarray) -> np.ndarray:
    """The interim global vector of the foundation: L2-normalised mean of unit descriptors."""
    if len(descriptors) == 0:
        return np.zeros(descriptors.shape[1], np.float32)
    return unit(unit(descriptors).mean(0)).astype(np.float32)


def recall(ranked: np.ndarray, near: list[set[int]], ks: tuple[int, ...]) -> dict[int, float]:
    have = [i for i, s in enumerate(near) if s]
    return {k: float(np.mean([bool(set(ranked[i, :k].tolist()) & near[i]) for i in have])) for k in ks}


def evaluate(name: str, db_vectors: np.ndarray, q_vectors: np.ndarray, near5: list[set[int]], near2: list[set[int]],
             train_s: float, positions: dict[int, tuple[float, float]]) -> Row:
    index = VectorIndex.build(np.arange(len(db_vectors)), db_vectors, db_vectors.shape[1])
    clock = time.perf_counter()
    _, ranked = index.search(q_vectors, max(KS))
    ms = 1000 * (time.perf_counter() - clock) / len(q_vectors)
    mb = db_vectors.shape[0] * db_vectors.shape[1] * 4 / 2**20
    _, deep = index.search(q_vectors, max(KS) * COLLAPSE_OVERFETCH)
    collapsed = np.full((len(q_vectors), max(KS)), -1)
    for i, row in enumerate(deep):
        kept = collapse_ranked(row, positions, max(KS))
        collapsed[i, : len(kept)] = kept
    return Row(name, recall(ranked, near5, KS), recall(ranked, near2, KS), db_vectors.shape[1], ms, mb, train_s,
               recall(collapsed, near5, KS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True, help="a glueloc database of the Getty db images")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--verify-near", action="store_true", help="match each query with its near db images")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args()

    database = open_database(Layout.at(args.db))
    with database.session() as session:
        state = database.state(session)
        rows = session.execute(select_images()).all()
    names = [r[0] for r in rows]
    db_xy = np.array([(r[1], r[2]) for r in rows])
    extractor = load_extractor(state.extractor, state.extractor_config)
    print(f"database {args.db}: {len(rows)} images, extractor {state.extractor}", flush=True)
    clock = time.perf_counter()
    with FeatureReader(database.layout.features_dir) as reader:
        db_desc = [reader.descriptors(r[3], r[0]) for r in rows]
    print(f"read db descriptors in {time.perf_counter() - clock:.0f} s", flush=True)

    queries = read_labels(args.data / "glueloc.query.csv")
    q_names = sorted(queries)
    clock = time.perf_counter()
    q_feats: list[Features] = [extractor.extract(load_image(args.data / "query" / n).rgb) for n in q_names]
    print(f"extracted {len(q_names)} queries in {time.perf_counter() - clock:.0f} s", flush=True)
    q_xy = np.array([queries[n] for n in q_names])
    dist = np.hypot(*(q_xy[:, None, :] - db_xy[None, :, :]).transpose(2, 0, 1))
    near5 = [set(np.flatnonzero(d <= 5.0).tolist()) for d in dist]
    near2 = [set(np.flatnonzero(d <= 2.0).tolist()) for d in dist]
    positions = {i: (float(x), float(y)) for i, (x, y) in enumerate(db_xy)}
    print(f"queries with a db image within 5 units: {sum(map(bool, near5))}; within 2: {sum(map(bool, near2))}", flush=True)

    results: list[Row] = []
    for variant in args.variants:
        clock = time.perf_counter()
        if variant == "database":
            results.append(evaluate_database(database, state, rows, q_feats, near5, near2, positions))
        elif variant in ("database-votes", "database-fused"):
            results.append(evaluate_votes(args.db, variant, q_feats, near5, near2))
        elif variant == "random":
            rng = np.random.default_rng(0)
            ranked = np.stack([rng.permutation(len(names))[: max(KS)] for _ in q_names])
            results.append(Row(variant, recall(ranked, near5, KS), recall(ranked, near2, KS), 0, 0.0, 0.0, 0.0))
        elif variant == "mean-descriptor":
            db_v = np.stack([mean_vector(d) for d in db_desc])
            q_v = np.stack([mean_vector(f.descriptors) for f in q_feats])
            results.append(evaluate(variant, db_v, q_v, near5, near2, 0.0, positions))
        else:
            conf = vlad_conf(VARIANTS[variant])
            rng = np.random.default_rng(int(conf["seed"]))
            chosen = rng.choice(len(db_desc), size=min(int(conf["train_images"]), len(db_desc)), replace=False)
            codebook, _, _ = train_codebook([db_desc[i] for i in sorted(chosen)], conf)
            train_s = time.perf_counter() - clock
            db_v = aggregate_all(codebook, db_desc)
            q_v = aggregate_all(codebook, [f.descriptors for f in q_feats])
            results.append(evaluate(variant, db_v, q_v, near5, near2, train_s, positions))
        print(f"{variant}: R@10(5u) {results[-1].recall5[10]:.3f} in {time.perf_counter() - clock:.0f} s", flush=True)

    print()
    print(f"Recall@k on {len(q_names)} Getty dev queries, extractor {state.extractor} "
          f"({sum(map(bool, near5))} queries have a db image within 5 units, {sum(map(bool, near2))} within 2)")
    print("| variant | dim | R@1 | R@5 | R@10 | R@20 | R@50 | R@10 (2 u) | R@50 (2 u) | R@10 collapsed | R@20 collapsed "
          "| ms/query search | index MB | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        c10 = f"{r.collapsed5[10]:.1%}" if r.collapsed5 else "—"
        c20 = f"{r.collapsed5[20]:.1%}" if r.collapsed5 else "—"
        print(f"| {r.variant} | {r.dim} | " + " | ".join(f"{r.recall5[k]:.1%}" for k in KS)
              + f" | {r.recall2[10]:.1%} | {r.recall2[50]:.1%} | {c10} | {c20} | {r.ms_search:.2f} | {r.index_mb:.1f} "
              f"| {r.train_s:.0f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"retrieval-{state.extractor}.json").write_text(json.dumps([r.__dict__ for r in results], indent=2))

    if args.verify_near:
        verify_near(state, q_names, q_feats, names, rows, database, near5)


def evaluate_database(database, state, rows, q_feats, near5, near2, positions) -> Row:  # type: ignore[no-untyped-def]
    """Search the database's own FAISS index with query vectors from its own codebook."""
    from glueloc.storage.globals import read_codebook
    from glueloc.storage.models import Codebook

    with database.session() as session:
        codebook_row = session.get(Codebook, state.codebook_id)
        ids = list(session.scalars(select_ids()))
    codebook = read_codebook(database.layout.vectors_dir / codebook_row.filename)
    index = VectorIndex.load(database.layout.vectors_dir / state.faiss_file)
    order = {image_id: i for i, image_id in enumerate(ids)}  # FAISS ids -> row positions
    q_v = aggregate_all(codebook, [f.descriptors for f in q_feats])
    clock = time.perf_counter()
    _, found = index.search(q_v, max(KS))
    ms = 1000 * (time.perf_counter() - clock) / len(q_v)
    ranked = np.vectorize(lambda i: order.get(int(i), -1))(found)
    name = f"database (codebook {codebook_row.id}: K={codebook.num_clusters}, {codebook.conf['assignment']}, dim {codebook.dim})"
    return Row(name, recall(ranked, near5, KS), recall(ranked, near2, KS), codebook.dim, ms,
               index.count * index.dim * 4 / 2**20, 0.0, None)


def evaluate_votes(db: Path, variant: str, q_feats: list[Features], near5: list[set[int]],
                   near2: list[set[int]]) -> Row:
    """Rank by the database's descriptor votes, alone or in turns with its VLAD ranking,
    through the Localizer's own shortlist (and the vote index it maps when it opens)."""
    from glueloc.query.localizer import Localizer, QueryOptions

    retrieval = variant.removeprefix("database-")
    with Localizer(Layout.at(db), QueryOptions(k=max(KS), estimator="best", retrieval=retrieval)) as loc:
        order = {image_id: i for i, image_id in enumerate(sorted(loc.images))}  # image ids -> row positions
        assert loc.votes is not None
        ranked = np.full((len(q_feats), max(KS)), -1)
        clock = time.perf_counter()
        for q, features in enumerate(q_feats):
            ids = [c.image_id for c in loc.shortlist(features)]  # what a query with k = 50 would verify
            ranked[q, :len(ids)] = [order[i] for i in ids]
        ms = 1000 * (time.perf_counter() - clock) / len(q_feats)
        # On disk, memory-mapped: the vote segments' files (float16 codes and int64 ids in memory
        # for a database from before schema 0005, whose index is built at open).
        mb = sum(p.stat().st_size for p in (db / "vectors").glob("votes-*.index")) / 2**20
        return Row(f"{variant} ({loc.votes.conf['neighbours']} neighbours, {loc.votes.conf['probes']} probes)",
                   recall(ranked, near5, KS), recall(ranked, near2, KS), 0, ms, mb, 0.0, None)


def select_ids():  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    return select(Image.id).join(FeatureShard).order_by(Image.id)


def select_images():  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    return select(Image.name, Image.x, Image.y, FeatureShard.filename).join(FeatureShard).order_by(Image.id)


def aggregate_all(codebook: VLADCodebook, sets: list[np.ndarray]) -> np.ndarray:
    raws = np.stack([codebook.raw(s) for s in sets])
    return codebook.project(raws)


def verify_near(state, q_names, q_feats, names, rows, database, near5, min_inliers: int = 15) -> None:  # type: ignore[no-untyped-def]
    matcher = load_matcher(state.matcher, state.matcher_config)
    unverified = 0
    total = 0
    lost_queries = 0
    clock = time.perf_counter()
    with FeatureReader(database.layout.features_dir) as reader:
        for qi, near in enumerate(near5):
            if not near:
                continue
            ok = 0
            for i in near:
                inliers = verify_pair(q_feats[qi], reader.features(rows[i][3], names[i]), matcher).inliers
                total += 1
                ok += inliers >= min_inliers
            unverified += len(near) - ok
            lost_queries += ok == 0
    print(f"near db images (<= 5 units) that do not verify (< {min_inliers} inliers, {state.matcher}): "
          f"{unverified} of {total}; queries none of whose near images verifies: {lost_queries} of "
          f"{sum(map(bool, near5))} ({time.perf_counter() - clock:.0f} s)")


if __name__ == "__main__":
    main()
