"""Fine-tune the top of EfficientNet-Lite0 on the Getty database's own labels (issue 15, candidate b).

Reads the frozen trunk activations of bench/finetune_cache.py and the verified positives
of the database (``indexer.train.verified_positives``, cached in --positives), trains
the blocks from ``--train-from`` on, the head and GeM's exponent with a triplet loss
(best verified positive, hardest far negatives from a memory bank refreshed every
epoch), then fits PCA-whitening as the database does, and prints recall within 5 units

1. on held-out database places (``indexer.learn``'s 15 % split: trained on the rest), and
2. on the 142 dev queries (same model: reported, never used to choose),

for the frozen network and after each epoch, with training seconds and peak RSS.

Usage: python bench/finetune_getty.py --db bench/out/getty [--train-from 15] [--lr 1e-5] [--epochs 10] [--save vectors.npz]
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from glueloc.core.places import near_radius  # noqa: E402
from glueloc.indexer.learn import held_out_places, pairs_from_labels, restrict  # noqa: E402
from glueloc.vision import projection as proj  # noqa: E402
from glueloc.vision import weights as weight_files  # noqa: E402
from glueloc.vision.embedders.efficientnet_lite import EfficientNetLite0  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from retrieval_models import euclidean_recall, query_recall  # noqa: E402


def positives_for(db_path: Path, names: np.ndarray, xy: np.ndarray, cache: Path) -> list[np.ndarray]:
    if cache.exists():
        data = np.load(cache, allow_pickle=True)
        return list(data["positives"])
    from glueloc.indexer.train import verified_positives
    from glueloc.storage.database import open_database
    from glueloc.storage.embeddings import image_rows
    from glueloc.storage.layout import Layout

    db = open_database(Layout.at(db_path))
    rows = image_rows(db)
    id_xy = np.array([(r[2], r[3]) for r in rows])
    started = time.perf_counter()
    chosen = verified_positives(db, id_xy, near_radius(id_xy), 3, 256)
    print(f"verified positives in {time.perf_counter() - started:.0f} s", flush=True)
    where = {r[1]: n for n, r in enumerate(rows)}
    id_names = [r[1] for r in rows]
    order = np.array([where[str(n)] for n in names])  # csv row -> id row
    back = np.empty(len(order), dtype=np.int64)
    back[order] = np.arange(len(order))  # id row -> csv row
    result = [back[chosen[order[i]]] for i in range(len(names))]
    assert all(id_names[order[i]] == names[i] for i in range(len(names)))
    np.savez(cache, positives=np.array(result, dtype=object))
    return result


class Top(torch.nn.Module):
    """Blocks ``start``.. of the network, its head and GeM with a trainable exponent."""

    def __init__(self, network: EfficientNetLite0, start: int, gem_p: float) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(network._blocks[start:])
        self.head, self.bn = network._conv_head, network._bn1
        self.p = torch.nn.Parameter(torch.tensor(gem_p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        x = F.relu6(self.bn(self.head(x)))
        pooled = x.clamp_min(1e-6).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)
        return F.normalize(pooled, dim=1)


def embed(top: Top, maps: np.ndarray, batch: int = 64) -> np.ndarray:
    out = []
    with torch.no_grad():
        for s in range(0, len(maps), batch):
            out.append(top(torch.from_numpy(maps[s:s + batch].astype(np.float32))).numpy())
    return np.concatenate(out)


def bank_epoch(forward: Callable[[np.ndarray], torch.Tensor], bank: torch.Tensor, chosen: np.ndarray,
               positives: list[np.ndarray], far: torch.Tensor, optimiser: torch.optim.Optimizer,
               args: argparse.Namespace) -> float:
    """One epoch of the triplet loss over the anchors ``chosen``; returns the mean loss.

    ``forward(rows)``: the model's vectors of those training photos, with gradients;
    ``bank``: every training photo's vector at the epoch's start, where the best
    positive and the hardest far negatives are mined and the negatives' vectors come
    from (a memory bank: the negatives cost no forward pass, which is what makes an
    epoch affordable on a CPU).
    """
    total = 0.0
    for batch in np.array_split(chosen, max(1, len(chosen) // args.batch)):
        with torch.no_grad():
            sims = bank[batch] @ bank.T
            best = [int(p[torch.argmax(sims[j, torch.from_numpy(p)])]) for j, p in
                    enumerate(positives[i] for i in batch)]
            negatives = sims.masked_fill(~far[batch], -2.0).topk(args.negatives, dim=1).indices
        emb = forward(np.concatenate([batch, best]))
        anchor, positive = emb[: len(batch)], emb[len(batch):]
        pos_sim = (anchor * positive).sum(1, keepdim=True)
        neg_sim = (anchor[:, None, :] * bank[negatives]).sum(-1)
        loss = torch.relu(neg_sim - pos_sim + args.margin).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        total += float(loss.detach()) * len(batch)
    return total / max(len(chosen), 1)


def evaluate(tag: str, db_raw: np.ndarray, q_raw: np.ndarray, xy: np.ndarray, q_xy: np.ndarray,
             train: np.ndarray, test: np.ndarray, report: dict) -> np.ndarray:
    """Print and record recall; return the database's whitened vectors (for --save)."""
    pca = proj.fit_pca(db_raw[train], {**proj.default_conf, "dim": 256})
    db_v, q_v = pca.project(db_raw), pca.project(q_raw)
    held = euclidean_recall(db_v, xy, test, 5.0)
    dev, counted = query_recall(db_v, xy, q_v, q_xy)
    report[tag] = {"held_out": held, "dev": dev}
    fmt = lambda r: " ".join(f"{k} {100 * v:.1f}" for k, v in r.items())  # noqa: E731
    print(f"{tag:>14}: held-out {fmt(held)} | dev ({counted}) {fmt(dev)}", flush=True)
    return db_v


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=REPO / "bench/out/getty")
    parser.add_argument("--trunk", type=Path, default=REPO / "bench/out/trunk.npz")
    parser.add_argument("--positives", type=Path, default=REPO / "bench/out/positives.npz")
    parser.add_argument("--train-from", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--anchors", type=int, default=1500, help="anchors per epoch")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--negatives", type=int, default=8)
    parser.add_argument("--margin", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--save", type=Path, default=None,
                        help="npz of the database's vectors, frozen and after the last epoch (bench/fused_held_out.py)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = np.load(args.trunk)
    names, xy, q_xy = data["db_names"], data["db_xy"], data["query_xy"]
    db_maps, q_maps = data["db_maps"], data["query_maps"]
    after = int(data["after"])
    positives = positives_for(args.db, names, xy, args.positives)
    radius = near_radius(xy)
    _, far = pairs_from_labels(xy, radius, 5.0)
    test = held_out_places(xy, 0.15, 0)
    train = np.setdiff1d(np.arange(len(xy)), test)
    network = EfficientNetLite0()
    weight_files.load_weights(network, weight_files.find_weights("efficientnet-lite0", None))
    network.eval()
    started = time.perf_counter()
    with torch.no_grad():  # frozen blocks between the cache and the trainable part
        for blocks in range(after + 1, args.train_from):
            block = network._blocks[blocks]
            db_maps = np.concatenate([block(torch.from_numpy(db_maps[s:s + 128].astype(np.float32))).numpy()
                                      for s in range(0, len(db_maps), 128)]).astype(np.float16)
            q_maps = block(torch.from_numpy(q_maps.astype(np.float32))).numpy().astype(np.float16)
    print(f"trainable from block {args.train_from}: input {db_maps.shape[1:]} ({time.perf_counter() - started:.0f} s)")
    top = Top(copy.deepcopy(network), args.train_from, 3.0).eval()  # batch norm stays frozen
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    clock = time.perf_counter()
    db_raw = embed(top, db_maps)
    print(f"embedding the top: {(time.perf_counter() - clock) / len(db_maps) * 1000:.2f} ms/image")
    frozen = evaluate("frozen", db_raw, embed(top, q_maps), xy, q_xy, train, test, report)
    train_pos = restrict(positives, train)
    anchors = np.array([i for i, p in enumerate(train_pos) if len(p)])
    train_far = torch.from_numpy(far[np.ix_(train, train)])
    maps = torch.from_numpy(db_maps[train])
    optimiser = torch.optim.Adam([p for p in top.parameters() if p.requires_grad], lr=args.lr)
    train_seconds, trained = 0.0, frozen
    for epoch in range(args.epochs):
        clock = time.perf_counter()
        bank = torch.from_numpy(embed(top, db_maps[train]))
        chosen = rng.choice(anchors, size=min(args.anchors, len(anchors)), replace=False)
        loss = bank_epoch(lambda rows: top(maps[rows].float()), bank, chosen, train_pos, train_far, optimiser, args)
        train_seconds += time.perf_counter() - clock
        print(f"epoch {epoch}: loss {loss:.4f}, p {float(top.p):.2f}, "
              f"{time.perf_counter() - clock:.0f} s", flush=True)
        trained = evaluate(f"epoch {epoch}", embed(top, db_maps), embed(top, q_maps), xy, q_xy, train, test, report)
    report["train_seconds"] = round(train_seconds, 1)
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(f"training {train_seconds:.0f} s, peak RSS {report['peak_rss_mb']} MB")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.save:
        np.savez(args.save, names=names, test=test, frozen=frozen, trained=trained)


if __name__ == "__main__":
    main()
