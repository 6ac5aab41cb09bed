"""Cache EfficientNet-Lite0's frozen trunk activations of every Getty photo, once (issue 15).

Fine-tuning the top of the network (bench/finetune_getty.py) needs the activations
entering the trainable blocks, not the pixels: they are computed here once, at the
embedder's 320 px, after block ``--after`` (10: the last stride-16 block), as float16.

Usage: python bench/finetune_cache.py --data ../shared/benchdata/getty --out bench/out/trunk.npz
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from glueloc.core.labels import read_labels  # noqa: E402
from glueloc.vision import weights as weight_files  # noqa: E402
from glueloc.vision.embedders.efficientnet_gem import network_input  # noqa: E402
from glueloc.vision.embedders.efficientnet_lite import EfficientNetLite0  # noqa: E402
from glueloc.vision.images import load_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/benchdata/getty")
    parser.add_argument("--out", type=Path, default=REPO / "bench/out/trunk.npz")
    parser.add_argument("--after", type=int, default=10)
    parser.add_argument("--max-side", type=int, default=320)
    args = parser.parse_args()
    network = EfficientNetLite0()
    weight_files.load_weights(network, weight_files.find_weights("efficientnet-lite0", None))
    network.eval()
    result: dict[str, np.ndarray] = {}
    for split in ("db", "query"):
        rows = read_labels(args.data / f"{split}.csv", args.data / split)
        maps, started = [], time.perf_counter()
        for i, row in enumerate(rows):
            rgb = network_input(load_image(row.path).rgb, args.max_side)
            x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div_(255.0)
            with torch.inference_mode():
                x = network.trunk(x, until=args.after)
            maps.append(x[0].numpy().astype(np.float16))
            if i % 500 == 0:
                print(f"{split} {i}/{len(rows)} {(time.perf_counter() - started) / (i + 1) * 1000:.1f} ms/image",
                      flush=True)
        shapes = {m.shape for m in maps}
        assert len(shapes) == 1, f"{split}: photos of several sizes {shapes}"
        result[f"{split}_maps"] = np.stack(maps)
        result[f"{split}_names"] = np.array([r.name for r in rows])
        result[f"{split}_xy"] = np.array([(r.x, r.y) for r in rows], dtype=np.float64)
        print(f"{split}: {len(rows)} maps {maps[0].shape}", flush=True)
    np.savez(args.out, **result, after=args.after)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
