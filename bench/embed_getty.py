"""Embed every Getty photo (database and development queries) with the image embedder, once.

The retrieval-model bench (bench/retrieval_models.py) compares projections of these raw
descriptors; embedding is the slow part (the CNN), so it is cached in one .npz here,
with the embedding time per image. This is exactly what ``glueloc index`` stores per image
(``glueloc.vision.embedders``), run outside a database so the experiments need no index.

Usage: python bench/embed_getty.py --data ../shared/benchdata/getty --out bench/out/embeddings.npz
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from glueloc.core.labels import read_labels  # noqa: E402
from glueloc.vision.embedders import load_embedder  # noqa: E402
from glueloc.vision.images import load_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/benchdata/getty")
    parser.add_argument("--out", type=Path, default=REPO / "bench/out/embeddings.npz")
    parser.add_argument("--embedder", default="effnet-lite0-gem")
    parser.add_argument("--max-side", type=int, default=None)
    args = parser.parse_args()
    embedder = load_embedder(args.embedder, {"max_side": args.max_side} if args.max_side else None)
    result: dict[str, np.ndarray] = {}
    for split in ("db", "query"):
        rows = read_labels(args.data / f"{split}.csv", args.data / split)
        vectors, seconds = [], []
        for i, row in enumerate(rows):
            image = load_image(row.path)
            clock = time.perf_counter()
            vectors.append(embedder.embed(image.rgb))
            seconds.append(time.perf_counter() - clock)
            if i % 500 == 0:
                print(f"{split} {i}/{len(rows)} {np.mean(seconds) * 1000:.1f} ms/image", flush=True)
        result[f"{split}_names"] = np.array([r.name for r in rows])
        result[f"{split}_xy"] = np.array([(r.x, r.y) for r in rows], dtype=np.float64)
        result[f"{split}_vectors"] = np.stack(vectors).astype(np.float32)
        result[f"{split}_ms"] = np.array(seconds) * 1000
        print(f"{split}: {len(rows)} images, embedding {np.median(seconds) * 1000:.1f} ms median, "
              f"{np.mean(seconds) * 1000:.1f} ms mean per image", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **result, conf=str(embedder.conf))
    print(f"wrote {args.out}; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
