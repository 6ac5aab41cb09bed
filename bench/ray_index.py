"""Indexing Getty in one process against a 2-worker local Ray cluster (indexer.distributed).

Both runs index the same first N photos of ``db.csv`` into a new database with the
defaults (XFeat + the EfficientNet-Lite0 image embedder), the retrieval model left out
(``--no-train-model``: it is trained after the batches and is the same work either way).
For each it reports:

* **batches**: images/s from the start of the run to its last batch commit (decode, extract,
  embed, shard, commit), the part Ray spreads over workers;
* **total**: wall time of the whole run, codebook and vote codec training included;
* **of raw**: the batch rate as a share of the extractor's raw throughput on this machine:
  decode + XFeat + embedder alone, in this process, on ``--raw`` photos, measured with 2
  torch threads and with 1 (2 workers of 1 thread each could reach twice the 1-thread rate).

Then the Ray overhead: cluster start and model loading in the workers, and the round trip of
one no-op task that carries a batch's worth of features (the data each task sends back).

    python bench/ray_index.py [--images 1500] [--batch-size 32] [--out bench/out/ray-index]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent

from glueloc.core.labels import read_labels  # noqa: E402
from glueloc.indexer.distributed import RayOptions  # noqa: E402
from glueloc.indexer.pipeline import DEFAULT_EMBEDDER, DEFAULT_EXTRACTOR, IndexOptions, IndexRunner  # noqa: E402
from glueloc.storage.layout import Layout  # noqa: E402
from glueloc.vision.embedders import load_embedder  # noqa: E402
from glueloc.vision.extractors import load_extractor  # noqa: E402
from glueloc.vision.images import load_image  # noqa: E402


def subset_csv(data: Path, images: int, out: Path) -> Path:
    lines = (data / "db.csv").read_text().splitlines()
    path = out / f"db-{images}.csv"
    path.write_text("\n".join(lines[: images + 1]) + "\n")
    return path


def raw_rate(rows: list[Any], threads: int) -> float:
    """Images/s of decode + extract + embed alone, with ``threads`` torch threads."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        extractor, embedder = load_extractor(DEFAULT_EXTRACTOR), load_embedder(DEFAULT_EMBEDDER)
        decoded = load_image(rows[0].path)
        extractor.extract(decoded.rgb), embedder.embed(decoded.rgb)  # warm-up
        started = time.perf_counter()
        for row in rows:
            decoded = load_image(row.path)
            extractor.extract(decoded.rgb)
            embedder.embed(decoded.rgb)
        return len(rows) / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)


def index_once(csv_path: Path, images: Path, db: Path, batch_size: int, ray: RayOptions | None) -> dict[str, float]:
    shutil.rmtree(db, ignore_errors=True)
    rows = read_labels(csv_path, images)
    marks: list[float] = []
    runner = IndexRunner(Layout.at(db), IndexOptions(batch_size=batch_size, train_model=False, ray=ray),
                         progress=lambda n: marks.append(time.perf_counter()))
    started = time.perf_counter()
    summary = runner.run(rows, images, {"bench": "ray_index"})
    total = time.perf_counter() - started
    batches = marks[-1] - started
    return {"added": summary.added, "batch_seconds": round(batches, 1), "batch_images_per_s": round(summary.added / batches, 2),
            "total_seconds": round(total, 1)}


def ray_overhead(batch_size: int) -> dict[str, float]:
    """Cluster start, and the mean round trip of a no-op task returning one batch of XFeat-shaped features."""
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    start_seconds = time.perf_counter() - started

    @ray.remote(num_cpus=1)
    class Echo:
        def batch(self, n: int) -> list[dict[str, np.ndarray]]:
            rng = np.random.default_rng(n)
            return [{"keypoints": rng.random((1024, 2), dtype=np.float32),
                     "descriptors": rng.random((1024, 64), dtype=np.float32),
                     "scores": rng.random(1024, dtype=np.float32),
                     "embedding": rng.random(1280, dtype=np.float32)} for _ in range(batch_size)]

        def nothing(self) -> None:
            return None

    echo = Echo.remote()  # type: ignore[attr-defined]
    ray.get(echo.nothing.remote())
    empty, full = [], []
    for i in range(20):
        t = time.perf_counter()
        ray.get(echo.nothing.remote())
        empty.append(time.perf_counter() - t)
        t = time.perf_counter()
        ray.get(echo.batch.remote(i))
        full.append(time.perf_counter() - t)
    ray.shutdown()
    return {"cluster_start_s": round(start_seconds, 2), "noop_task_ms": round(1000 * statistics.median(empty), 2),
            "batch_payload_task_ms": round(1000 * statistics.median(full), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "benchdata" / "getty")
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--raw", type=int, default=64, help="photos the raw extractor rate is measured on")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "ray-index")
    parser.add_argument("--raw-only", action="store_true", help="measure the raw extractor rates alone")
    args = parser.parse_args()
    if not (args.data / "db.csv").is_file():
        sys.exit(f"error: no Getty data at {args.data}")
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = subset_csv(args.data, args.images, args.out)
    images = args.data / "db"
    rows = read_labels(csv_path, images)[: args.raw]
    result: dict[str, Any] = {"images": args.images, "batch_size": args.batch_size}
    result["raw_2_threads"] = round(raw_rate(rows, 2), 2)
    result["raw_1_thread"] = round(raw_rate(rows, 1), 2)
    capacity = max(result["raw_2_threads"], 2 * result["raw_1_thread"])
    if args.raw_only:
        print(f"raw extractor (decode + XFeat + embedder) on {len(rows)} photos: {result['raw_2_threads']} images/s "
              f"with 2 threads, {result['raw_1_thread']} with 1")
        return
    result["one_process"] = index_once(csv_path, images, args.out / "db-local", args.batch_size, None)
    result["ray_2_workers"] = index_once(csv_path, images, args.out / "db-ray", args.batch_size,
                                         RayOptions(address="local", workers=2))
    result["ray_overhead"] = ray_overhead(args.batch_size)
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"raw extractor (decode + XFeat + embedder): {result['raw_2_threads']} images/s with 2 threads, "
          f"{result['raw_1_thread']} with 1 (machine capacity {capacity:.2f})")
    print("| run | images | batches images/s | of raw capacity | batch phase s | whole run s |")
    print("|---|---|---|---|---|---|")
    for name in ("one_process", "ray_2_workers"):
        r = result[name]
        print(f"| {name.replace('_', ' ')} | {r['added']} | {r['batch_images_per_s']} | "
              f"{100 * r['batch_images_per_s'] / capacity:.0f} % | {r['batch_seconds']} | {r['total_seconds']} |")
    o = result["ray_overhead"]
    print(f"Ray: cluster start {o['cluster_start_s']} s; no-op task {o['noop_task_ms']} ms; a task returning one batch "
          f"of features ({args.batch_size} images) {o['batch_payload_task_ms']} ms")


if __name__ == "__main__":
    main()
