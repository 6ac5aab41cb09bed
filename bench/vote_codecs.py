"""Which encoding of the descriptor-vote index keeps its recall? Measured on held-out Getty database places.

Reads every stored XFeat descriptor of a Getty database (index it first:
``bash bench/index_getty.sh xfeat``), holds out one photo of each of ``--places`` sampled
capture points (seed 0, as ``bench/image_retrieval.py`` samples them), lets its stored
descriptors vote (query.votes: ``neighbours`` nearest database descriptors each, one vote
per image, the held-out point's own photos excluded) and counts a hit at k when one of
the top-k images lies within 5 units. The dev queries are not used: this chooses a
constant.

Each variant is a FAISS inverted file: its coarse cells (the database's 256 VLAD centres,
or k-means cells trained on a 300k sample), its code (float16, 8-bit scalar quantizer, or
product quantizer with M bytes) and the cells probed per descriptor. Each is written to a
file and memory-mapped, as queries open it (the ``in-memory`` variant excepted: what
queries built before schema 0005). Prints one JSON row per variant: bytes per image,
build seconds, median ms per query and R@1/5/10/20.

    python bench/vote_codecs.py --db bench/out/getty [--places 150]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from glueloc.query.snapshot import open_snapshot  # noqa: E402
from glueloc.storage.database import open_database  # noqa: E402
from glueloc.storage.features import FeatureReader  # noqa: E402
from glueloc.storage.layout import Layout  # noqa: E402
from glueloc.vision.vlad import unit_rows  # noqa: E402

KS = (1, 5, 10, 20)
#: (name, cells (256: the VLAD centres), code, probes to try, memory-mapped)
VARIANTS = [
    ("in-memory", 256, "fp16", (4,), False),
    ("sq8-c4096", 4096, "sq8", (4, 8, 16), True),
    ("pq16-c4096", 4096, "pq16", (16,), True),
    ("pq32-c4096", 4096, "pq32", (16,), True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--places", type=int, default=150)
    parser.add_argument("--within", type=float, default=5.0)
    parser.add_argument("--variants", nargs="+", default=[v[0] for v in VARIANTS])
    args = parser.parse_args()
    faiss.omp_set_num_threads(2)
    layout = Layout.at(args.db)
    snapshot = open_snapshot(open_database(layout), "fused")
    images = sorted(snapshot.images.values(), key=lambda i: i.id)
    with FeatureReader(layout.features_dir) as reader:
        descriptors = [reader.descriptors(i.shard, i.name) for i in images]
    stacked = unit_rows(np.concatenate(descriptors).astype(np.float32))
    ids = np.concatenate([np.full(len(d), i.id, np.int64) for i, d in zip(images, descriptors)])
    by_id = {i.id: d for i, d in zip(images, descriptors)}
    rng = np.random.default_rng(0)
    queries = held_out(images, rng, args.places, args.within)
    sample = stacked[rng.choice(len(stacked), min(300_000, len(stacked)), replace=False)]
    centroids = unit_rows(snapshot.codebook.centroids.astype(np.float32))
    print(f"{len(stacked)} descriptors of {len(images)} images; {len(queries)} held-out queries", flush=True)
    for name, cells, code, probes, mapped in VARIANTS:
        if name not in args.variants:
            continue
        clock = time.perf_counter()
        index = build(centroids if cells == 256 else None, cells, code, sample)
        index.add_with_ids(stacked, ids)
        build_s = time.perf_counter() - clock
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "votes.index"
            faiss.write_index(index, str(path))
            size = path.stat().st_size
            del index
            index = faiss.read_index(str(path), (faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY) if mapped else 0)
            for nprobe in probes:
                recall, ms = evaluate(index, queries, by_id, nprobe)
                print(json.dumps({"variant": name, "cells": cells, "code": code, "probes": nprobe,
                                  "bytes_per_image": round(size / len(images)), "build_s": round(build_s, 1),
                                  "ms": round(ms, 1), **recall}), flush=True)


def held_out(images: list, rng: np.random.Generator, places: int, within: float) -> list[tuple[int, set[int], set[int]]]:  # type: ignore[type-arg]
    """(query image id, its capture point's image ids, near image ids of other points)."""
    by_point: dict[tuple[float, float], list[int]] = {}
    for image in images:
        by_point.setdefault((image.x, image.y), []).append(image.id)
    points = sorted(by_point)
    positions = {i.id: (i.x, i.y) for i in images}
    queries = []
    for n in rng.choice(len(points), size=min(2 * places, len(points)), replace=False):
        point = points[n]
        query = int(rng.choice(by_point[point]))
        near = {i for i, (x, y) in positions.items() if (x, y) != point and np.hypot(x - point[0], y - point[1]) <= within}
        if near:
            queries.append((query, set(by_point[point]), near))
    return queries[:places]


def build(centroids: np.ndarray | None, cells: int, code: str, sample: np.ndarray) -> faiss.IndexIVF:
    if centroids is None:
        kmeans = faiss.Kmeans(sample.shape[1], cells, niter=10, spherical=True, seed=1)
        kmeans.train(sample)
        centroids = unit_rows(kmeans.centroids)
    quantizer = faiss.IndexFlatIP(centroids.shape[1])
    quantizer.add(centroids)
    dim = centroids.shape[1]
    if code.startswith("pq"):
        index = faiss.IndexIVFPQ(quantizer, dim, len(centroids), int(code[2:]), 8, faiss.METRIC_INNER_PRODUCT)
    else:
        kind = {"fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}[code]
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, len(centroids), kind, faiss.METRIC_INNER_PRODUCT)
    index.train(sample)
    index.referenced = quantizer  # keep the quantizer alive as long as the index
    return index


def evaluate(index: faiss.IndexIVF, queries: list[tuple[int, set[int], set[int]]], by_id: dict[int, np.ndarray],
             nprobe: int) -> tuple[dict[str, float], float]:
    hits = {k: 0 for k in KS}
    seconds = []
    for query, same, near in queries:
        selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.array(sorted(same), np.int64)))
        params = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)
        clock = time.perf_counter()
        _, found = index.search(unit_rows(by_id[query].astype(np.float32)), 10, params=params)
        found = np.sort(found, axis=1)
        first = np.ones_like(found, dtype=bool)
        first[:, 1:] = found[:, 1:] != found[:, :-1]
        voted, counts = np.unique(found[first & (found >= 0)], return_counts=True)
        ranking = voted[np.lexsort((voted, -counts))]
        seconds.append(time.perf_counter() - clock)
        for k in KS:
            hits[k] += bool(near & set(ranking[:k].tolist()))
    return {f"R@{k}": round(100 * hits[k] / len(queries), 1) for k in KS}, 1000 * float(np.median(seconds))


if __name__ == "__main__":
    main()
