"""A trainable NetVLAD layer over the Getty database's *stored* XFeat descriptors (issue 15, candidate a).

No pixels: the layer reads the descriptors the index stored. It starts as the database's
own VLAD codebook (soft assignment over every centre with logits ``-|x - c|^2 / T``,
NetVLAD's initialisation ``w = 2c / T, b = -|c|^2 / T``), keeps VLAD's intra-norm,
signed square root and L2, and is trained with the same triplet loss as
bench/finetune_getty.py (best verified positive, hardest far negatives from a memory bank
refreshed every epoch). PCA-whitening to 512 is refitted on the training photos after
training (through their Gram matrix: 16 384 dimensions, a few thousand photos).
Recall within 5 units on ``indexer.learn``'s held-out places (trained on the rest) and
on the 142 dev queries (reported, never used to choose).

Usage: python bench/netvlad_getty.py --db bench/out/getty [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from glueloc.core.labels import read_labels  # noqa: E402
from glueloc.core.places import near_radius  # noqa: E402
from glueloc.indexer.learn import held_out_places, pairs_from_labels, restrict  # noqa: E402
from glueloc.storage.database import open_database  # noqa: E402
from glueloc.storage.embeddings import image_rows  # noqa: E402
from glueloc.storage.features import FeatureReader  # noqa: E402
from glueloc.storage.globals import read_codebook  # noqa: E402
from glueloc.storage.layout import Layout  # noqa: E402
from glueloc.storage.models import Codebook  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from finetune_getty import bank_epoch, positives_for  # noqa: E402
from retrieval_models import euclidean_recall, query_recall  # noqa: E402


class NetVLAD(torch.nn.Module):
    def __init__(self, centroids: np.ndarray, temperature: float) -> None:
        super().__init__()
        c = torch.from_numpy(centroids)
        self.centres = torch.nn.Parameter(c.clone())
        self.assign = torch.nn.Linear(c.shape[1], c.shape[0])
        with torch.no_grad():
            self.assign.weight.copy_(2.0 * c / temperature)
            self.assign.bias.copy_(-(c * c).sum(1) / temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) unit descriptors -> (B, K * D) vectors."""
        a = torch.softmax(self.assign(x), dim=-1)  # (B, N, K)
        residuals = a.transpose(1, 2) @ x - a.sum(1)[..., None] * self.centres  # (B, K, D)
        v = F.normalize(residuals, dim=-1).flatten(1)
        v = torch.sign(v) * torch.sqrt(v.abs() + 1e-8)
        return F.normalize(v, dim=1)


def embed(layer: NetVLAD, descriptors: np.ndarray, batch: int = 32) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([layer(torch.from_numpy(descriptors[s:s + batch].astype(np.float32))).numpy()
                               for s in range(0, len(descriptors), batch)])


def gram_pca(x: np.ndarray, dim: int, shrinkage: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """PCA-whitening (mean, (D, dim) matrix) of rows ``x`` through their Gram matrix."""
    mean = x.mean(0)
    xc = (x - mean).astype(np.float64)
    values, vectors = np.linalg.eigh(xc @ xc.T / (len(x) - 1))
    order = np.argsort(values)[::-1][:dim]
    values, vectors = np.maximum(values[order], 1e-12), vectors[:, order]
    directions = xc.T @ vectors / np.sqrt(values * (len(x) - 1))  # unit principal directions
    values = values + shrinkage * values.mean()
    return mean, (directions / np.sqrt(values)).astype(np.float32)


def project(x: np.ndarray, pca: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    out = (x - pca[0]) @ pca[1]
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def load_descriptors(db_path: Path, names: list[str], keypoints: int) -> np.ndarray:
    db = open_database(Layout.at(db_path))
    shard_of = {r[1]: r[4] for r in image_rows(db)}
    out = np.zeros((len(names), keypoints, 64), np.float16)
    with FeatureReader(db.layout.features_dir) as reader:
        for i, name in enumerate(names):
            f = reader.features(shard_of[name], name)
            strongest = np.argsort(-f.scores, kind="stable")[:keypoints]
            d = f.descriptors[strongest].astype(np.float32)
            out[i, : len(d)] = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=REPO / "bench/out/getty")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/benchdata/getty")
    parser.add_argument("--queries", type=Path, default=REPO / "bench/out/query-descriptors.npz",
                        help="the dev queries' XFeat descriptors (extracted once here)")
    parser.add_argument("--positives", type=Path, default=REPO / "bench/out/positives.npz")
    parser.add_argument("--keypoints", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--anchors", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--negatives", type=int, default=8)
    parser.add_argument("--margin", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    db_rows = read_labels(args.data / "db.csv", args.data / "db")
    q_rows = read_labels(args.data / "query.csv", args.data / "query")
    names = np.array([r.name for r in db_rows])
    xy = np.array([(r.x, r.y) for r in db_rows])
    q_xy = np.array([(r.x, r.y) for r in q_rows])
    db = open_database(Layout.at(args.db))
    with db.session() as session:
        state = db.state(session)
        codebook = read_codebook(db.layout.vectors_dir / session.get(Codebook, state.codebook_id).filename)
        extractor_conf = (state.extractor, state.extractor_version, state.extractor_config)
    started = time.perf_counter()
    descriptors = load_descriptors(args.db, list(names), args.keypoints)
    print(f"read {descriptors.shape} stored descriptors in {time.perf_counter() - started:.0f} s", flush=True)
    if args.queries.exists():
        q_desc = np.load(args.queries)["descriptors"]
    else:
        from glueloc.vision.extractors import load_recorded_extractor
        from glueloc.vision.images import load_image

        extractor = load_recorded_extractor(*extractor_conf)
        q_desc = np.zeros((len(q_rows), args.keypoints, 64), np.float16)
        for i, row in enumerate(q_rows):
            f = extractor.extract(load_image(row.path).rgb)
            strongest = np.argsort(-f.scores, kind="stable")[: args.keypoints]
            d = f.descriptors[strongest].astype(np.float32)
            q_desc[i, : len(d)] = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
        np.savez(args.queries, descriptors=q_desc)
    positives = positives_for(args.db, names, xy, args.positives)
    _, far = pairs_from_labels(xy, near_radius(xy), 5.0)
    test = held_out_places(xy, 0.15, 0)
    train = np.setdiff1d(np.arange(len(xy)), test)
    layer = NetVLAD(codebook.centroids, float(codebook.conf["soft_temperature"]))
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    fmt = lambda r: " ".join(f"{k} {100 * v:.1f}" for k, v in r.items())  # noqa: E731

    def evaluate(tag: str) -> None:
        db_raw, q_raw = embed(layer, descriptors), embed(layer, q_desc)
        pca = gram_pca(db_raw[train], 512)
        db_v, q_v = project(db_raw, pca), project(q_raw, pca)
        held = euclidean_recall(db_v, xy, test, 5.0)
        dev, counted = query_recall(db_v, xy, q_v, q_xy)
        report[tag] = {"held_out": held, "dev": dev}
        print(f"{tag:>14}: held-out {fmt(held)} | dev ({counted}) {fmt(dev)}", flush=True)

    # The database's VLAD itself (hard top-3 soft assignment, its own PCA) for reference.
    vlad = codebook.project(np.stack([codebook.raw(d[np.abs(d).sum(1) > 0].astype(np.float32))
                                      for d in descriptors]))
    q_vlad = codebook.project(np.stack([codebook.raw(d[np.abs(d).sum(1) > 0].astype(np.float32)) for d in q_desc]))
    print(f"{'database VLAD':>14}: held-out {fmt(euclidean_recall(vlad, xy, test, 5.0))} | "
          f"dev {fmt(query_recall(vlad, xy, q_vlad, q_xy)[0])}", flush=True)
    evaluate("NetVLAD init")
    train_pos = restrict(positives, train)
    anchors = np.array([i for i, p in enumerate(train_pos) if len(p)])
    train_far = torch.from_numpy(far[np.ix_(train, train)])
    train_desc = descriptors[train]
    optimiser = torch.optim.Adam(layer.parameters(), lr=args.lr)
    train_seconds = 0.0
    for epoch in range(args.epochs):
        clock = time.perf_counter()
        bank = torch.from_numpy(embed(layer, train_desc))
        chosen = rng.choice(anchors, size=min(args.anchors, len(anchors)), replace=False)
        loss = bank_epoch(lambda rows: layer(torch.from_numpy(train_desc[rows].astype(np.float32))), bank, chosen,
                          train_pos, train_far, optimiser, args)
        train_seconds += time.perf_counter() - clock
        print(f"epoch {epoch}: loss {loss:.4f}, {time.perf_counter() - clock:.0f} s", flush=True)
        evaluate(f"epoch {epoch}")
    report["train_seconds"] = round(train_seconds, 1)
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(f"training {train_seconds:.0f} s, peak RSS {report['peak_rss_mb']} MB")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
