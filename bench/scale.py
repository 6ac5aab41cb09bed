"""How the stores' costs grow: synthetic catalogues of N images, built and opened by glueloc itself.

No photos are needed: each "photo" is a tiny distinct PNG, and an extractor of XFeat's
shapes stands in for XFeat — 1024 keypoints, 64-d descriptors drawn around a fixed
vocabulary of 4096 visual words (so the vote index's cells fill unevenly, as real ones
do) — while everything else is the real index run (``indexer.pipeline``): HDF5 shards,
the VLAD codebook and its 512-d vectors, FAISS, the vote codec and segments, SQLite.
Without an image embedder (the learned ranking's costs are the global vectors' again).

For each N it reports, into one table:

* **build**: wall time of one ``glueloc index`` run from nothing, and every byte the run
  passed to ``write()`` (``/proc/self/io`` wchar: shards, segments, FAISS, SQLite,
  rewrites included), against the final store size;
* **store**: bytes on disk per image, by kind of file;
* **open**: in a fresh process, wall time and resident memory to open a query snapshot
  (catalogue, FAISS, mapped vote segments: ``query.snapshot`` + ``query.votes``);
* **retrieval**: median ms per query of the global-vector search and of the descriptor
  votes (20 queries: stored descriptors of random images, perturbed);
* **add 1 %**: an incremental run of N/100 new images (wall, bytes written);
* **audit**: a plain ``glueloc audit`` in a fresh process (wall, peak memory).

    python bench/scale.py --sizes 10000 100000 [--out bench/out/scale] [--keep]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

REPO = Path(__file__).resolve().parent.parent

from glueloc.core.labels import read_labels  # noqa: E402
from glueloc.indexer import pipeline  # noqa: E402
from glueloc.indexer.pipeline import IndexOptions, IndexRunner  # noqa: E402
from glueloc.storage.layout import Layout  # noqa: E402
from glueloc.vision.extractors.base import Features  # noqa: E402
from glueloc.vision.pipelines import get_pipeline  # noqa: E402

WORDS = 4096
KEYPOINTS = 1024
DIM = 64
QUERIES = 20
#: Side of each stand-in photo: the smallest glueloc accepts (vision.images), ~80 bytes as PNG.
SIDE = 8


class ShapedExtractor:
    """XFeat's output shapes from a seed hidden in a tiny image's pixels (not a feature model)."""

    name = "xfeat"
    version = "bench-shaped"
    descriptor_dim = DIM

    def __init__(self) -> None:
        self.conf: dict[str, Any] = {"max_keypoints": KEYPOINTS}
        self.words = _unit(np.random.default_rng(12345).normal(size=(WORDS, DIM)).astype(np.float32))

    def extract(self, rgb: np.ndarray) -> Features:
        seed = int.from_bytes(rgb[0, :4].tobytes()[:8].ljust(8, b"\0"), "little")
        return shaped_features(self.words, seed, (int(rgb.shape[1]), int(rgb.shape[0])))


def shaped_features(words: np.ndarray, seed: int, size: tuple[int, int]) -> Features:
    """1024 keypoints around 64 of the vocabulary's words, as a photo of one place would hold."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(words), size=64, replace=False)
    centres = words[chosen[rng.integers(0, 64, size=KEYPOINTS)]]
    descriptors = _unit(centres + 0.35 * rng.normal(size=(KEYPOINTS, DIM)).astype(np.float32) / np.sqrt(DIM))
    keypoints = rng.uniform(0, 640, size=(KEYPOINTS, 2)).astype(np.float32)
    return Features(keypoints, rng.uniform(0, 1, KEYPOINTS).astype(np.float32), descriptors, size)


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def write_catalogue(folder: Path, start: int, count: int) -> Path:
    """``count`` tiny PNGs (their first pixels spell their number) and a labels CSV of them."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    labels = folder / f"labels-{start}-{count}.csv"
    with open(labels, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["name", "x", "y"])
        for n in range(start, start + count):
            name = f"{n // 1000:04d}/img{n:07d}.png"
            path = images / name
            if not path.exists():
                path.parent.mkdir(exist_ok=True)
                pixels = np.zeros((SIDE, SIDE, 3), np.uint8)
                pixels[0, :4].reshape(-1)[:8] = np.frombuffer(int(n + 1).to_bytes(8, "little"), np.uint8)
                PILImage.fromarray(pixels).save(path)
            out.writerow([name, f"{(n * 7919) % 10007 / 10.0:.1f}", f"{(n * 104729) % 10009 / 10.0:.1f}"])
    return labels


def written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no wchar")


def store_bytes(db: Path) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for path in db.rglob("*"):
        if path.is_file():
            kind = path.name.split("-")[0] if "-" in path.name else path.suffix.lstrip(".") or path.name
            sizes[kind] = sizes.get(kind, 0) + path.stat().st_size
    return sizes


def index_run(db: Path, folder: Path, labels: Path) -> tuple[float, int, int]:
    """One real index run with the shaped extractor: (seconds, bytes written, images added)."""
    shaped = ShapedExtractor()
    # The bench's stand-in for XFeat, and XFeat's pipeline for it (the run checks the matcher).
    pipeline.load_extractor = lambda name, conf=None: shaped  # type: ignore[assignment]
    pipeline.get_pipeline = lambda name: get_pipeline("xfeat")  # type: ignore[assignment]
    rows = read_labels(labels, folder / "images")
    before, clock = written_bytes(), time.perf_counter()
    summary = IndexRunner(Layout.at(db), IndexOptions(embedder="none", batch_size=64)).run(
        rows, folder / "images", {"bench": "scale"})
    if summary.added != len(rows):
        raise SystemExit(f"the bench run added {summary.added} of {len(rows)} images: {summary.rejections[:1]}")
    return time.perf_counter() - clock, written_bytes() - before, summary.added


def child_open(db: Path) -> dict[str, float]:
    """In this (fresh) process: open a snapshot and its votes, then time retrieval."""
    clock = time.perf_counter()
    from glueloc.query.snapshot import open_snapshot
    from glueloc.query.votes import DescriptorVotes
    from glueloc.storage.database import open_database
    from glueloc.storage.features import FeatureReader
    imported = time.perf_counter() - clock
    clock = time.perf_counter()
    database = open_database(Layout.at(db))
    snapshot = open_snapshot(database, "fused")
    reader = FeatureReader(db / "features")
    parts = snapshot.votes
    votes = DescriptorVotes.open([] if parts is None else parts.segments, None if parts is None else parts.codec,
                                 snapshot.codebook.centroids, reader,
                                 ((i.id, i.shard, i.name) for i in snapshot.unvoted))
    opened = time.perf_counter() - clock
    rss = _rss_mb()
    rng = np.random.default_rng(7)
    chosen = rng.choice(sorted(snapshot.images), size=QUERIES, replace=False)
    vector_ms, votes_ms = [], []
    for image_id in chosen:
        image = snapshot.images[int(image_id)]
        query = _unit(reader.descriptors(image.shard, image.name)
                      + 0.02 * rng.normal(size=(KEYPOINTS, DIM)).astype(np.float32))
        vector = snapshot.codebook.aggregate(query)  # the query's own cost, like its extraction: not retrieval
        clock = time.perf_counter()
        snapshot.index.search(vector, 50)
        vector_ms.append(1000 * (time.perf_counter() - clock))
        clock = time.perf_counter()
        votes.count(query)
        votes_ms.append(1000 * (time.perf_counter() - clock))
    return {"import_s": imported, "open_s": opened, "rss_after_open_mb": rss, "segments": len(votes.parts),
            "vector_ms": float(np.median(vector_ms)), "votes_ms": float(np.median(votes_ms)),
            "peak_rss_mb": _peak_mb()}


def child_audit(db: Path) -> dict[str, float]:
    from glueloc.storage.audit import audit
    clock = time.perf_counter()
    report = audit(Layout.at(db))
    return {"audit_s": time.perf_counter() - clock, "audit_clean": float(report.clean), "audit_peak_mb": _peak_mb()}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: Linux carries the parent's high-water mark into a child.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def in_child(mode: str, db: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, __file__, "--child", mode, "--db", str(db)], capture_output=True, text=True,
                          check=True, env=dict(os.environ, PYTHONPATH=str(REPO.parent)))
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(size: int, out: Path) -> dict[str, Any]:
    folder = out / f"n{size}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    added_count = max(1, size // 100)
    base_labels = write_catalogue(folder, 0, size)
    more_labels = write_catalogue(folder, size, added_count)
    images_bytes = sum(p.stat().st_size for p in (folder / "images").rglob("*.png"))
    db = folder / "db"
    build_s, build_written, added = index_run(db, folder, base_labels)
    stored = store_bytes(db)
    row: dict[str, Any] = {"images": added, "build_s": build_s, "build_written": build_written,
                           "store_bytes": sum(stored.values()), "store_by_kind": stored, "photo_bytes": images_bytes}
    row |= in_child("open", db)
    row |= in_child("audit", db)
    add_s, add_written, add_added = index_run(db, folder, more_labels)
    row |= {"add_images": add_added, "add_s": add_s, "add_written": add_written}
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| images | build | written / store | KB per image | open | RSS after open | vector ms | votes ms "
             "| segments | add 1 % | add written | audit | audit peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['images']:,} | {r['build_s'] / 60:.1f} min | {r['build_written'] / r['store_bytes']:.2f} "
            f"| {r['store_bytes'] / r['images'] / 1000:.1f} | {r['open_s']:.2f} s | {r['rss_after_open_mb']:.0f} MB "
            f"| {r['vector_ms']:.1f} | {r['votes_ms']:.0f} | {r['segments']} | {r['add_s']:.0f} s "
            f"| {r['add_written'] / 2**20:.0f} MiB | {r['audit_s']:.1f} s | {r['audit_peak_mb']:.0f} MB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "scale")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic databases")
    parser.add_argument("--child", choices=("open", "audit"))
    parser.add_argument("--db", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps((child_open if args.child == "open" else child_audit)(args.db)))
        return
    rows = []
    for size in args.sizes:
        row = measure(size, args.out)
        rows.append(row)
        print(json.dumps(row), flush=True)
        (args.out / "scale.json").write_text(json.dumps(rows, indent=1))
        if not args.keep:
            shutil.rmtree(args.out / f"n{size}")
    print(table(rows))


if __name__ == "__main__":
    main()
